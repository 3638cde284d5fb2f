"""Leaving the consumer group while a rebalance is under way: the worker and the lake sink stop.

aiokafka's ``consumer.stop()`` waits for its coordination task, and that task may be in a rebalance
another member started (by leaving, when every worker stops together), calling our rebalance
listener, which takes the same lock a batch holds. A ``stop()`` called under that lock waited for
ever: the suite's two-worker partitioning test hung once that way. The consumers here stand in for
aiokafka's at that moment: their ``stop()`` runs the listener's revocation first, as the
coordination task would, then stops."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition

from realtime.clock import Clocks
from realtime.kafka import KafkaWorker
from realtime.kafka import _Listener as WorkerListener
from realtime.lakesink import LakeSink
from realtime.lakesink import _Listener as SinkListener
from shared_logic.campaigns import Catalog
from shared_logic.settings import Settings
from storage import open_lake

pytestmark = pytest.mark.unit

TP = TopicPartition("attribution.order", 0)


class _StoppingMidRebalance:
    """A consumer whose ``stop()`` waits for a rebalance that revokes its partition (the listener
    runs first, as aiokafka's coordination task runs it), then stops."""

    def __init__(self) -> None:
        self.listener: Any = None
        self.commits: list[dict[Any, int]] = []
        self.stopped = False

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.commits.append(offsets)

    async def stop(self) -> None:
        await self.listener.on_partitions_revoked({TP})
        self.stopped = True


class _Redis:
    async def aclose(self) -> None:
        pass


class _Engine:
    """The speed layer as the worker's close and its listener see it: the clocks and revoke."""

    def __init__(self) -> None:
        self.clocks = Clocks()
        self.clocks.assign((TP.topic, TP.partition), 7)
        self.revoked: list[Any] = []

    async def revoke(self, tps: list[Any]) -> None:
        self.revoked += tps


async def test_a_worker_stopping_during_a_rebalance_commits_leaves_and_returns(tmp_path: Any) -> None:
    settings = Settings().replace(lake_url=f"file://{tmp_path}/lake", realtime_ledger_flush_interval_s=0)
    worker = KafkaWorker(settings, Catalog([]), redis=_Redis())
    consumer, engine = _StoppingMidRebalance(), _Engine()
    consumer.listener = WorkerListener(worker)
    worker.consumer, worker.engine = consumer, engine  # type: ignore[assignment]

    await asyncio.wait_for(worker._close(), 10)  # under the lock: TimeoutError, both waiting

    assert consumer.stopped
    assert consumer.commits[0] == {TP: 7}  # its own commit of the partitions it held, first
    assert engine.revoked == [(TP.topic, TP.partition)]  # the rebalance's revocation ran too


async def test_the_lake_sink_stopping_during_a_rebalance_rolls_leaves_and_returns(tmp_path: Any) -> None:
    settings = Settings().replace(lake_url=f"file://{tmp_path}/lake")
    sink = LakeSink(settings, lake=open_lake(settings.lake.url, settings.s3))
    consumer = _StoppingMidRebalance()
    consumer.listener = SinkListener(sink)
    sink.consumer = consumer  # type: ignore[assignment]
    sink.clocks.assign((TP.topic, TP.partition), 7, 0)

    await asyncio.wait_for(sink._close(), 10)  # under the lock: TimeoutError, both waiting

    assert consumer.stopped
    assert (TP.topic, TP.partition) not in sink.clocks.parts  # the rebalance's revocation ran too
