"""Exceptions of streamlearn: one root, so callers can catch everything we raise on purpose."""

from __future__ import annotations

__all__ = ["ConfigError", "SnapshotError", "StreamlearnError"]


class StreamlearnError(Exception):
    """Root of every error that streamlearn raises deliberately."""


class ConfigError(StreamlearnError, ValueError):
    """A configuration value or command-line argument is invalid; the message names the key."""


class SnapshotError(StreamlearnError):
    """A snapshot cannot be written, read or verified; the message names the file."""
