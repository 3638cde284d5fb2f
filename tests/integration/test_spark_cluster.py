"""The nightly job on a Spark standalone cluster, as operators run it.

A master and two workers start from pyspark's own jars (``spark-class
org.apache.spark.deploy.master.Master`` / ``...deploy.worker.Worker``) on free
loopback ports, one core and little memory each. The nightly job, the
reconciliation and a rerun then run through ``attribution`` in their own
process with ``ATTRIBUTION_SPARK_MASTER=spark://…`` (a JVM holds one Spark
context: the session-scoped ``local[2]`` one stays for the rest of the suite),
over a copy of a lake the ``local[2]`` session processes too; every partition
they write must hold the same rows.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from batch.cds import driver_options
from batch.job import run_range
from batch.reconcile import reconcile_day
from devtools.servers import free_port
from devtools.synthetic import SyntheticConfig, generate
from shared_logic.settings import Settings
from storage import Lake, open_lake, partition
from tests.helpers import land_and_replay, stop_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = SyntheticConfig(users=300, days=2, cancel_rate=0.15, duplicate_rate=0.02, malformed_rate=0.003)
#: Every dataset the nightly job and the reconciliation write, with their partition depth.
OUTPUTS = {
    "batch_ledger": 1,
    "metrics/campaign_daily": 1,
    "attribution": 2,
    "settlement_state": 1,
    "refused": 1,
    "reconciliation": 1,
}


class SparkStandalone:
    """A standalone master and ``workers`` workers from pyspark's jars, each in its own process
    group (a worker's executors are its children), stopped as groups."""

    def __init__(self, workers: int = 2, cores: int = 1, memory: str = "1g") -> None:
        import pyspark

        self.home = os.path.dirname(pyspark.__file__)
        self._dir = tempfile.TemporaryDirectory(prefix="attribution-spark-")
        self.port, self.ui_port = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "SPARK_HOME": self.home,
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOG_DIR": self._dir.name,
            "SPARK_DAEMON_MEMORY": "256m",
            # The daemons share the drivers' classpath, so they start from the same class archive.
            "SPARK_DAEMON_JAVA_OPTS": driver_options("auto"),
            # Executors inherit their worker's environment: nodes in another zone than the driver
            # must change nothing (every day boundary is UTC, or a campaign's own zone).
            "TZ": "Pacific/Chatham",
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        try:
            self._start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                        "--port", str(self.port), "--webui-port", str(self.ui_port))  # fmt: skip
            self._wait(lambda s: s.get("status") == "ALIVE", "the master")
            for i in range(workers):
                work = Path(self._dir.name, f"work-{i}")
                work.mkdir()
                self._start(f"worker-{i}", "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                            "--cores", str(cores), "--memory", memory, "--port", str(free_port()),
                            "--webui-port", str(free_port()), "--work-dir", str(work), self.url)  # fmt: skip
            self._wait(lambda s: s.get("aliveworkers", 0) == workers, f"{workers} workers")
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, main: str, *args: str) -> None:
        log = Path(self._dir.name, f"{name}.log").open("wb")  # noqa: SIM115 - the child holds it
        self.processes.append(
            subprocess.Popen(
                [os.path.join(self.home, "bin", "spark-class"), main, *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir.name,
                start_new_session=True,
            )
        )
        log.close()

    def state(self) -> dict[str, Any]:
        """The master's JSON status page (workers, applications)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=2) as reply:
            state: dict[str, Any] = json.load(reply)
        return state

    def _wait(self, ok: Any, what: str, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.processes):
                raise RuntimeError(f"a Spark daemon exited while waiting for {what}:\n{self.logs()}")
            try:
                if ok(self.state()):
                    return
            # Not listening yet, or (seen in CI) Jetty up before the page has a body: empty JSON.
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{what} not up within {timeout_s}s:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(Path(self._dir.name).glob("*.log"))
        )

    def stop(self) -> None:
        for p in reversed(self.processes):  # workers (and their executors) first, the master last
            if p.poll() is None:
                stop_group(p, 15, 5)
            with contextlib.suppress(ProcessLookupError):  # executors a worker left behind
                os.killpg(p.pid, signal.SIGKILL)
        self._dir.cleanup()


@pytest.fixture(scope="session")
def spark_cluster() -> Iterator[SparkStandalone]:
    """One standalone master and two 1-core, 1 GB workers for the whole run (about 20 s to start)."""
    cluster = SparkStandalone()
    try:
        yield cluster
    finally:
        cluster.stop()


def _normal(value: Any) -> Any:
    """Floats to 12 significant digits: summation order may differ between plans, not figures."""
    if isinstance(value, float):
        return float(f"{value:.12g}") if math.isfinite(value) else repr(value)
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value


def _outputs(lake: Lake) -> dict[str, list[str]]:
    """Every committed output partition of the job and the reconciliation, as sorted rows."""
    out: dict[str, list[str]] = {}
    for dataset, depth in OUTPUTS.items():
        for values in lake.partitions(dataset, depth=depth):
            ref = partition(dataset, **values)
            assert lake.is_complete(ref), ref.path
            rows = lake.read([ref]).to_pylist()
            out[ref.path] = sorted(json.dumps(_normal(r), sort_keys=True) for r in rows)
    return out


#: The operator's commands, run by ``cli.app`` one after another in one driver process (one JVM
#: start and one set of executors instead of three; ``spark_session`` reuses the running session).
DRIVER = """
import json, sys
from cli import app
for args in json.loads(sys.argv[1]):
    app(args=args, standalone_mode=False)
"""


def _attribution(commands: list[list[str]], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(commands)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"attribution {commands}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_nightly_job_reconciliation_and_rerun_on_a_cluster_equal_local(
    spark_cluster: SparkStandalone, spark: Any, redis_server: Any, tmp_path: Path
) -> None:
    from tests.helpers import flush

    flush(redis_server.url)
    traffic = generate(CONFIG)
    local_lake, _, catalog = land_and_replay(tmp_path / "local", traffic, redis_server.url)
    shutil.copytree(tmp_path / "local" / "lake", tmp_path / "cluster")
    cluster_lake = open_lake(f"file://{tmp_path / 'cluster'}")
    first, last = CONFIG.start, CONFIG.start + timedelta(days=CONFIG.days - 1)

    # local[2], in this process: the nights, the reconciliation, then a rerun of the first day.
    run_range(spark, local_lake, traffic.catalog, first, last, Settings())
    for i in range(CONFIG.days):
        reconcile_day(spark, local_lake, traffic.catalog, first + timedelta(days=i), Settings())
    run_range(spark, local_lake, traffic.catalog, first, first, Settings())

    # The cluster, through the command an operator runs. The child gets no PYSPARK_PYTHON of
    # ours and runs in another folder: the job must set up its executors by itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "ATTRIBUTION_"))}
    # The deployed plan (8 shuffle partitions, adaptive re-planning, code generation), not the
    # small one the suite's other product processes run (``tests/conftest.py``): its outputs must
    # equal the session's, which plans small.
    opts = env.get("SPARK_SUBMIT_OPTS", "").split()
    env["SPARK_SUBMIT_OPTS"] = " ".join(o for o in opts if not o.startswith("-Dspark.sql."))
    env |= {
        "ATTRIBUTION_SPARK_MASTER": spark_cluster.url,
        "ATTRIBUTION_SPARK_DRIVER_MEMORY": "512m",
        "ATTRIBUTION_LAKE_URL": cluster_lake.url,
        "ATTRIBUTION_CATALOG_URL": str(catalog),
    }
    days = ["--start", first.isoformat(), "--end", last.isoformat()]
    commands = [["batch", "run", *days], ["reconcile", *days], ["batch", "run", "--start", first.isoformat()]]
    (tmp_path / "elsewhere").mkdir()
    out = _attribution(commands, env, tmp_path / "elsewhere")
    assert "reconciliation" in out, out

    state = spark_cluster.state()
    apps = state["completedapps"] + state["activeapps"]
    assert apps, state  # the work ran on the cluster, not in a local fallback
    assert apps[-1]["cores"] == 2, apps  # on both workers
    local, cluster = _outputs(local_lake), _outputs(cluster_lake)
    assert sorted(cluster) == sorted(local)
    assert any(p.startswith("batch_ledger/") for p in local)
    assert any(p.startswith("attribution/") for p in local)
    for path in local:
        assert cluster[path] == local[path], path
    assert sum(len(rows) for p, rows in local.items() if p.startswith("batch_ledger/")) > 20
    for i in range(CONFIG.days):  # the checkpoints' content digests agree too
        ref = partition("settlement_state", dt=(first + timedelta(days=i)).isoformat())
        assert cluster_lake.manifest(ref)["digest"] == local_lake.manifest(ref)["digest"]  # type: ignore[index]
