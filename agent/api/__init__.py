"""The local HTTP API: `create_app(core, db, settings)` and `ApiServer` to serve it.

The routes: docs/architecture.md#the-gateway (table in the README); `permissions.py` for who may call what.
"""

from agent.api.app import create_app
from agent.api.server import ApiServer
from agent.api.settings import ApiSettings

__all__ = ["ApiServer", "ApiSettings", "create_app"]
