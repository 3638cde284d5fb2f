"""The campaign catalog in Cassandra or ScyllaDB, through cassandra-driver.

``cassandra://host1,host2:9042/keyspace``: each campaign is one row of
``<keyspace>.campaigns`` holding its JSON record.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlparse

from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.policies import RoundRobinPolicy

from shared_logic.campaigns import Catalog
from shared_logic.errors import InvalidSetting
from storage.errors import CatalogUnavailable


class CassandraCatalog:
    """Campaign records in a Cassandra/ScyllaDB table."""

    def __init__(
        self, hosts: list[str], keyspace: str, port: int = 9042, connect_timeout: float = 5.0
    ) -> None:
        if not keyspace.isidentifier():
            raise InvalidSetting("catalog keyspace", keyspace, "must be a plain identifier")
        self.keyspace = keyspace
        profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy())
        self.cluster = Cluster(
            hosts,
            port=port,
            connect_timeout=connect_timeout,
            protocol_version=4,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        )
        self._session: Any = None

    @classmethod
    def from_url(cls, url: str, **context: Any) -> CassandraCatalog:
        u = urlparse(url)
        netloc = u.netloc.rsplit(":", 1)[0] if u.port else u.netloc
        hosts = [h for h in netloc.split(",") if h]
        return cls(hosts, u.path.strip("/"), port=u.port or 9042, **context)

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
            # The driver logs every failed attempt with a traceback; the error below says it once.
            driver_log = logging.getLogger("cassandra.cluster")
            level = driver_log.level
            driver_log.setLevel(logging.CRITICAL)
            try:
                self._session = self.cluster.connect()
            except NoHostAvailable as exc:
                hosts = ", ".join(str(h) for h in (exc.errors or {}))
                raise CatalogUnavailable(f"no Cassandra/ScyllaDB host answers ({hosts or exc})") from None
            finally:
                driver_log.setLevel(level)
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
