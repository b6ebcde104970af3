"""A serving replica that follows a group's model-updates topic, not only its snapshots (``[group]``).

Under ``[group]`` the updates topic is the commit point: a worker's snapshot is the fold of the
topic up to an offset (docs/scaling.md). A replica can therefore hold the group's model exactly
as a worker does, without waiting for snapshots: :class:`UpdatesFollower` loads the newest group
snapshot of a state directory once, then reads the topic on from the offset that snapshot records
and adds every delta the fold accepts (:class:`~pipeline.group.sync.ModelSync`, the same rule the
workers apply, so the replica accepts the same deltas in the same order). Each time it has caught
up with what the topic holds, or every ``poll_s`` while deltas keep coming, it swaps in a new
:class:`~pipeline.serving.view.ModelView` whose version names the offset it folds up to.

A replica never writes: it neither creates nor produces to the topic, and it never writes to the
state directory, so any number of replicas can follow one group.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable

from consumers.kafka.updates import UpdatesLog, updates_topic
from consumers.worker.group import GroupRunner, group_meta
from consumers.worker.tracked import TrackedRunner
from pipeline.config import Config
from pipeline.errors import ConfigError, SnapshotError
from pipeline.group.sync import UNREADABLE

__all__ = ["UpdatesFollower"]

log = logging.getLogger(__name__)


class UpdatesFollower:
    """Keeps ``holder`` at the fold of the group's updates topic (see the module docstring).

    Parameters
    ----------
    state_dir
        A state directory of one of the group's workers (or shared storage of its snapshots): the
        newest group snapshot there is the replica's start.
    holder
        The :class:`~pipeline.serving.view.ViewHolder` the server answers from.
    config
        The group's configuration: ``[kafka]`` (brokers, client security) and ``[group]`` (the
        topic's name and its largest delta). The learners come from the snapshot.
    fallback
        Configuration for snapshots that do not record theirs (as for ``streamlearn serve``).
    poll_s
        The most time between two swaps while deltas keep arriving.
    bootstrap_servers
        Overrides ``kafka.bootstrap_servers``.
    """

    def __init__(
        self,
        state_dir: str,
        holder,
        config: Config,
        fallback: Config | None = None,
        poll_s: float = 1.0,
        bootstrap_servers: str | None = None,
        announce: Callable[[str], None] | None = None,
    ):
        from state.snapshot import SnapshotStore

        self.store = SnapshotStore(state_dir)
        self.state_dir, self.holder, self.config = state_dir, holder, config
        self.fallback, self.poll_s = fallback, poll_s
        self.bootstrap = bootstrap_servers or config.kafka.bootstrap_servers
        self.announce = announce or (lambda line: print(f"serve: {line}", file=sys.stderr))
        self.topic = updates_topic(config)
        self.updates: UpdatesLog | None = None
        self.group: GroupRunner | None = None
        self.seq: int | None = None  # the snapshot it started from
        self.config_hash = ""
        self.seed = 0
        self.calibration: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ start
    def refresh(self) -> bool:
        """Start from the newest group snapshot (once); True when the first view was swapped in."""
        if self.group is not None:
            return False
        found = self.store.latest_valid()
        if found is None:
            return False
        manifest, bundles = found
        meta = group_meta(manifest)
        if meta is None:
            raise ConfigError(
                f"snapshot {manifest['seq']:08d} in {self.state_dir} was written without [group]: "
                "there is no updates topic to follow (serve it without --follow-updates)"
            )
        return self._start(manifest, bundles)

    def _start(self, manifest: dict, bundles: dict) -> bool:
        from consumers.commands.serve import snapshot_calibration, snapshot_config
        from pipeline.runner import Runner

        config = snapshot_config(manifest, self.fallback)
        self.config_hash = manifest["config_hash"]
        runner = Runner.from_config(config)
        group = GroupRunner(TrackedRunner(runner, f"replica-{uuid.uuid4().hex[:8]}"), self.config_hash)
        try:
            group.load_state(bundles)
        except (KeyError, ValueError) as exc:
            raise SnapshotError(f"snapshot {manifest['seq']:08d} in {self.state_dir}: {exc}") from exc
        self.seed = config.seed
        self.calibration = snapshot_calibration(manifest)
        updates = UpdatesLog(
            self.bootstrap,
            self.topic,
            self.config.group.max_delta_bytes,
            dict(self.config.kafka.client),
            writer=False,
        )
        first = updates.beginning_offset()
        if group.sync.fold.offset < first:
            updates.close()
            raise SnapshotError(
                f"the updates topic {self.topic} starts at offset {first:,} but snapshot "
                f"{manifest['seq']:08d} continues from {group.sync.fold.offset:,}: deltas were deleted"
            )
        updates.seek(group.sync.fold.offset)
        self.updates, self.group, self.seq = updates, group, int(manifest["seq"])
        self._swap()
        self.announce(
            f"snapshot {self.seq:08d} loaded; following {self.topic} from offset {group.sync.fold.offset:,}"
        )
        return True

    # ------------------------------------------------------------------ following
    @property
    def offset(self) -> int:
        """The updates topic's offset the model folds up to (0 before the start)."""
        return self.group.sync.fold.offset if self.group is not None else 0

    @property
    def events_applied(self) -> int:
        """Group-wide events in the model: the accepted deltas' counts."""
        if self.group is None:
            return 0
        return sum(int(c.get("applied", 0)) for c in self.group.sync.fold.counts.values())

    def follow_once(self, timeout_ms: int = 0) -> None:
        """Read and fold what the topic holds now (up to ``poll_s`` of it).

        A new view is swapped in whenever the offset moved, so that its version says how far the
        replica has read even when the deltas were duplicates."""
        sync = self.group.sync
        start = sync.fold.offset
        until = time.monotonic() + self.poll_s
        while time.monotonic() < until:
            records = self.updates.read(timeout_ms=timeout_ms, max_records=256)
            timeout_ms = 0
            if not records:
                break
            for offset, value in records:
                outcome, delta = sync.receive_message(offset, value)
                if outcome == UNREADABLE:
                    log.error(
                        "updates topic %s offset %d is not a delta (%s): skipped", self.topic, offset, delta
                    )
        if sync.fold.offset != start:
            self._swap()

    def _swap(self) -> None:
        from pipeline.serving.view import ModelVersion, ModelView

        version = ModelVersion(
            config_hash=self.config_hash,
            events_applied=self.events_applied,
            snapshot_seq=self.seq,
            built_at_ms=int(time.time() * 1000),
            origin="updates",
            updates_offset=self.offset,
        )
        runner = self.group.runner
        view = ModelView.from_state(
            runner.learners, runner.featurizer.spec, runner.state(), version, self.seed, self.calibration
        )
        self.holder.swap(view)

    def start(self) -> UpdatesFollower:
        self._thread = threading.Thread(target=self._run, name="updates-follower", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.group is None:
                    self.refresh()
                    self._stop.wait(self.poll_s)
                    continue
                self.follow_once(timeout_ms=int(min(self.poll_s, 0.5) * 1000))
            except Exception as exc:  # the broker away, say: keep serving the model it has
                self.announce(f"following {self.topic}: {exc!r}")
                self._stop.wait(self.poll_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.updates is not None:
            self.updates.close()
