"""``streamlearn serve``: a serving replica that follows a state directory's snapshots.

Example::

    streamlearn serve --state-dir state/ --port 8080 --decisions decisions.jsonl

Loads the newest valid snapshot, answers ``/v1/score``, ``/v1/decide`` and ``/v1/models``
(:mod:`consumers.serving`) and swaps in each newer snapshot the writer commits (checked every
``--poll`` seconds), without a failed or mixed request: a request is answered by the view current
when it started. The learners and features come from the snapshot's recorded configuration
(``--config`` only for snapshots written before it was recorded). Replicas never write to the
state directory, so any number can follow one worker. Decisions are logged to ``--decisions``
(JSONL) or ``--decisions-topic`` (Kafka).

With ``--follow-updates`` a replica of a ``[group]`` state directory starts from its newest
snapshot and then follows the group's model-updates topic, delta by delta
(:class:`consumers.updates_follower.UpdatesFollower`), as fresh as the workers themselves::

    streamlearn serve --state-dir state/w0 --config worker.toml --follow-updates
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from consumers.commands.common import positive_float, positive_int
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.serving.view import ModelView

__all__ = ["SnapshotFollower", "register", "run", "view_from_snapshot"]


def snapshot_config(manifest: dict, fallback: Config | None) -> Config:
    """The configuration a snapshot was written under (its recorded identity), or ``fallback``."""
    from pipeline.config import load_config

    identity = manifest.get("config")
    if identity is None:
        if fallback is None:
            raise ConfigError(
                f"snapshot {manifest['seq']:08d} does not record its configuration: pass the worker's --config"
            )
        return fallback
    learners = [
        {"kind": s["kind"], "name": name, "params": s["params"]} for name, s in identity["learners"].items()
    ]
    overrides = {"learners": learners, "features": identity["features"], "seed": identity["seed"]}
    overrides["events"] = identity["events"]
    return load_config(overrides=overrides, environ={})


def snapshot_calibration(manifest: dict) -> str | None:
    """The score calibration a snapshot's learners need (``join.correction = "fnc"``), or None."""
    return (manifest.get("config") or {}).get("calibration")


def view_from_snapshot(manifest: dict, bundles: dict, fallback: Config | None = None) -> ModelView:
    """A read-only view of one snapshot's model."""
    from pipeline.features import FeatureSpec
    from pipeline.runner import Runner
    from pipeline.serving.view import ModelVersion, ModelView

    config = snapshot_config(manifest, fallback)
    templates = Runner.from_config(config).learners
    spec = FeatureSpec(config.features.crosses, config.features.standardize, config.features.exclude)
    version = ModelVersion(
        config_hash=manifest["config_hash"],
        events_applied=int(manifest["events_applied"]),
        snapshot_seq=int(manifest["seq"]),
        built_at_ms=int(time.time() * 1000),
        origin="snapshot",
    )
    return ModelView.from_state(
        templates, spec, bundles, version, config.seed, snapshot_calibration(manifest)
    )


class SnapshotFollower:
    """Swaps the newest valid snapshot of ``state_dir`` into ``holder`` whenever there is a newer one."""

    def __init__(
        self,
        state_dir: str,
        holder,
        fallback: Config | None = None,
        poll_s: float = 1.0,
        announce: Callable[[str], None] | None = None,
    ):
        from state.snapshot import SnapshotStore

        self.store = SnapshotStore(state_dir)
        self.holder, self.fallback, self.poll_s = holder, fallback, poll_s
        self.announce = announce or (lambda line: print(f"serve: {line}", file=sys.stderr))
        self.seq: int | None = None
        self._lock = threading.Lock()  # a caller's refresh and the thread's never load one snapshot twice
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Load a newer snapshot if there is one; True when the view was swapped."""
        with self._lock:
            return self._refresh()

    def _refresh(self) -> bool:
        seqs = self.store.seqs()
        if not seqs or (self.seq is not None and seqs[-1] <= self.seq):
            return False
        found = self.store.latest_valid()
        if found is None or (self.seq is not None and found[0]["seq"] <= self.seq):
            return False
        manifest, bundles = found
        self.holder.swap(view_from_snapshot(manifest, bundles, self.fallback))
        self.seq = int(manifest["seq"])
        self.announce(f"snapshot {self.seq:08d} ({manifest['events_applied']:,} events) loaded")
        return True

    def start(self) -> SnapshotFollower:
        self._thread = threading.Thread(target=self._run, name="snapshot-follower", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
            except Exception as exc:  # a snapshot the replica cannot use: keep serving the one it has
                self.announce(f"newer snapshot not loaded: {exc}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve scores and decisions from a state directory's newest snapshot (a replica)",
        description="Answer /v1/score, /v1/decide and /v1/models from the newest snapshot of a state "
        "directory, swapping in each newer one.",
    )
    p.add_argument(
        "--state-dir", required=True, metavar="DIR", help="the state directory a worker or replay writes"
    )
    p.add_argument(
        "--config", metavar="FILE", help="TOML configuration ([serving]; learners only for old snapshots)"
    )
    p.add_argument(
        "--address", metavar="HOST", help="listen address (default: config serving.address, loopback)"
    )
    p.add_argument(
        "--port",
        type=positive_int,
        metavar="PORT",
        help="listen port (default: config serving.port or 8080; 0 picks one)",
    )
    p.add_argument(
        "--poll",
        type=positive_float,
        default=1.0,
        metavar="SECONDS",
        help="how often to look for a newer snapshot (default 1)",
    )
    p.add_argument(
        "--decisions", metavar="FILE", help="append every decision's exposure records to this JSONL file"
    )
    p.add_argument(
        "--decisions-topic",
        metavar="TOPIC",
        help="produce every decision's exposure records to this Kafka topic",
    )
    p.add_argument(
        "--follow-updates",
        action="store_true",
        help="[group] state only: after the newest snapshot, follow the group's model-updates topic "
        "(group.updates_topic, or <first topic>.updates) delta by delta",
    )
    p.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        help="Kafka for --decisions-topic and --follow-updates (default: config kafka.bootstrap_servers)",
    )
    p.add_argument(
        "--torch-threads",
        type=positive_int,
        default=1,
        metavar="N",
        help="threads of the neural ranker's forward pass (default 1: a request-sized batch is "
        "scored faster on one thread than split over several)",
    )
    p.add_argument(
        "--wait",
        type=positive_float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for a first snapshot (default: fail at once)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from consumers.serving import ServingServer
    from consumers.worker.wiring import serving_options
    from pipeline.config import load_config
    from pipeline.serving.view import ViewHolder

    # the server's loop shares the GIL with the snapshot follower: loading a snapshot must not
    # hold requests back for the default 5 ms switch interval at a time
    sys.setswitchinterval(0.0005)
    config = load_config(args.config)
    fallback = config if args.config else None
    holder = ViewHolder()
    if args.follow_updates:
        from consumers.updates_follower import UpdatesFollower

        follower = UpdatesFollower(args.state_dir, holder, config, fallback, args.poll, args.bootstrap)
    else:
        follower = SnapshotFollower(args.state_dir, holder, fallback, args.poll)
    deadline = time.monotonic() + args.wait
    while not follower.refresh():
        if time.monotonic() >= deadline:
            raise ConfigError(
                f"no valid snapshot in {args.state_dir} (run a worker or a replay with --state-dir)"
            )
        time.sleep(min(0.5, args.poll))
    if "torch" in sys.modules:  # a model that needs it is loaded (importing it otherwise costs a second)
        # measured with benchmarks/serving.py, neural, 100 candidates: 593 vs 377 requests/s for
        # one client, 1,209 vs 1,035 for 8; torch's own threads only trade the cores for tiny ops
        sys.modules["torch"].set_num_threads(args.torch_threads)
    # Out of the cyclic collector's sight from now on: the ~350k objects of the imported libraries
    # and the first model, which every full collection would otherwise walk while requests wait
    # (measured under 32 clients, neural: p99 37 vs 60 ms, 663 vs 839 µs of CPU per request). A
    # frozen object is still freed by its reference count; only cycles among the first model's
    # objects outlive its swap, once.
    gc.collect()
    gc.freeze()
    decisions = None
    path = args.decisions or config.serving.decisions_path
    topic = args.decisions_topic or config.serving.decisions_topic
    if path:
        from pipeline.serving.decisions import JsonlDecisionLog

        decisions = JsonlDecisionLog(path)
    elif topic:
        from consumers.kafka import KafkaDecisionLog, producer_settings

        bootstrap = args.bootstrap or config.kafka.bootstrap_servers
        decisions = KafkaDecisionLog(bootstrap, topic, producer_settings(config.kafka.client))
    port = args.port if args.port is not None else (config.serving.port or 8080)
    server = ServingServer(
        holder, args.address or config.serving.address, port, serving_options(config), decisions
    )
    server.start()
    follower.start()
    print(f"serve: serving on {server.url}/v1/ (score, decide, models)", file=sys.stderr)
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    started = time.monotonic()
    try:
        stop.wait()
    finally:
        follower.stop()
        server.stop()
    served = sum(s.value for m in server.requests.collect() for s in m.samples if s.name.endswith("_total"))
    if args.follow_updates:
        followed = (
            f"{holder.swaps} models swapped in from snapshot {follower.seq:08d} and the updates topic "
            f"up to offset {follower.offset:,} ({follower.events_applied:,} events)"
        )
    else:
        followed = f"{holder.swaps} snapshots loaded (last {follower.seq:08d})"
    print(
        f"serve: stopped after {time.monotonic() - started:.0f} s; {served:,.0f} requests answered, {followed}",
        file=sys.stderr,
    )
    return 0
