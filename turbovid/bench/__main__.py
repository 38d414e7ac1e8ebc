import sys

from turbovid.bench import main

sys.exit(main())
