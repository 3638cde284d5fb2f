"""Where the campaign catalog lives: a file (embedded default) or Cassandra/ScyllaDB.

``open_catalog("var/demo/catalog.yaml")`` or
``open_catalog("cassandra://host1,host2:9042/keyspace")``. In Cassandra each
campaign is one row holding its JSON record, validated by the same
``Campaign.parse`` as the file, so a bad row fails with the campaign and field
named.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlparse

from shared_logic import Catalog, load_catalog
from shared_logic.errors import AttributionError


class CatalogUnavailable(AttributionError):
    """The catalog's store could not be reached."""


class CassandraCatalogStore:
    """Campaign records in a Cassandra/ScyllaDB table, through cassandra-driver."""

    def __init__(
        self, hosts: list[str], keyspace: str, port: int = 9042, connect_timeout: float = 5.0
    ) -> None:
        from cassandra.cluster import Cluster

        if not keyspace.isidentifier():
            raise CatalogUnavailable(f"keyspace = {keyspace!r}: must be a plain identifier")
        self.keyspace = keyspace
        self.cluster = Cluster(hosts, port=port, connect_timeout=connect_timeout, protocol_version=4)
        self._session: Any = None

    @property
    def create_table_cql(self) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {self.keyspace}.campaigns "
            "(campaign_id text PRIMARY KEY, record text)"
        )

    @property
    def select_cql(self) -> str:
        return f"SELECT campaign_id, record FROM {self.keyspace}.campaigns"  # noqa: S608 - validated identifier

    @property
    def insert_cql(self) -> str:
        return f"INSERT INTO {self.keyspace}.campaigns (campaign_id, record) VALUES (?, ?)"  # noqa: S608 - validated identifier

    def _connect(self) -> Any:
        if self._session is None:
            from cassandra.cluster import NoHostAvailable

            try:
                self._session = self.cluster.connect()
            except NoHostAvailable as exc:
                raise CatalogUnavailable(f"no Cassandra/ScyllaDB host answers: {exc}") from None
        return self._session

    def load(self) -> Catalog:
        session = self._connect()
        return Catalog.from_records(json.loads(row.record) for row in session.execute(self.select_cql))

    def save(self, catalog: Catalog) -> int:
        session = self._connect()
        session.execute(self.create_table_cql)
        insert = session.prepare(self.insert_cql)
        records = catalog.to_records()
        for rec in records:
            session.execute(insert, (rec["campaign_id"], json.dumps(rec, sort_keys=True)))
        return len(records)

    def close(self) -> None:
        self.cluster.shutdown()


def open_catalog(location: str) -> Catalog:
    """Load the catalog from a file path or a ``cassandra://hosts:port/keyspace`` URL."""
    if location.startswith(("cassandra://", "scylla://")):
        u = urlparse(location)
        hosts = [h for h in (u.netloc.rsplit(":", 1)[0] if ":" in u.netloc else u.netloc).split(",") if h]
        store = CassandraCatalogStore(hosts, u.path.strip("/"), port=u.port or 9042)
        try:
            return store.load()
        finally:
            store.close()
    return load_catalog(location)
