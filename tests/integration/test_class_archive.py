"""The class-data archive Spark's drivers start from (``batch.cds``), with real JVMs: the product's
driver maps the archive ``make test`` recorded first, and an archive a JVM cannot map is never moved
into place (a truncated one crashes the JVM that maps it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from batch import cds

pytestmark = pytest.mark.integration

DRIVER = """
import sys
from batch.spark import spark_session
spark = spark_session(None, "archive-test", **{"spark.driver.extraJavaOptions": sys.argv[1]})
assert spark.range(3).count() == 3
spark.stop()
"""


def test_a_driver_loads_sparks_classes_from_the_archive_setup_recorded(tmp_path: Path) -> None:
    """A driver started by ``spark_session`` with the default setting (``auto``) loads Spark's
    classes from the archive's top layer, as the JVM's class-load log says (mutant: no archive
    option in ``spark_session`` fails this test)."""
    archive = cds.default_path()
    assert archive is not None
    assert archive.is_file(), "make test records it first (attribution batch class-archive)"
    log = tmp_path / "classes.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTRIBUTION_")}
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, f"-Xlog:class+load=info:file={log}"],
        env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = [line for line in log.read_text().splitlines() if "org.apache.spark.SparkContext " in line]
    assert loaded, log.read_text()[-2000:]
    assert "shared objects file (top)" in loaded[0], loaded


def test_an_archive_the_jvm_cannot_map_is_never_moved_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recording child leaves a truncated archive (as a JVM killed while writing would): the
    check's JVM refuses it, ``record`` raises naming the step, and neither the archive nor its
    temporary file is left (mutant: moving before the check fails this test). A JVM that crashes
    mapping it writes its hs_err_pid<N>.log in a scratch folder, not in the working directory (a
    fresh clone's run left one in the checkout; mutant: dropping the child's ``cwd``)."""
    real = cds.default_path()
    assert real is not None
    assert real.is_file(), "make test records it first (attribution batch class-archive)"
    check = cds._child

    def child(step: str, archive: Path) -> None:
        if step == "record":
            with real.open("rb") as src:
                archive.write_bytes(src.read(1_000_000))
        else:
            check(step, archive)

    monkeypatch.setattr(cds, "_child", child)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    folder = tmp_path / "archive"
    target = folder / "spark-classes-test.jsa"
    with pytest.raises(cds.ArchiveError, match=r"check .*: exit"):
        cds.record(target)
    assert list(folder.iterdir()) == []
    assert list(work.iterdir()) == []
