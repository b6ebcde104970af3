"""File replay: formats, globs, batching, positions and resumption."""

from __future__ import annotations

import gzip

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from consumers.file_source import FileSource, expand_paths
from pipeline.errors import ConfigError
from pipeline.events import EventRules, decode_arrow, decode_json


def _events(n, start=0):
    return [
        {
            "event_id": f"e{i}",
            "ts": 1_700_000_000_000 + i,
            "user_id": f"u{i % 7}",
            "item_id": f"i{i % 5}",
            "label": i % 2,
            "features": {"device": "ios" if i % 3 else "web", "price": float(i)},
        }
        for i in range(start, start + n)
    ]


def _ids(source):
    out = []
    for raw in source:
        if raw.arrow is not None:
            batch, dead = decode_arrow(raw.arrow, EventRules())
        else:
            batch, dead = decode_json(raw.values, EventRules())
        assert not dead
        out.extend(batch.strings("event_id"))
    return out


@pytest.fixture
def files(tmp_path):
    ev = _events(25)
    (tmp_path / "a.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in ev[:10]))
    with gzip.open(tmp_path / "b.jsonl.gz", "wb") as fh:
        fh.write(b"".join(orjson.dumps(e) + b"\n" for e in ev[10:17]))
    pq.write_table(pa.Table.from_pylist(ev[17:25]), tmp_path / "c.parquet", row_group_size=3)
    return tmp_path


def test_directory_replays_every_format_in_order(files):
    src = FileSource([str(files)], batch_size=4)
    assert _ids(src) == [f"e{i}" for i in range(25)]
    assert src.positions() == {
        str(files / "a.jsonl"): 10,
        str(files / "b.jsonl.gz"): 7,
        str(files / "c.parquet"): 8,
    }


def test_batches_have_exact_size_across_parquet_row_groups(files):
    sizes = [len(b) for b in FileSource([str(files / "c.parquet")], batch_size=4)]
    assert sizes == [4, 4]


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_seek_resumes_each_file_at_its_position(files, batch_size):
    src = FileSource([str(files)], batch_size=batch_size)
    src.seek({str(files / "a.jsonl"): 10, str(files / "b.jsonl.gz"): 3, str(files / "c.parquet"): 5})
    assert _ids(src) == [f"e{i}" for i in [13, 14, 15, 16, 22, 23, 24]]


def test_start_at_skips_records_across_files(files):
    assert _ids(FileSource([str(files)], batch_size=4, start_at=12)) == [f"e{i}" for i in range(12, 25)]


def test_glob_pattern_and_csv(tmp_path):
    ev = _events(6)
    rows = [{k: v for k, v in e.items() if k != "features"} | {"device": e["features"]["device"]} for e in ev]
    pacsv.write_csv(pa.Table.from_pylist(rows), tmp_path / "x.csv")
    src = FileSource([str(tmp_path / "*.csv")], batch_size=4)
    batches = list(src)
    assert [len(b) for b in batches] == [4, 2]
    events, dead = decode_arrow(batches[0].arrow, EventRules())
    assert not dead and events.table.to_pylist()[0]["cat_features"] == [("device", "web")]


def test_blank_lines_are_skipped_and_counted_and_a_truncated_last_line_reaches_the_decoder(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(orjson.dumps(_events(1)[0]) + b"\n\n  \r\n" + b'{"event_id": "e9", "ts"')
    src = FileSource([str(path)], batch_size=10)
    raw = next(iter(src))
    _, dead = decode_json(raw.values, EventRules())
    assert len(raw) == 2 and src.blank_lines == 2
    assert [(d.index, d.reason) for d in dead] == [(1, "malformed_json")]
    assert raw.origin(1) == {"file": str(path), "line": 4}  # line numbers count the blank lines
    assert raw.positions == {str(path): 4}


@pytest.mark.parametrize(
    ("paths", "message"),
    [(["/nonexistent/file.jsonl"], "input file not found"), (["/nonexistent/*.jsonl"], "no files match")],
)
def test_missing_inputs_give_clear_errors(paths, message):
    with pytest.raises(ConfigError, match=message):
        expand_paths(paths)


def test_unknown_suffix_is_a_config_error(tmp_path):
    (tmp_path / "x.txt").write_text("{}")
    with pytest.raises(ConfigError, match="cannot tell the format"):
        FileSource([str(tmp_path / "x.txt")])


def test_blank_lines_keep_positions_so_a_resume_starts_at_the_right_line(tmp_path):
    path = tmp_path / "b.jsonl"
    lines = [orjson.dumps(e) for e in _events(6)]
    path.write_bytes(
        b"\n".join([lines[0], b"", lines[1], lines[2], b"", b"", lines[3], lines[4], lines[5]]) + b"\n"
    )
    straight = [v for b in FileSource([str(path)], batch_size=3) for v in b.values]
    assert straight == lines
    first = FileSource([str(path)], batch_size=3)
    it = iter(first)
    head = next(it).values
    resumed = FileSource([str(path)], batch_size=3)
    resumed.seek(first.positions())
    assert head + [v for b in resumed for v in b.values] == lines


def test_a_json_array_file_gets_a_hint_instead_of_one_oversized_record(tmp_path):
    from pipeline.errors import ConfigError

    for text in (
        '[\n  {"event_id": "e1"},\n  {"event_id": "e2"}\n]\n',
        '[{"event_id": "e1"}, {"event_id": "e2"}]',
    ):
        path = tmp_path / "array.json"
        path.write_text(text)
        with pytest.raises(
            ConfigError, match=r"holds a JSON array; streamlearn reads JSON Lines.*jq -c '\.\[\]'"
        ):
            list(FileSource([str(path)]))
    path.write_text('[1, 2]\n{"x": 1}\n')  # a bad first record is a dead letter, not a file error
    assert [len(b) for b in FileSource([str(path)])] == [2]


def test_a_truncated_gzip_file_yields_the_whole_lines_then_names_the_file_and_the_last_good_line(tmp_path):
    import gzip

    from pipeline.errors import InputError

    lines = [orjson.dumps(e) for e in _events(500)]
    whole = gzip.compress(b"\n".join(lines) + b"\n")
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) * 2 // 3])
    got: list[bytes] = []
    with pytest.raises(
        InputError, match=r"cut\.jsonl\.gz: the compressed file is truncated or corrupt after line (\d[\d,]*)"
    ) as info:
        for b in FileSource([str(path)], batch_size=100):
            got.extend(b.values)
    assert 0 < len(got) < 500 and got == lines[: len(got)]  # whole lines only, in order
    assert f"after line {len(got):,}" in str(info.value)
