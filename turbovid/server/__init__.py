"""The HTTP server: a job API and a web page over one loaded pipeline (`turbovid serve`)."""
from turbovid.server.app import create_app

__all__ = ["create_app"]
