"""The rebalance listener of :class:`consumers.kafka.KafkaSource`, for kafka-python 2.x and 3.x.

kafka-python >= 3 invokes listeners on its IO thread, where a blocking call such as ``commit``
would deadlock; there the callbacks run on a helper thread while the listener awaits them, which
keeps the IO loop (heartbeats, the commit itself) running. kafka-python 2.x calls listeners inside
``poll()``, where the callbacks run directly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener

try:  # kafka-python >= 3 runs rebalance listeners on its IO thread
    from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
except ImportError:  # pragma: no cover - kafka-python 2.x calls listeners inside poll()
    AsyncConsumerRebalanceListener = None

__all__ = ["make_listener"]

Assigned = Callable[[Iterable[TopicPartition]], None]
Revoked = Callable[..., None]  # (partitions, lost=False)


def make_listener(consumer: KafkaConsumer, assigned: Assigned, revoked: Revoked) -> ConsumerRebalanceListener:
    """A listener calling ``assigned(tps)``, ``revoked(tps)`` and ``revoked(tps, True)`` (lost partitions)
    where blocking consumer calls are allowed."""
    net = getattr(consumer, "_net", None)
    if AsyncConsumerRebalanceListener is None or not hasattr(net, "call_soon_threadsafe"):
        return _SyncListener(assigned, revoked)
    return _ThreadedListener(assigned, revoked, net)


class _SyncListener(ConsumerRebalanceListener):
    def __init__(self, assigned: Assigned, revoked: Revoked):
        self._assigned, self._revoked = assigned, revoked

    def on_partitions_revoked(self, revoked):
        self._revoked(revoked)

    def on_partitions_assigned(self, assigned):
        self._assigned(assigned)

    def on_partitions_lost(self, lost):
        self._revoked(lost, True)


if AsyncConsumerRebalanceListener is not None:

    class _ThreadedListener(AsyncConsumerRebalanceListener):
        def __init__(self, assigned: Assigned, revoked: Revoked, net):
            self._assigned, self._revoked, self._net = assigned, revoked, net

        async def _off_loop(self, fn, *args):
            from kafka.future import Future

            done = Future()

            def work():
                try:
                    value, exc = fn(*args), None
                except BaseException as e:  # handed back to the coordinator, which re-raises it
                    value, exc = None, e

                async def resolve():
                    done.failure(exc) if exc is not None else done.success(value)

                self._net.call_soon_threadsafe(resolve)

            threading.Thread(target=work, name="streamlearn-rebalance", daemon=True).start()
            return await done

        async def on_partitions_revoked(self, revoked):
            await self._off_loop(self._revoked, revoked)

        async def on_partitions_assigned(self, assigned):
            await self._off_loop(self._assigned, assigned)

        async def on_partitions_lost(self, lost):
            await self._off_loop(self._revoked, lost, True)
