"""Fixtures shared by every suite: a private redis-server, settings, traffic."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest

# Spark's Python workers must run this interpreter, not the system python3.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
# The product's own Spark processes that the tests start (`attribution batch`, `reconcile`,
# `demo`, `live`, the Airflow tasks, the cluster test's driver and executors) each live a night or
# two: compiling their hot code with C2 costs more CPU than it wins back in so short a life
# (measured: `attribution batch run` over two nights, 94 cpu-s with C2, 65 with C1 only, 12%
# less wall). Their JIT stops at C1 (spark-submit adds SPARK_SUBMIT_OPTS to the driver's command;
# executors take the property). The JIT tier changes no result. The session JVM below lives for
# the whole run and keeps C2.
#
# They also plan as the session below does, for a few hundred users' nights: expressions
# interpreted, not compiled into Java; two shuffle partitions; no adaptive re-planning. Spark reads
# `spark.*` Java system properties into its conf, and the partitions are the product's own setting
# (measured: `attribution batch run` over two nights of 300 users, 48-50 cpu-s and 32-33 s with
# the deployed 8 partitions, AQE and code generation, 34 cpu-s and 23.4 s so). None of them changes
# a result. The Spark cluster test keeps the deployed settings (it drops the `-Dspark.sql.`
# properties and the partitions), so the product under them is still compared with this session,
# partition by partition. Tests that give a product process a world of its own (lake, catalog,
# Redis) strip our `ATTRIBUTION_*` settings but keep the partitions (`tests.helpers.product_env`);
# the tests of the defaults keep nothing.
SMALL_PLAN = (
    "-Dspark.sql.adaptive.enabled=false -Dspark.sql.codegen.wholeStage=false "
    "-Dspark.sql.codegen.factoryMode=NO_CODEGEN"
)
os.environ.setdefault(
    "SPARK_SUBMIT_OPTS",
    f"-XX:TieredStopAtLevel=1 -Dspark.executor.extraJavaOptions=-XX:TieredStopAtLevel=1 {SMALL_PLAN}",
)
os.environ.setdefault("ATTRIBUTION_SPARK_SHUFFLE_PARTITIONS", "2")
# Hypothesis's per-example deadline measures the machine, not the code: with test files run two
# at a time on 2 cores, any deadline fails at random. Example counts are each test's own.
hypothesis.settings.register_profile("suite", deadline=None)
hypothesis.settings.load_profile("suite")
# py4j logs from a destructor at interpreter exit, after pytest has closed its streams.
logging.getLogger("py4j").setLevel(logging.WARNING)
# Airflow reads its home at import: a private one per run, before anything imports airflow.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="attribution-airflow-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parents[1] / "airflow_dags")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[object]:
    """One redis-server on a free port for the whole run (never the machine's shared one)."""
    from devtools.servers import LocalRedis

    with LocalRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: object) -> str:
    """The test server's URL, emptied before each test."""
    from tests.helpers import flush

    url: str = redis_server.url  # type: ignore[attr-defined]
    flush(url)
    return url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[object]:
    """One 3-master Redis Cluster on free ports for the whole run (about 2 s to form)."""
    from devtools.servers import LocalRedisCluster

    with LocalRedisCluster() as cluster:
        yield cluster


@pytest.fixture(params=["server", "cluster"])
def speed_redis_url(request: pytest.FixtureRequest) -> str:
    """The speed layer's Redis, once a single server and once a 3-master Redis Cluster, emptied."""
    from tests.helpers import flush

    server = request.getfixturevalue("redis_server" if request.param == "server" else "redis_cluster")
    url: str = server.url
    flush(url)
    return url


@pytest.fixture(scope="session")
def broker() -> Iterator[object]:
    """One Kafka-protocol broker (Tansu, in memory) on a free port for the whole run; each test
    uses its own topic prefix and consumer group."""
    from devtools.servers import LocalBroker

    with LocalBroker() as server:
        yield server


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """One local Spark session for the whole run (local[2], UI off, UTC).

    Tuned for the tests' nights of a few hundred to a few thousand events, with the same results
    by Spark's contract; the product's own processes that the tests start (``attribution batch``,
    ``demo``, ``live``, the Airflow tasks) take the same plan from the environment set above, the
    cluster test's driver the deployed one.

    - Expressions are interpreted, not compiled (no whole-stage code generation): compiling each
      query's Java costs more than running it (measured: 8 nights of the checkpoint traffic in
      18.5-19.1 s against 22.3-23.4 s).
    - Two shuffle partitions (still more than one: a step that depended on one partition would
      show) and no adaptive re-planning, which costs more than it saves on so little data
      (measured: 6 nights of the checkpoint traffic, 93 cpu-s with 4 partitions and AQE, 67 with
      2 and none).
    - The JIT keeps C2 (``SPARK_SUBMIT_OPTS`` above stops the short-lived processes at C1): this
      JVM lives for the whole run (16 nights: 60 s with C2, 83 s with C1 only)."""
    from batch.spark import spark_session
    from shared_logic.settings import SparkSettings

    session = spark_session(
        SparkSettings(shuffle_partitions=2),
        "attribution-tests",
        **{
            "spark.sql.codegen.wholeStage": "false",
            "spark.sql.codegen.factoryMode": "NO_CODEGEN",
            "spark.sql.adaptive.enabled": "false",
            "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=4",
        },
    )
    yield session
    session.stop()


#: Test files handed out before xdist's own order (most tests first, so single-test files go
#: last): the Airflow scheduler test, one test of about 4-5 minutes in the suite, which xdist
#: handed out last, to run alone on one worker at the end while the other had nothing left.
FIRST_FILES = ("tests/integration/test_airflow_scheduler.py",)
#: Then, as soon as every ``FIRST_FILES`` test has finished, these: the Spark cluster test, the
#: next longest single test (2-3 minutes), which would otherwise be the one left for the end.
#: Not at the start beside the scheduler test: side by side each slows the other more than their
#: sum (measured, tests/README.md).
THEN_FILES = ("tests/integration/test_spark_cluster.py",)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadfile`` (``make test``) with ``FIRST_FILES``, then ``THEN_FILES``, first."""
    if config.getoption("dist", None) != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LongFilesFirst(LoadFileScheduling):
        def _first_done(self) -> bool:
            if any(scope in self.workqueue for scope in FIRST_FILES):
                return False
            return all(
                all(tests.values())
                for work in self.assigned_work.values()
                for scope, tests in work.items()
                if scope in FIRST_FILES
            )

        def _assign_work_unit(self, node: object) -> None:
            up = (*FIRST_FILES, *(THEN_FILES if self._first_done() else ()))
            for scope in reversed(up):  # the first named ends up first
                if scope in self.workqueue:
                    self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)  # type: ignore[arg-type]

    return LongFilesFirst(config, log)  # type: ignore[arg-type]
