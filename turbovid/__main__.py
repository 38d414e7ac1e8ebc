"""`python -m turbovid ...` == the `turbovid` console script."""
import sys

from turbovid.cli import main

sys.exit(main())
