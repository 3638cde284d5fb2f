"""Errors of the storage package (lake, catalog, URL registries)."""

from __future__ import annotations

from shared_logic.errors import InvalidInput, InvalidSetting, Unavailable


class UnknownBackend(InvalidSetting):
    """A URL whose scheme no backend of its kind serves."""


class LakeError(InvalidInput):
    """A lake URL or path the lake cannot serve."""

    kind = "lake"


class CatalogUnavailable(Unavailable):
    """The catalog's store (a file, Cassandra/ScyllaDB) could not be read."""
