"""Build learners from their configured kind: ``ftrl``, ``river:<estimator>``, and the kinds that
other modules register (``neural``, ``error_memory``, bandit policies)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.errors import ConfigError
from pipeline.learners.base import Learner
from pipeline.learners.checks import keywords

__all__ = ["build_learner", "known_kinds", "register"]

_FACTORIES: dict[str, Callable[..., Learner]] = {}


def register(kind: str, factory: Callable[..., Learner]) -> None:
    """Make ``kind`` buildable; ``factory(name=..., **params)`` returns a learner."""
    _FACTORIES[kind] = factory


# Optional learner packages register their kinds through a module-level register_learners(register)
# hook. They are imported only when one of their kinds is asked for: torch alone takes seconds.
_OPTIONAL_MODULES = (
    "pipeline.learners.bandits",
    "pipeline.learners.error_memory",
    "pipeline.learners.neural",
)
_loaded: set[str] = set()


def _load(module: str) -> None:
    if module in _loaded:
        return
    _loaded.add(module)
    try:
        mod = __import__(module, fromlist=["register_learners"])
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return
    hook = getattr(mod, "register_learners", None)
    if hook is not None:
        hook(register)


def _load_builtin() -> None:
    if "ftrl" not in _FACTORIES:
        from pipeline.learners.ftrl import FTRL

        register("ftrl", FTRL)


def _find(kind: str) -> None:
    _load_builtin()
    for module in _OPTIONAL_MODULES:
        if kind in _FACTORIES:
            return
        _load(module)


def known_kinds() -> list[str]:
    _load_builtin()
    for module in _OPTIONAL_MODULES:
        _load(module)
    return [*sorted(_FACTORIES), "river:<estimator>"]


def build_learner(kind: str, name: str = "", params: dict[str, Any] | None = None) -> Learner:
    """Instantiate a learner; configuration errors name the learner and the bad parameter."""
    params = dict(params or {})
    label = name or kind
    try:
        if kind.startswith("river:"):
            from pipeline.learners.river_adapter import RiverLearner

            return RiverLearner(kind.split(":", 1)[1], params=params, name=label)
        _find(kind)
        if kind not in _FACTORIES:
            raise ConfigError(f"unknown learner kind {kind!r}; known: {', '.join(known_kinds())}")
        factory = _FACTORIES[kind]
        return factory(name=label, **keywords(factory, params))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"learner {label!r}: {exc}") from exc
