"""The CX console (``recon console``): see worker/console/app.py."""

from worker.console.app import check_database, create_app, serve
from worker.console.security import ConsoleConfigError

__all__ = ["ConsoleConfigError", "check_database", "create_app", "serve"]
