"""Errors of the development tools."""

from __future__ import annotations

from shared_logic.errors import Unavailable


class ServerStartError(Unavailable):
    """A private server (redis-server, a broker) is missing or did not come up."""
