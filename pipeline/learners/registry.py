"""Build learners from their configured kind: ``ftrl``, ``river:<estimator>``, and the kinds that
other modules register (``neural``, ``error_memory``, bandit policies)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.errors import ConfigError
from pipeline.learners.base import Learner

__all__ = ["build_learner", "known_kinds", "register"]

_FACTORIES: dict[str, Callable[..., Learner]] = {}


def register(kind: str, factory: Callable[..., Learner]) -> None:
    """Make ``kind`` buildable; ``factory(name=..., **params)`` returns a learner."""
    _FACTORIES[kind] = factory


def known_kinds() -> list[str]:
    _load_builtin()
    return [*sorted(_FACTORIES), "river:<estimator>"]


def _load_builtin() -> None:
    if _FACTORIES:
        return
    from pipeline.learners.ftrl import FTRL

    register("ftrl", FTRL)
    # Optional learners register themselves when their modules exist.
    for module in (
        "pipeline.learners.neural",
        "pipeline.learners.error_memory",
        "pipeline.learners.bandits",
    ):
        try:
            mod = __import__(module, fromlist=["register_learners"])
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        hook = getattr(mod, "register_learners", None)
        if hook is not None:
            hook(register)


def build_learner(kind: str, name: str = "", params: dict[str, Any] | None = None) -> Learner:
    """Instantiate a learner; configuration errors name the learner and the bad parameter."""
    _load_builtin()
    params = dict(params or {})
    label = name or kind
    try:
        if kind.startswith("river:"):
            from pipeline.learners.river_adapter import RiverLearner

            return RiverLearner(kind.split(":", 1)[1], params=params, name=label)
        if kind not in _FACTORIES:
            raise ConfigError(f"unknown learner kind {kind!r}; known: {', '.join(known_kinds())}")
        return _FACTORIES[kind](name=label, **params)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"learner {label!r}: {exc}") from exc
