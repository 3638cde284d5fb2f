"""The Spark session the jobs run in (local by default, a cluster in production), and the
Spark forms of the contract's row schemas."""

from __future__ import annotations

import os
import sys
from typing import Any

from batch.cds import driver_options
from shared_logic.contract import RowSchema
from shared_logic.errors import MissingExtra
from shared_logic.settings import SparkSettings
from storage.arrow import arrow_schema


def spark_schema(row: RowSchema) -> Any:
    """The ``StructType`` of a row schema, through its Arrow form (what ``mapInPandas``,
    ``applyInPandas``, ``createDataFrame`` and ``spark.read.schema`` take)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(arrow_schema(row))


def spark_session(
    section: SparkSettings | None = None, app_name: str = "attribution-batch", **conf: str
) -> Any:
    """A session with the settings this engine needs; reuses a running one.

    ``local[2]`` by default, UI and console progress off, UTC, few shuffle
    partitions, dynamic partition overwrite (a rerun replaces exactly the dates
    it writes), Spark's Python workers on this interpreter, and a driver that
    starts from the class-data archive of ``section.class_archive`` (``batch.cds``).
    """
    try:
        from pyspark import SparkContext
        from pyspark.sql import SparkSession
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtra("the batch layer (pyspark)", "batch") from exc
    section = section or SparkSettings()
    # Spark reads these from the process environment; they are facts of this process, not settings.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(section.master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(section.shuffle_partitions))
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.memory", section.driver_memory)
    )
    if section.master.startswith("local"):
        # A night reads a list of committed files (hundreds of hour partitions); Spark lists
        # more than 32 paths with a job of its own, which on one machine costs more than the
        # driver's listing. A cluster over S3 keeps the parallel listing.
        builder = builder.config("spark.sql.sources.parallelPartitionDiscovery.threshold", "4096")
    conf = dict(conf)
    if SparkContext._active_spark_context is None:  # options of a JVM still to start
        archive = driver_options(section.class_archive)
        if archive:
            given = conf.get("spark.driver.extraJavaOptions", "")
            conf["spark.driver.extraJavaOptions"] = f"{given} {archive}".strip()
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session
