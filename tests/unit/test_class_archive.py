"""The class-data archive's options (``batch.cds``): which archive a driver starts from, and
which setting is an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch import cds

pytestmark = pytest.mark.unit


def test_off_and_a_missing_auto_archive_start_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cds, "default_path", lambda: tmp_path / "none.jsa")
    assert cds.driver_options("off") == ""
    assert cds.driver_options("auto") == ""


def test_auto_maps_this_environments_archive_and_never_insists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-Xshare:auto``, not ``on``: an archive another Java left must not stop the JVM (mutant:
    ``on`` here fails this test)."""
    archive = tmp_path / "spark-classes-x.jsa"
    archive.write_bytes(b"x")
    monkeypatch.setattr(cds, "default_path", lambda: archive)
    options = cds.driver_options("auto").split()
    assert f"-XX:SharedArchiveFile={archive}" in options
    assert "-Xshare:auto" in options
    assert "-Xshare:on" not in options
    assert cds.driver_options(str(archive)).split() == options


def test_a_path_that_is_not_there_is_an_error_naming_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "gone.jsa"
    with pytest.raises(ValueError, match=rf"spark.class_archive = '{missing}': no such file"):
        cds.driver_options(str(missing))


def test_the_archive_is_named_by_the_java_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another Java build (its ``release`` file) gives another name, so it finds no archive and
    starts as before (mutant: a key without the build fails this test)."""
    pytest.importorskip("pyspark")
    keys = []
    for build in ("17.0.15+6", "17.0.16+8"):
        home = tmp_path / build
        (home / "bin").mkdir(parents=True)
        (home / "bin" / "java").write_text("#!/bin/sh\n")
        (home / "release").write_text(f'JAVA_RUNTIME_VERSION="{build}"\n')
        monkeypatch.setenv("JAVA_HOME", str(home))
        keys.append(cds.archive_key())
    assert None not in keys
    assert keys[0] != keys[1]
    path = cds.default_path()
    assert path is not None
    assert path.name == f"spark-classes-{keys[1]}.jsa"
