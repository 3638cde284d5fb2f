"""The speed layer's single-server client packs commands with hiredis: the same bytes as redis-py's
own asyncio packer for every command it takes, and redis-py's packer for anything else.

Kills the mutants that drop the type check (a bool, which redis-py refuses, would go out as
hiredis packs it), that drop the split of a first argument with a space (``CONFIG GET`` would go
out as one argument), and that skip the encoding check (a client set to Latin-1 would send
UTF-8). Letting floats through to hiredis is an equivalent mutant: hiredis writes a float as
``repr`` does (checked for 0.1, 1e-07, 1e+16, 1/3, inf, 5e-324); they stay on redis-py's packer
so that no formatting of money-adjacent values depends on a C library's version."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.connection import Connection

from realtime.client import _packing, connect
from shared_logic.settings import RedisSettings

pytestmark = pytest.mark.unit

FAST = _packing(Connection)


def _both(*args: object, encoding: str = "utf-8") -> tuple[bytes, bytes]:
    fast = FAST(encoding=encoding)
    plain = Connection(encoding=encoding)
    return b"".join(fast.pack_command(*args)), b"".join(plain.pack_command(*args))


_ARG = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["EVALSHA", "MGET", "SET", b"HSET", "CONFIG GET", b"CLIENT TRACKING"]), st.lists(_ARG))
def test_hiredis_packing_writes_the_bytes_redis_py_writes(command: str | bytes, args: list[object]) -> None:
    fast, plain = _both(command, *args)
    assert fast == plain


@pytest.mark.parametrize("value", [0.1, 1e-7, 2.5, memoryview(b"abc"), True])
def test_other_types_take_redis_py_packer(value: object) -> None:
    try:
        expected = b"".join(Connection().pack_command("SET", "k", value))
    except Exception as err:  # redis-py refuses a bool, with its DataError: so must the fast packer
        with pytest.raises(type(err)):
            FAST().pack_command("SET", "k", value)
        return
    assert b"".join(FAST().pack_command("SET", "k", value)) == expected


def test_another_encoding_takes_redis_py_packer() -> None:
    fast, plain = _both("SET", "k", "é", encoding="latin-1")
    assert fast == plain
    assert b"\xe9" in fast


def test_the_client_of_one_server_packs_with_hiredis() -> None:
    client = connect(RedisSettings(url="redis://127.0.0.1:1/0"))
    cls = client.connection_pool.connection_class
    assert issubclass(cls, Connection)
    assert cls.pack_command is FAST.pack_command
