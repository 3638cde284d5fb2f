"""Fetching from Kafka past what the consumer cannot decode: ``getmany`` for the worker and the lake sink.

Where aiokafka (0.14) fails. The fetch task stores each partition's response as it came; records are
decoded later, lazily, inside ``consumer.getmany`` (``Fetcher.fetched_records`` -> ``FetchResult.getall``
-> ``PartitionRecords._unpack_records``). There, per record batch: a CRC that does not match raises
``CorruptRecordException`` (alias ``InvalidMessageError``) "Invalid CRC - <partition>"; then iterating
the batch decompresses it, and a codec whose library is missing raises ``UnsupportedCodecError``
(``aiokafka.codec.has_snappy`` and the others, consulted at that moment), a body that does not
decompress raises the decompressor's own error (``cramjam.DecompressionError``, ``zlib.error``,
``EOFError``...), and a record that does not parse raises ``CorruptRecordException`` (a header
key that is not UTF-8: ``UnicodeDecodeError``). The exception leaves ``getmany`` with no partition
or offset on it (only the CRC message names the partition), and:

- the failing partition's position has not moved, so the next ``getmany`` fetches the same bytes and
  raises again, forever: the good batches before the bad one in the same response are never
  delivered either;
- records already drained from *other* partitions in the same call are lost with the exception, and
  their positions have moved past them.

So on such an error ``Fetcher.getmany`` finds the batch itself: it fetches every partition it may
have come from at the offset the caller expects next (a plain Fetch request, the records decoded by
aiokafka's own record classes, CRC checked as the consumer does) and walks the batches. A batch's
header (base offset, last offset delta) is read without decompressing, so the bad range is exactly
``[base offset, base offset + last offset delta]`` (from the caller's next offset, if the batch
started before it). The good records before it are returned; every other partition is put back
where the caller stands. Then ``realtime.undecodable`` decides:

- ``dead-letter`` (default): the consumer is moved past the batch and the range comes back in
  ``Fetched.skipped``; the caller sends a dead letter describing it (topic, partition, first and
  last offset, reason) and commits past it;
- ``stop``: the partition is paused at the batch's first offset (until an operator acts, or a
  rebalance hands it out again); the other partitions go on.

Either way one log line (topic, partition, offsets, reason; no traceback) and the caller's
``undecodable`` counter, by topic.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CorruptRecordException, KafkaError, UnsupportedCodecError
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record import MemoryRecords
from aiokafka.structs import ConsumerRecord

from realtime.broker import client_options
from realtime.deadletters import DeadLetter
from shared_logic.settings import RealtimeSettings

log = logging.getLogger(__name__)

#: The dead letter's field for a batch that could not be decoded.
UNDECODABLE_FIELD = "<batch>"
#: aiokafka's default ``max_partition_fetch_bytes`` (the consumers here keep it).
FETCH_BYTES = 1 << 20
#: How long a probe's Fetch may wait for data (aiokafka's default ``fetch_max_wait_ms``).
PROBE_WAIT_MS = 500
#: After this many errors in a row that no fetched batch reproduces, the error is raised.
UNLOCATED_LIMIT = 3

_BATCH_HEAD = struct.Struct(">qi")  # base offset, length (of the rest); every message format
_LAST_OFFSET_DELTA = struct.Struct(">i")
# Where a batch header holds the magic byte and (v2) the last offset delta: base offset 8 bytes,
# length 4, partition leader epoch 4, magic 1, CRC 4, attributes 2.
_MAGIC_AT = 16
_LAST_OFFSET_DELTA_AT = 23


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A record batch the consumer cannot decode: the offsets it holds and why."""

    tp: TopicPartition
    first: int
    last: int
    reason: str

    def describe(self) -> dict[str, Any]:
        return {
            "topic": self.tp.topic,
            "partition": self.tp.partition,
            "first_offset": self.first,
            "last_offset": self.last,
            "reason": self.reason,
        }

    def dead_letter(self) -> DeadLetter:
        """The dead letter describing the range (its payload: ``describe()`` as JSON)."""
        value = f"{self.tp.topic}/{self.tp.partition} offsets {self.first}..{self.last}"
        return self.describe(), {
            "field": UNDECODABLE_FIELD,
            "value": value,
            "rule": f"cannot be decoded ({self.reason})",
        }


@dataclass(slots=True)
class Fetched:
    """What one ``getmany`` gave: records by partition, and the ranges the consumer was moved past
    (policy ``dead-letter``) for the caller to dead-letter and commit past, after the records."""

    records: dict[TopicPartition, list[Any]]
    skipped: list[Undecodable] = field(default_factory=list)


class Fetcher:
    """``consumer.getmany`` that survives record batches it cannot decode (see the module's doc).

    ``next_offset(tp)``: the offset the caller expects next from a held partition (None: unknown, the
    consumer's position is used). ``lock``: the caller's lock against rebalances, held while a bad
    batch is looked for. ``undecodable``: a Prometheus counter labelled by topic.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        config: RealtimeSettings,
        undecodable: Any,
        next_offset: Callable[[TopicPartition], int | None],
        lock: asyncio.Lock,
    ) -> None:
        self.consumer = consumer
        self.config = config
        self.undecodable = undecodable
        self.next_offset = next_offset
        self.lock = lock
        self.fetch_bytes = int(getattr(consumer, "_max_partition_fetch_bytes", FETCH_BYTES))
        self._unlocated = 0

    async def getmany(self, timeout_ms: int, max_records: int) -> Fetched:
        try:
            records = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except Exception as exc:
            if not may_be_undecodable(exc):
                raise
            async with self.lock:
                fetched = await self._recover()
            if fetched is None:
                self._unlocated += 1
                if self._unlocated >= UNLOCATED_LIMIT:
                    raise
                log.warning(
                    "getmany failed (%s: %s) and no fetched batch reproduces it; fetching again",
                    type(exc).__name__,
                    exc,
                )
                return Fetched({})
            self._unlocated = 0
            return fetched
        self._unlocated = 0
        return Fetched(records)

    async def _recover(self) -> Fetched | None:
        """Find the bad batch of every fetchable partition, apply the policy, put the others back
        (None: no batch found, every partition put back)."""
        consumer = self.consumer
        paused = consumer.paused()
        held = sorted(tp for tp in consumer.assignment() if tp not in paused)
        starts: dict[TopicPartition, int] = {}
        for tp in held:
            expected = self.next_offset(tp)
            starts[tp] = expected if expected is not None else await consumer.position(tp)
        try:
            found = await locate(self.config, starts, self.fetch_bytes)
        except Exception as exc:  # the broker away: the next getmany fails again, or goes on
            log.warning("cannot look for an undecodable batch (%s: %s)", type(exc).__name__, exc)
            found = {}
        for tp in held:
            if tp not in found:
                consumer.seek(tp, starts[tp])  # what the failed call drained from it is fetched again
        if not found:
            return None
        out = Fetched({})
        for tp, (rows, bad) in sorted(found.items()):
            if rows:
                out.records[tp] = rows
            self.undecodable.labels(tp.topic).inc()
            where = f"topic {tp.topic} partition {tp.partition} offsets {bad.first}..{bad.last}"
            if self.config.undecodable == "stop":
                consumer.seek(tp, bad.first)
                consumer.pause(tp)
                log.error(
                    "undecodable record batch: %s (%s); partition stopped at offset %d "
                    "(realtime.undecodable = stop), the others go on",
                    where,
                    bad.reason,
                    bad.first,
                )
            else:
                consumer.seek(tp, bad.last + 1)
                out.skipped.append(bad)
                log.error(
                    "undecodable record batch: %s (%s); dead-lettered, resuming at offset %d",
                    where,
                    bad.reason,
                    bad.last + 1,
                )
        return out


def may_be_undecodable(exc: BaseException) -> bool:
    """Whether ``getmany`` may have raised ``exc`` decoding a batch: aiokafka's record errors, or any
    error not of Kafka's own (a decompressor's, a parser's); not a coordination or broker error."""
    return isinstance(exc, CorruptRecordException | UnsupportedCodecError) or not isinstance(exc, KafkaError)


async def locate(
    config: RealtimeSettings, starts: dict[TopicPartition, int], fetch_bytes: int = FETCH_BYTES
) -> dict[TopicPartition, tuple[list[Any], Undecodable]]:
    """Fetch each partition at its start offset and find its first undecodable batch: per partition
    that has one, the good records before it and the bad range."""
    if not starts:
        return {}
    client = AIOKafkaClient(**client_options(config), request_timeout_ms=10_000)
    try:
        await client.bootstrap()
        results = await asyncio.gather(
            *(_probe(client, tp, start, fetch_bytes) for tp, start in starts.items()), return_exceptions=True
        )
    finally:
        await client.close()
    out: dict[TopicPartition, tuple[list[Any], Undecodable]] = {}
    for tp, result in zip(starts, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("cannot fetch %s to look for an undecodable batch: %s", tp, result)
        elif result is not None:
            out[tp] = result
    return out


async def _probe(
    client: AIOKafkaClient, tp: TopicPartition, start: int, fetch_bytes: int
) -> tuple[list[Any], Undecodable] | None:
    node = client.cluster.leader_for_partition(tp)
    if node is None or node < 0:
        await client.force_metadata_update()
        node = client.cluster.leader_for_partition(tp)
        if node is None or node < 0:
            raise KafkaError(f"no leader known for {tp}")
    # Waits for data as the consumer does (a broker may answer a 0 ms wait with nothing: Tansu does).
    request = FetchRequest(
        PROBE_WAIT_MS, 1, fetch_bytes, 0, [(tp.topic, [(tp.partition, start, fetch_bytes)])]
    )
    response = await client.send(node, request)
    for _topic, partitions in response.topics:
        for partition, error_code, _highwater, *data in partitions:
            if partition == tp.partition and error_code == 0:
                return scan(tp, bytes(data[-1] or b""), start)
    return None


def scan(tp: TopicPartition, data: bytes, start: int) -> tuple[list[Any], Undecodable] | None:
    """Walk the record batches of a fetch response from offset ``start`` as the consumer decodes them
    (CRC, decompression, records): None when every one decodes, else the records before the first
    bad batch and its range. A partial batch at the end (cut by the fetch size) is not looked at."""
    rows: list[Any] = []
    expected = start
    pos = 0
    while pos + _BATCH_HEAD.size <= len(data):
        base, length = _BATCH_HEAD.unpack_from(data, pos)
        end = pos + _BATCH_HEAD.size + length
        if end > len(data) or length < 0:
            break
        chunk = data[pos:end]
        pos = end
        magic = chunk[_MAGIC_AT] if len(chunk) > _MAGIC_AT else -1
        if magic >= 2 and len(chunk) >= _LAST_OFFSET_DELTA_AT + 4:
            first = max(base, expected)
            last = base + _LAST_OFFSET_DELTA.unpack_from(chunk, _LAST_OFFSET_DELTA_AT)[0]
        else:  # v0/v1: the (wrapper) message's offset is its last; where a wrapper starts is inside it
            first, last = expected, base
        if last < expected:
            continue
        try:
            batch = MemoryRecords(chunk).next_batch()
            if not batch.validate_crc():
                raise CorruptRecordException(f"Invalid CRC - {tp}")
            if magic >= 2 and batch.is_control_batch:
                expected = last + 1
                continue
            got = [_record(tp, r) for r in batch if r.offset >= expected]
        except Exception as exc:
            return rows, Undecodable(tp, first, last, _reason(exc))
        rows += got
        expected = last + 1
    return None


def _reason(exc: Exception) -> str:
    """``Error: message``, a decompressor's error named with its module (``zlib.error``)."""
    cls = type(exc)
    name = (
        cls.__name__
        if cls.__module__.split(".")[0] in ("builtins", "aiokafka")
        else f"{cls.__module__}.{cls.__name__}"
    )
    text = str(exc).removeprefix("[Error 2] ")  # a broker error's code (CorruptRecordException's)
    return text if text.startswith(cls.__name__) else f"{name}: {text}"


def _record(tp: TopicPartition, r: Any) -> Any:
    """A record as ``getmany`` gives it."""
    key, value = r.key, r.value
    return ConsumerRecord(
        tp.topic,
        tp.partition,
        r.offset,
        r.timestamp,
        r.timestamp_type,
        key,
        value,
        r.checksum,
        len(key) if key is not None else -1,
        len(value) if value is not None else -1,
        tuple(r.headers),
    )
