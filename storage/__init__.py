"""Storage both layers share: the lake (``file://``, ``s3://``) and the campaign catalog
(a file, ``cassandra://``), each chosen by URL through a registry."""

from __future__ import annotations

from typing import Any

from shared_logic.settings import S3Settings
from storage.lake import Lake, PartitionRef, partition
from storage.registry import Backend, Registry

LAKES: Registry[Lake] = Registry(
    "lake",
    {
        "file": Backend("storage.file:FileLake", "realtime"),
        "s3": Backend("storage.s3:S3Lake", "s3"),
        "s3a": Backend("storage.s3:S3Lake", "s3"),
    },
)


def open_lake(url: str, s3: S3Settings | None = None, **context: Any) -> Lake:
    """The lake at ``url``: ``file:///path`` (a folder) or ``s3://bucket/prefix``."""
    return LAKES.open(url, s3=s3, **context)


__all__ = ["LAKES", "Lake", "PartitionRef", "open_lake", "partition"]
