"""Where the campaign catalog comes from, chosen by URL.

- a path or ``file://…``: a YAML or JSON file holding ``campaigns: [...]``
  (the embedded default);
- ``cassandra://host1,host2:9042/keyspace`` (or ``scylla://``): one row per
  campaign holding its JSON record (``storage.cassandra``).

Every source's records go through the same ``Catalog.from_records``, so a bad
record fails with the campaign and field named, wherever it came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import yaml

from shared_logic.campaigns import Catalog
from shared_logic.errors import InvalidCampaign
from storage.errors import CatalogUnavailable
from storage.registry import Backend, Registry


class CatalogSource(Protocol):
    def load(self) -> Catalog: ...
    def close(self) -> None: ...


class FileCatalog:
    """A YAML (``.yaml``/``.yml``) or JSON (``.json``) file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def from_url(cls, url: str, **context: Any) -> FileCatalog:
        if url.startswith("file://"):
            parsed = urlparse(url)
            url = parsed.path if parsed.netloc in ("", "localhost") else parsed.netloc + parsed.path
        return cls(Path(url))

    def load(self) -> Catalog:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CatalogUnavailable(f"catalog = {str(self.path)!r}: no such file") from None
        except OSError as exc:
            raise CatalogUnavailable(f"catalog = {str(self.path)!r}: {exc.strerror}") from None
        try:
            data = json.loads(text) if self.path.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            kind = "JSON" if self.path.suffix == ".json" else "YAML"
            raise InvalidCampaign("<file>", str(self.path), f"is not valid {kind}: {exc}") from None
        return Catalog.from_document(data, str(self.path))

    def close(self) -> None:
        pass


CATALOGS: Registry[CatalogSource] = Registry(
    "catalog",
    {
        "": Backend("storage.catalog:FileCatalog", "realtime"),
        "file": Backend("storage.catalog:FileCatalog", "realtime"),
        "cassandra": Backend("storage.cassandra:CassandraCatalog", "cassandra"),
        "scylla": Backend("storage.cassandra:CassandraCatalog", "cassandra"),
    },
)


def open_catalog(url: str) -> Catalog:
    """Load the catalog at ``url`` (a file path, ``file://…``, ``cassandra://hosts:port/keyspace``)."""
    source = CATALOGS.open(str(url))
    try:
        return source.load()
    finally:
        source.close()
