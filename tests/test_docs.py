"""Docs stay true to the code: every configuration key is documented, every README command exists."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

from consumers.cli import build_parser
from pipeline.config import Config

ROOT = Path(__file__).resolve().parent.parent


def _keys(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _keys(tp, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name


def test_every_config_key_is_documented():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    sections: dict[str, str] = {}
    current = ""
    for line in doc.splitlines():
        m = re.match(r"^\[(\w+)\]", line)
        if m:
            current = m.group(1)
        elif re.match(r"^#? ?\w+ = ", line):
            sections.setdefault(current, "")
            sections[current] += line + "\n"
    missing = []
    for key in _keys(Config):
        section, _, name = key.rpartition(".")
        if not re.search(rf"^#? ?{name} = ", sections.get(section, ""), re.M):
            missing.append(key)
    assert not missing, f"undocumented configuration keys: {missing}"


def test_readme_commands_exist():
    readme = (ROOT / "README.md").read_text()
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    used = set(re.findall(r"streamlearn (\w+)", readme)) - {"COMMAND", "reads"}
    assert used <= commands, f"README mentions unknown commands: {used - commands}"
