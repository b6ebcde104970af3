"""Exceptions of streamlearn: one root, so callers can catch everything we raise on purpose."""

from __future__ import annotations

from typing import Any

__all__ = ["ConfigError", "InputError", "SnapshotError", "StreamlearnError", "require"]


class StreamlearnError(Exception):
    """Root of every error that streamlearn raises deliberately."""


class ConfigError(StreamlearnError, ValueError):
    """A configuration value or command-line argument is invalid; the message names the key."""


class InputError(StreamlearnError):
    """An input file cannot be read on (truncated or corrupt); the message names the file and the
    last record read whole."""


class SnapshotError(StreamlearnError):
    """A snapshot cannot be written, read or verified; the message names the file."""


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise the one configuration-error message every setting uses: the key, the value, what is allowed."""
    if not ok:
        raise ConfigError(f"invalid value {value!r} for '{key}': expected {allowed}")
