"""Backends chosen by URL scheme, one registry per kind (as Faust picks its stores).

A registry maps a scheme to ``"module:Class"`` and the extra that installs
the module's dependencies. Modules are imported only when a URL asks for
them, so the embedded default never imports boto3, psycopg or the Cassandra
driver, and a missing one fails with a message naming the extra. Every
backend class offers ``from_url(url, **context)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlparse

from shared_logic.errors import MissingExtra
from storage.errors import UnknownBackend

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backend:
    target: str  # "package.module:Class"
    extra: str  # the extra that installs what the module imports


def scheme_of(url: str) -> str:
    """The URL's scheme, lower-cased; ``""`` for a plain path (``/x``, ``var/x.yaml``)."""
    if "://" not in url:
        return ""
    return urlparse(url).scheme.lower()


class Registry(Generic[T]):
    """The backends of one kind (lake, analytics store, catalog, dead-letter sink)."""

    def __init__(self, kind: str, backends: Mapping[str, Backend]) -> None:
        self.kind = kind
        self.backends = dict(backends)

    @property
    def schemes(self) -> list[str]:
        return sorted(s for s in self.backends if s)

    def resolve(self, url: str) -> type[T]:
        """The class serving ``url``; imports its module on first use."""
        scheme = scheme_of(url)
        backend = self.backends.get(scheme)
        if backend is None:
            forms = ", ".join(f"{s}://" for s in self.schemes)
            raise UnknownBackend(f"{self.kind} url", url, f"scheme must be one of {forms}")
        module_name, _, attr = backend.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if isinstance(exc, MissingExtra):
                raise
            raise MissingExtra(f"the {scheme or 'file'} {self.kind} ({exc.name})", backend.extra) from exc
        cls: type[T] = getattr(module, attr)
        return cls

    def open(self, url: str, **context: Any) -> T:
        """An instance for ``url``: ``resolve(url).from_url(url, **context)``."""
        cls: Any = self.resolve(url)
        instance: T = cls.from_url(url, **context)
        return instance
