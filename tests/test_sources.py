"""The source contracts of :mod:`consumers.sources`: who implements them, and that they cover what the worker calls."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from consumers.file_source import FileSource
from consumers.kafka import KafkaSource
from consumers.sources import PartitionedSource, Source, split_key

WORKER = Path(__file__).resolve().parent.parent / "consumers" / "worker"


def protocol_members(proto: type) -> dict[str, inspect.Signature]:
    """The methods a protocol declares (``__iter__`` included), with their signatures."""
    return {
        name: inspect.signature(value)
        for name, value in vars(proto).items()
        if callable(value) and (not name.startswith("_") or name == "__iter__")
    }


def missing_members(cls: type, proto: type) -> list[str]:
    """Protocol methods that ``cls`` lacks or whose parameters it does not accept by name."""
    missing = []
    for name, wanted in protocol_members(proto).items():
        have = getattr(cls, name, None)
        if not callable(have):
            missing.append(name)
            continue
        params = inspect.signature(have).parameters
        if not set(wanted.parameters) <= set(params):
            missing.append(f"{name}{wanted} (has {name}{inspect.signature(have)})")
    return missing


def test_file_source_is_a_source(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"x": 1}\n')
    src = FileSource([str(tmp_path)], batch_size=1)
    assert isinstance(src, Source)
    assert not isinstance(src, PartitionedSource)
    assert missing_members(FileSource, Source) == []


def test_kafka_source_class_implements_partitioned_source():
    assert missing_members(KafkaSource, PartitionedSource) == []
    # building one connects to nothing
    assert isinstance(KafkaSource("t", "127.0.0.1:1", "g"), PartitionedSource)


def test_partitioned_source_covers_every_call_the_worker_makes():
    called = set()
    for path in WORKER.glob("*.py"):
        called |= set(re.findall(r"(?<![\w.])(?:self\.)?source\.(\w+)", path.read_text()))
    assert called, "no source calls found in consumers/worker"
    declared = set(protocol_members(PartitionedSource)) | set(PartitionedSource.__annotations__)
    undeclared = called - declared
    assert not undeclared, f"the worker calls {sorted(undeclared)} beyond PartitionedSource"


@pytest.mark.parametrize("bad", ["nocolon", ":3", "t:", "t:-1", "t:x"])
def test_split_key_malformed_raises_naming_key(bad):
    with pytest.raises(ValueError, match=f"got {bad!r}"):
        split_key(bad)
