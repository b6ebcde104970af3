"""What a changed configuration means for the state a snapshot holds.

Every snapshot records the *identity* of the configuration it was written under
(:func:`config_identity`): each learner's kind and parameters, the feature settings, the seed and
the unit of event times. Restoring under another configuration compares the two
(:func:`compare_identity`):

- a learner that is new starts cold (or warm from its own ``checkpoint`` parameter), beside the
  restored ones;
- a learner that is gone is dropped, with a note;
- a learner whose kind or parameters changed, another ``[features]`` section, another ``seed`` or
  another ``events.ts_unit`` change what the stored state means: the restore is refused, and the
  message says what changed and how to go on;
- the other ``[events]`` settings (validation limits, the dedup window, lateness) change nothing
  stored; they are taken, with a note.

Examples
--------
>>> old = {"learners": {"ftrl": {"kind": "ftrl", "params": {}}}, "features": {}, "seed": 0, "events": {}}
>>> new = {**old, "learners": {**old["learners"], "fresh": {"kind": "linucb", "params": {}}}}
>>> change = compare_identity(old, new)
>>> change.cold, change.refusals
(['fresh'], [])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.config import Config

__all__ = ["ConfigChange", "compare_identity", "config_identity"]

#: ``[events]`` keys whose change alters the meaning of stored state
_EVENT_MEANING = ("ts_unit",)


def config_identity(config: Config) -> dict[str, Any]:
    """The parts of ``config`` that stored state depends on, as JSON."""
    d = config.to_dict()
    out = {
        "learners": {s.label: {"kind": s.kind, "params": dict(s.params)} for s in config.learners},
        "features": d["features"],
        "seed": d["seed"],
        "events": d["events"],
    }
    if config.join.calibration is not None:  # what the learners' raw scores mean (FNC: b, not p)
        out["calibration"] = config.join.calibration
    return out


@dataclass
class ConfigChange:
    """The outcome of comparing a snapshot's configuration with the running one."""

    cold: list[str] = field(default_factory=list)  # learners that start without stored state
    dropped: list[str] = field(default_factory=list)  # stored learners no longer configured
    refusals: list[str] = field(default_factory=list)  # changes that make the stored state wrong
    notes: list[str] = field(default_factory=list)  # what the restore will do, for the log

    @property
    def ok(self) -> bool:
        return not self.refusals


def compare_identity(saved: dict[str, Any], current: dict[str, Any]) -> ConfigChange:
    """What restoring state written under ``saved`` means under ``current``."""
    change = ConfigChange()
    before, now = saved.get("learners", {}), current.get("learners", {})
    for name, spec in now.items():
        old = before.get(name)
        if old is None:
            change.cold.append(name)
            change.notes.append(f"learner {name!r} is new: it starts without stored state")
        elif old["kind"] != spec["kind"]:
            change.refusals.append(
                f"learner {name!r} was a {old['kind']!r} and is now a {spec['kind']!r}; give the new one "
                f"another name to run it beside the stored one"
            )
        elif old["params"] != spec["params"]:
            change.refusals.append(
                f"learner {name!r} has other parameters ({_diff(old['params'], spec['params'])}); its state "
                f"was learned with the old ones: keep them, or give the changed learner another name to "
                f"start it beside the stored one"
            )
    for name in before:
        if name not in now:
            change.dropped.append(name)
            change.notes.append(f"learner {name!r} is no longer configured: its stored state is dropped")
    for section in ("features", "seed"):
        if saved.get(section) != current.get(section):
            what = _diff(saved.get(section), current.get(section))
            change.refusals.append(
                f"[{section}] changed ({what})" if section == "features" else f"seed changed ({what})"
            )
    if saved.get("calibration") != current.get("calibration"):
        change.notes.append(
            f"join.correction changed (score calibration {saved.get('calibration')!r} -> "
            f"{current.get('calibration')!r}): the stored models learned the other way and adapt online"
        )
    old_events, new_events = saved.get("events", {}), current.get("events", {})
    for key in sorted(set(old_events) | set(new_events)):
        if old_events.get(key) == new_events.get(key):
            continue
        what = f"events.{key}: {old_events.get(key)!r} -> {new_events.get(key)!r}"
        if key in _EVENT_MEANING:
            change.refusals.append(f"{what} changes what the stored times mean")
        else:
            change.notes.append(f"{what} (taken; it changes nothing stored)")
    return change


def _diff(old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        parts = [
            f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
            for k in keys
            if old.get(k) != new.get(k)
        ]
        return ", ".join(parts)
    return f"{old!r} -> {new!r}"
