"""Broker reachability measured on a thread of its own, for readiness that never waits on the consume loop.

The worker's loop can be blocked for seconds in a commit, a dead-letter retry or a rebalance; a
``/readyz`` computed only there would lag the broker's loss or return by as much. :class:`BrokerProbe`
asks the cluster for its metadata (Kafka's ``DescribeCluster`` through kafka-python's admin client)
every ``interval_s`` with a timeout of ``timeout_s`` and calls ``on_change`` when the answer flips, so
readiness follows the broker within ``interval_s + timeout_s``.

Examples
--------
>>> probe = BrokerProbe("127.0.0.1:1", interval_s=0.1, timeout_s=0.2)
>>> probe.reachable is None   # not asked yet
True
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from kafka import KafkaAdminClient

from consumers.kafka.dead_letter import ADMIN_KEYS

__all__ = ["BrokerProbe"]

log = logging.getLogger(__name__)


class BrokerProbe:
    """Whether some broker of the cluster answers, refreshed every ``interval_s`` on a daemon thread.

    Parameters
    ----------
    bootstrap_servers
        ``"host:port"`` or a list of them.
    client_kwargs
        Client settings; the security ones (:data:`~consumers.kafka.dead_letter.ADMIN_KEYS`) are used.
    interval_s, timeout_s
        Time between two questions, and how long one may take before it counts as "no answer".
    on_change
        Called with the new answer (on the probe's thread) whenever it differs from the last one.
    """

    def __init__(
        self,
        bootstrap_servers: str | list[str],
        client_kwargs: Mapping[str, object] | None = None,
        *,
        interval_s: float = 0.5,
        timeout_s: float = 1.0,
        on_change: Callable[[bool], None] | None = None,
    ):
        self.bootstrap_servers = bootstrap_servers
        self.security = {
            k: v for k, v in (client_kwargs or {}).items() if k in ADMIN_KEYS and k != "client_id"
        }
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.on_change = on_change
        self.reachable: bool | None = None
        self.last_error: str | None = None
        self._admin: KafkaAdminClient | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> BrokerProbe:
        """Start asking (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="broker-probe", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop asking and close the admin client."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + self.interval_s + 5)
            self._thread = None
        self._discard()

    def ask(self) -> bool:
        """One question to the cluster now; True when a broker answered within the timeout."""
        ms = max(1, int(self.timeout_s * 1000))
        try:
            if self._admin is None:
                self._admin = KafkaAdminClient(
                    bootstrap_servers=self.bootstrap_servers,
                    client_id="streamlearn-probe",
                    bootstrap_timeout_ms=ms,
                    request_timeout_ms=ms,
                    # reconnect at once when the broker is back, not after a grown backoff
                    reconnect_backoff_max_ms=max(50, int(self.interval_s * 1000)),
                    **self.security,
                )
            self._admin.describe_cluster()
        except Exception as exc:  # any failure of the client means "no answer"; the next ask starts afresh
            self.last_error = repr(exc)
            self._discard()
            return False
        self.last_error = None
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            answer = self.ask()
            if answer != self.reachable:
                self.reachable = answer
                log.info("broker %s", "reachable" if answer else f"unreachable: {self.last_error}")
                if self.on_change is not None:
                    try:
                        self.on_change(answer)
                    except Exception:  # a failing callback must not end the probe
                        log.exception("broker probe callback failed")
            self._stop.wait(self.interval_s)

    def _discard(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                admin.close()
            except Exception as exc:  # already broken
                log.debug("closing the probe's admin client: %r", exc)

    def __repr__(self) -> str:
        return f"BrokerProbe({self.bootstrap_servers!r}, reachable={self.reachable})"
