"""A lake in a local folder (``file:///abs/path``, ``file://./relative``), the embedded default."""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from storage.lake import Lake


class FileLake(Lake):
    """Files in a folder; a small object or a Parquet file is committed by an atomic rename."""

    def __init__(self, url: str, root: str) -> None:
        self.url = url
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.fs = pafs.LocalFileSystem()

    @classmethod
    def from_url(cls, url: str, **context: Any) -> FileLake:
        parsed = urlparse(url)
        # file:///abs, file://localhost/abs; file://./rel and file://rel/x are relative to the cwd.
        root = parsed.path if parsed.netloc in ("", "localhost") else parsed.netloc + parsed.path
        return cls(url, root or ".")

    def uri(self, *parts: str) -> str:
        return f"file://{self.path(*parts)}"

    def _list(self, directory: str) -> tuple[list[str], list[str]]:
        files: list[str] = []
        dirs: list[str] = []
        try:
            with os.scandir(self.path(directory)) as entries:
                for e in entries:
                    (dirs if e.is_dir() else files).append(e.name)
        except FileNotFoundError:
            pass
        return files, dirs

    def _put_bytes(self, rel: str, data: bytes) -> None:
        full = self.path(rel)
        os.makedirs(posixpath.dirname(full), exist_ok=True)
        tmp = f"{full}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, full)

    def _get_bytes(self, rel: str) -> bytes | None:
        try:
            with open(self.path(rel), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def _delete(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path(rel))

    def _write_parquet(self, rel: str, table: pa.Table) -> None:
        full = self.path(rel)
        os.makedirs(posixpath.dirname(full), exist_ok=True)
        tmp = f"{posixpath.dirname(full)}/.{posixpath.basename(full)}.{uuid.uuid4().hex}.tmp"
        pq.write_table(table, tmp, filesystem=self.fs, compression="zstd")
        os.replace(tmp, full)
