"""A running worker's state dir gains a challenger learner: the restart keeps the champion.

Against the real broker: the worker learns with ``ftrl`` alone and stops; its configuration then
gains ``beta_ts``; the restarted worker resumes ftrl from the snapshot (its counters go on), starts
the challenger cold, and names it in the log. Changing the champion's parameters is refused.
"""

from __future__ import annotations

import re

import pytest

from state.snapshot import SnapshotStore
from tests.kafka.workers import worker_config
from tests.test_conformance import make_events
from tests.test_worker_kafka import send

pytestmark = pytest.mark.kafka

CHAMPION = '[[learners]]\nkind = "ftrl"\nparams = { bits = 16 }\n'
CHALLENGER = CHAMPION + '[[learners]]\nkind = "beta_ts"\n'


def test_a_challenger_added_to_a_running_worker_starts_cold_beside_the_restored_champion(
    kafka_broker, topic_factory, producer, workers, tmp_path
):
    topic = topic_factory(partitions=1)
    state_dir = tmp_path / "state"
    send(producer, topic, make_events(1500, prefix="a"), 1)
    config = worker_config(
        tmp_path / "w.toml", kafka_broker.bootstrap, [topic], "g-ch", state_dir, learners=CHAMPION
    )
    first = workers.start("first", config, "--idle-exit", "2")
    assert first.wait(90) == 0, first.log_tail()

    send(producer, topic, make_events(1000, prefix="b"), 1)
    worker_config(
        tmp_path / "w.toml", kafka_broker.bootstrap, [topic], "g-ch", state_dir, learners=CHALLENGER
    )
    second = workers.start("second", config, "--idle-exit", "2")
    assert second.wait(90) == 0, second.log_tail()
    log = second.log.read_text()
    assert re.search(r"resumed from snapshot \d+ \(1,500 events applied\)", log), log[-2000:]
    assert "learner 'beta_ts' is new: it starts without stored state" in log
    manifest, bundles = SnapshotStore(state_dir).latest_valid()
    assert manifest["counters"]["applied"] == 2500 and set(bundles) >= {"ftrl", "beta_ts"}
    arms = bundles["beta_ts"].tables["arms"].column("pulls").to_pylist()
    assert sum(arms) == 1000  # the challenger learned from the new events only

    changed = CHALLENGER.replace("bits = 16", "bits = 18")
    worker_config(tmp_path / "w.toml", kafka_broker.bootstrap, [topic], "g-ch", state_dir, learners=changed)
    third = workers.start("third", config, "--idle-exit", "2")
    assert third.wait(90) != 0
    assert "learner 'ftrl' has other parameters (bits: 16 -> 18)" in third.log.read_text()
