"""The advertiser console: pages served by the API, behind the same keys and roles.

- ``session``: signing in with an API key (a form), the encrypted HttpOnly ``SameSite=Strict``
  session cookie, CSRF tokens, signing out.
- ``middleware``: ``ConsoleSessions`` presents a session as its key on the console's paths and
  the docs pages (the JSON routes keep ``X-API-Key``).
- ``data``: the figures, from the JSON API's own functions (``roas_rows``, ``budget_states``).
- ``routes``: the pages (overview, ROAS by day, budget today, reconciliation, invalid traffic),
  their CSV downloads, today's figures as JSON for the page's refresh, the static files.
- ``api``: ``/v1/reconciliation``, the reconciliation as JSON.
- ``charts``: SVG line charts drawn on the server.

Templates and static files ship in the package; nothing is loaded from another origin.
"""

from __future__ import annotations

from fastapi import APIRouter

from reporting.console import api, routes
from reporting.console.middleware import ConsoleSessions

ROUTERS: tuple[APIRouter, ...] = (api.router, routes.router)

__all__ = ["ROUTERS", "ConsoleSessions"]
