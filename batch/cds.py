"""A class-data archive of Spark's classes (JVM AppCDS) the batch layer's processes start from.

A Spark driver loads and verifies about 20,000 classes before its first job: on a 2-core
machine about 11-12 CPU seconds, most of the cost of a short process (an Airflow task, one
``attribution batch run``, a reconciliation). A dynamic CDS archive (JDK 13+) holds those
classes already parsed and verified; a JVM that maps it starts in about half the CPU
(measured: 11.0-12.1 against 5.3-5.6 cpu-s to a session and its first job).

- ``attribution batch class-archive`` records one: a child process runs a small nightly job
  (every step: parquet in and out, pandas UDFs, joins, aggregates) with
  ``-XX:ArchiveClassesAtExit``, and a second child starts Spark on the new file with
  ``-Xshare:on`` (refused when the JVM cannot map it); only then is it moved into place, so a
  reader never sees a partial file (a truncated archive crashes the JVM that maps it).
- The archive is only valid for the Java build and the jars that recorded it: its name holds a
  digest of both (``archive_key``), so another Java or pyspark finds none and starts as
  before. ``make test`` records it into the virtualenv first (``share/attribution/``).
- ``spark_session`` gives the driver ``-XX:SharedArchiveFile`` when the setting
  ``ATTRIBUTION_SPARK_CLASS_ARCHIVE`` is ``auto`` (the default: this environment's archive, when
  there is one) or a path; ``off`` starts without. Executors on a cluster are not given it (the
  file is on the driver's machine); in ``local[N]`` the driver is the executor.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

#: The JVM's own CDS messages (a skipped signed jar, an old class) are not the user's business.
QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"


class ArchiveError(RuntimeError):
    """Recording or checking an archive failed (the message holds the child's output)."""


def java_binary() -> Path | None:
    """The ``java`` Spark's launcher runs: ``$JAVA_HOME/bin/java``, else the one on ``PATH``."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    return Path(found).resolve() if found and Path(found).exists() else None


def archive_key() -> str | None:
    """A digest of what an archive is valid for: the Java build (its ``release`` file, else the
    binary's path and size) and pyspark's version and jars. None without Java or pyspark."""
    java = java_binary()
    try:
        import pyspark
    except ImportError:
        return None
    if java is None:
        return None
    release = java.parent.parent / "release"
    build = release.read_text() if release.exists() else f"{java} {java.stat().st_size}"
    jars = sorted(p.name for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar"))
    text = "\n".join([build, pyspark.__version__, *jars])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_path() -> Path | None:
    """Where this environment keeps its archive (inside the virtualenv, next to pyspark's jars)."""
    key = archive_key()
    return None if key is None else Path(sys.prefix) / "share" / "attribution" / f"spark-classes-{key}.jsa"


def driver_options(setting: str) -> str:
    """The driver's JVM options for ``ATTRIBUTION_SPARK_CLASS_ARCHIVE``: ``off``, ``auto`` (this
    environment's archive when recorded, else none) or a path (an error when it does not exist)."""
    if setting == "off":
        return ""
    if setting == "auto":
        path = default_path()
        if path is None or not path.is_file():
            return ""
    else:
        path = Path(setting)
        if not path.is_file():
            raise ValueError(
                f"spark.class_archive = {setting!r}: no such file (record one with "
                "`attribution batch class-archive --path PATH`, or set it to 'auto' or 'off')"
            )
    return f"-XX:SharedArchiveFile={path} -Xshare:auto {QUIET}"


@dataclass(frozen=True)
class Recorded:
    path: Path
    bytes: int
    seconds: float
    existed: bool


def record(path: Path | None = None, *, force: bool = False) -> Recorded:
    """Record the archive at ``path`` (default: ``default_path()``) unless it exists (``force``:
    again); checked, then moved into place atomically."""
    target = path or default_path()
    if target is None:
        raise ArchiveError("no Java or no pyspark here: there is nothing to archive")
    if target.is_file() and not force:
        return Recorded(target, target.stat().st_size, 0.0, True)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.unlink()  # the JVM writes it at exit
    try:
        _child("record", tmp)
        if not tmp.is_file():
            raise ArchiveError(f"the recording JVM wrote no archive at {tmp}")
        _child("check", tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return Recorded(target, target.stat().st_size, time.perf_counter() - started, False)


def _child(step: str, archive: Path) -> None:
    # The child runs in a scratch folder: a JVM that crashes on a bad archive (SIGBUS mapping a
    # truncated one) writes its hs_err_pid<N>.log into its working directory, which must not be
    # the user's checkout; the crash's summary goes into the error instead.
    with tempfile.TemporaryDirectory(prefix="attribution-class-archive-") as scratch:
        done = subprocess.run(
            [sys.executable, "-m", "batch.cds", step, str(archive)],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=scratch,
            env=_child_env(),
        )
        if done.returncode != 0:
            crashes = "".join(
                "".join(log.read_text(errors="replace").splitlines(keepends=True)[:12])
                for log in sorted(Path(scratch).glob("hs_err_pid*.log"))
            )
            raise ArchiveError(
                f"{step} {archive}: exit {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
                + (f"\nthe JVM crashed:\n{crashes}" if crashes else "")
            )


def _child_env() -> dict[str, str]:
    """The child's environment: no ATTRIBUTION_ settings, and this checkout first on its path (it
    runs in a scratch folder, so a relative ``PYTHONPATH`` or a checkout that is not installed
    would not find ``batch``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTRIBUTION_")}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _check(archive_option: str) -> None:
    """A Spark driver started with ``archive_option`` runs one job (the JVM refuses to start with
    ``-Xshare:on`` when it cannot map the archive)."""
    from batch.spark import spark_session
    from shared_logic.settings import SparkSettings

    spark = spark_session(
        SparkSettings(class_archive="off", driver_memory="1g"),
        "attribution-class-archive-check",
        **{"spark.driver.extraJavaOptions": archive_option},
    )
    assert spark.range(10).selectExpr("sum(id) as s").first()["s"] == 45
    spark.stop()


def _workload(archive_option: str) -> None:
    """A small nightly job, every step of it, in a Spark driver started with ``archive_option``;
    the JVM is waited for, so an archive written at its exit is complete when this returns."""
    from pyspark import SparkContext

    from batch.job import run_day
    from batch.spark import spark_session
    from shared_logic import Catalog
    from shared_logic.settings import Settings, SparkSettings
    from shared_logic.timeutil import utc_day_bounds_ms
    from storage import open_lake
    from storage.raw import land_events

    day = date(2026, 1, 5)
    t0 = utc_day_bounds_ms(day)[0]
    hour = 3_600_000
    catalog = Catalog.from_records(
        [
            {
                "campaign_id": "ad1",
                "advertiser_id": "adv1",
                "lever": "ad",
                "merchant_ids": ["m1"],
                "currency": "USD",
                "pricing": {"model": "fixed", "fee_minor": 300},
                "budget": {"daily_minor": 500, "timezone": "UTC"},
            },
            {
                "campaign_id": "pr1",
                "advertiser_id": "adv1",
                "lever": "promo",
                "merchant_ids": ["m1"],
                "promo_codes": ["SAVE1"],
                "currency": "USD",
                "pricing": {"model": "bps", "bps": 1_000},
            },
        ]
    )

    def touch(kind: str, n: str, at: int, user: str, campaign: str) -> dict[str, object]:
        return {"event_id": n, "event_type": kind, "event_time": at, "user_id": user, "campaign_id": campaign}

    events: list[dict[str, object]] = []
    for u in range(6):
        user, at = f"u{u}", t0 + u * hour
        events += [
            touch("impression", f"i{u}", at, user, "ad1"),
            touch("click", f"c{u}", at + 60_000, user, "ad1"),
            touch("promo_view", f"p{u}", at + 90_000, user, "pr1"),
            {
                "event_id": f"o{u}",
                "event_type": "order",
                "event_time": at + 600_000,
                "user_id": user,
                "order_id": f"o{u}",
                "merchant_id": "m1",
                "amount_minor": 5_000,
                "currency": "USD",
                "promo_codes": ["SAVE1"] if u % 2 else [],
            },
        ]
    cancel = {"event_id": "x0", "event_type": "order_cancel", "event_time": t0 + hour, "user_id": "u0"}
    events.append({**cancel, "order_id": "o0"})
    with tempfile.TemporaryDirectory() as folder:
        lake = open_lake(f"file://{folder}/lake")
        land_events(lake, [(e, int(str(e["event_time"])) + 1_000) for e in events])
        config = Settings().replace(batch_models=("last_touch", "markov", "shapley"))
        spark = spark_session(
            SparkSettings(class_archive="off", driver_memory="1g"),
            "attribution-class-archive",
            **{"spark.driver.extraJavaOptions": archive_option},
        )
        run_day(spark, lake, catalog, day, config)
        gateway = SparkContext._gateway
        proc = getattr(gateway, "proc", None)
        spark.stop()
        if gateway is not None:
            gateway.shutdown()
        if proc is not None:  # the JVM exits (and writes an archive) once its stdin closes
            proc.stdin.close()
            proc.wait(timeout=300)


def main(argv: list[str]) -> None:
    step, archive = argv
    if step == "record":
        _workload(f"-XX:ArchiveClassesAtExit={archive} {QUIET}")
    elif step == "check":
        _check(f"-XX:SharedArchiveFile={archive} -Xshare:on {QUIET}")
    else:
        raise SystemExit(f"step = {step!r}: must be 'record' or 'check'")


if __name__ == "__main__":
    main(sys.argv[1:])
