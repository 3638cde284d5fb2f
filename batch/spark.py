"""The Spark session the jobs run in (local by default, a cluster in production)."""

from __future__ import annotations

import os
import sys
from typing import Any

from shared_logic.errors import AttributionError


class MissingSpark(AttributionError):
    """pyspark (or a Java runtime) is missing."""


def spark_session(app_name: str = "attribution-batch", master: str | None = None, **conf: str) -> Any:
    """A session with the settings this engine needs; reuses a running one.

    Locally: ``local[2]``, UI and console progress off, UTC, few shuffle
    partitions, dynamic partition overwrite (a rerun replaces exactly the dates
    it writes), and Spark's Python workers on this interpreter.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingSpark("the batch layer needs pyspark: pip install 'attribution-engine[batch]'") from exc
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(master or os.environ.get("ATTRIBUTION_SPARK_MASTER", "local[2]"))
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", os.environ.get("ATTRIBUTION_SPARK_SHUFFLE_PARTITIONS", "8"))
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.memory", os.environ.get("ATTRIBUTION_SPARK_DRIVER_MEMORY", "4g"))
    )
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session
