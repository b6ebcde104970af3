"""The pytest fixture of a real Prometheus server (import it into tests/conftest.py).

``prometheus_server`` is session-scoped: one process for the whole run, evaluating the alert rules of
``dashboards/prometheus/rules`` every second and scraping whatever a test passes to
``set_targets``. Tests that use it are integration tests (mark them ``prometheus``). When the binary
is missing the fixture *fails* with the install hint: it never skips silently.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.prometheus.server import INSTALL_HINT, PrometheusServer, find_binary

__all__ = ["RULE_FILES", "prometheus_server"]

ROOT = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((ROOT / "dashboards" / "prometheus" / "rules").glob("*.yml"))


@pytest.fixture(scope="session")
def prometheus_server() -> Iterator[PrometheusServer]:
    """A running Prometheus on loopback (``.url``, ``.query(expr)``, ``.set_targets([...])``)."""
    if find_binary() is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    server = PrometheusServer(rule_files=RULE_FILES)
    try:
        server.start()
        yield server
    finally:
        server.close()
