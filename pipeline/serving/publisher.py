"""Hands the live model to the serving API: a new read-only view after batches, at most every ``refresh_ms``.

The last observer of the stack (:func:`consumers.stack.build_stack` with ``serving=``): after a
batch has been learned, and when ``refresh_ms`` have passed since the last view, it copies the
runner's state into a new :class:`~pipeline.serving.view.ModelView` and swaps it in. Copying costs
about as much as a snapshot's ``state()`` call (tens of ms for a neural ranker), which is why it is
rate-limited; ``refresh_ms = 0`` publishes after every batch.
"""

from __future__ import annotations

import time

from pipeline.config import Config, config_hash
from pipeline.serving.view import ModelView, ViewHolder

__all__ = ["ViewPublisher"]


class ViewPublisher:
    """Publishes ``ModelView.from_runner(runner)`` into ``holder`` (see the module docstring)."""

    def __init__(self, holder: ViewHolder, config: Config):
        self.holder = holder
        self.config_hash = config_hash(config)
        self.refresh_s = config.serving.refresh_ms / 1000
        self.seed = config.seed
        self._last = float("-inf")
        self._dirty = False  # a batch was learned since the last view
        self.snapshot_seq: int | None = None  # the newest snapshot of the model (set by the worker)
        self.published = 0

    def publish(self, runner) -> None:
        """Swap in the runner's model as it is now (call between batches)."""
        self.holder.swap(ModelView.from_runner(runner, self.config_hash, self.snapshot_seq, self.seed))
        self._last = time.monotonic()
        self._dirty = False
        self.published += 1

    def on_batch(self, runner, result) -> None:
        self._dirty = True
        self.publish_if_due(runner)

    def publish_if_due(self, runner) -> bool:
        """Publish when a batch was learned since the last view and ``refresh_ms`` have passed.

        The worker also calls it between polls, so the last batch before a quiet spell is served too.
        """
        if self._dirty and time.monotonic() - self._last >= self.refresh_s:
            self.publish(runner)
            return True
        return False
