"""`python -m turbovid ...` == the `turbovid` console script."""
from turbovid.cli import entry

entry()
