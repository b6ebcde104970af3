"""Shared pytest fixtures.

Kafka (docs/design.md §9): one real broker per test session, started on first use by ``kafka_broker``; tests
that use it are marked ``kafka`` automatically. Factory fixtures give each test its own topics.
Prometheus: ``prometheus_server`` (:mod:`tests.prometheus.fixtures`), one real server per session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.kafka.broker import KafkaBroker
from tests.prometheus.fixtures import prometheus_server  # noqa: F401 - a real Prometheus, one per session

# --------------------------------------------------------------------------- Kafka


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """A running single-node KRaft broker on loopback (``.bootstrap`` = ``"127.0.0.1:PORT"``).

    Tests may ``stop()`` / ``start()`` / ``restart()`` it; a test that leaves it stopped gets it
    started again before the next test that uses it. Fails (never skips) when Java or Maven is missing.
    """
    broker = KafkaBroker()
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


@pytest.fixture(autouse=True)
def _kafka_broker_running(request: pytest.FixtureRequest) -> None:
    if "kafka_broker" in request.fixturenames:
        request.getfixturevalue("kafka_broker").ensure_running()


@pytest.fixture
def topic_factory(kafka_broker: KafkaBroker) -> Callable[..., str]:
    """``topic_factory(partitions=1, name=None, configs=None) -> str``: a new, uniquely named topic."""
    return kafka_broker.create_topic


@pytest.fixture
def workers(tmp_path):
    """:class:`tests.kafka.workers.WorkerProcesses` under the test's directory, all stopped after it."""
    from tests.kafka.workers import WorkerProcesses

    procs = WorkerProcesses(tmp_path)
    yield procs
    procs.close()


@pytest.fixture
def producer(kafka_broker: KafkaBroker):
    """A ``KafkaProducer`` (bytes in, ``acks="all"``) closed after the test."""
    prod = kafka_broker.producer()
    yield prod
    prod.close(timeout=5)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "kafka_broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for a module: tiny matrices gain nothing from a pool, and suites share the machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ranker_checkpoint(tmp_path_factory) -> str:
    """A small ranker pretrained on a simulated log (for the policies that need a checkpoint)."""
    from pipeline.events import EventRules, decode_arrow
    from pipeline.features import Featurizer
    from pipeline.learners.neural import NeuralRanker, pretrain
    from pipeline.simulate import Simulator

    featurizer = Featurizer()
    log = [
        featurizer.transform_and_update(decode_arrow(b, EventRules())[0])
        for b in Simulator(seed=2, n_users=50, n_items=20).batches(1500, chunk_size=250)
    ]
    ranker = NeuralRanker(dim=4, user_rows=64, item_rows=32, feature_rows=32, hidden=(8,), cross_rank=2)
    pretrain(ranker, log, epochs=1, batch_size=256, val_fraction=0.0)
    return str(ranker.save_checkpoint(tmp_path_factory.mktemp("ranker") / "ranker.ckpt"))
