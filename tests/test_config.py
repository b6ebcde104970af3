"""Configuration: one validated object; errors name the key."""

from __future__ import annotations

import pytest

from pipeline.config import config_hash, load_config
from pipeline.errors import ConfigError


def test_defaults_are_valid():
    cfg = load_config(environ={})
    assert cfg.learners[0].kind == "ftrl" and cfg.source.batch_size > 0


def test_file_then_environment_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[source]\nbatch_size = 100\nmax_wait_ms = 5\n[kafka]\ntopics = ["a"]\n')
    cfg = load_config(
        path,
        overrides={"source": {"max_wait_ms": 7}},
        environ={"STREAMLEARN_SOURCE__BATCH_SIZE": "300", "STREAMLEARN_KAFKA__TOPICS": '["x", "y"]'},
    )
    assert cfg.source.batch_size == 300 and cfg.source.max_wait_ms == 7 and cfg.kafka.topics == ("x", "y")


def test_learner_tables_with_params():
    cfg = load_config(
        overrides={"learners": [{"kind": "ftrl", "name": "fast", "params": {"alpha": 0.2}}, "ftrl"]},
        environ={},
    )
    assert [s.label for s in cfg.learners] == ["fast", "ftrl"] and cfg.learners[0].params == {"alpha": 0.2}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"source": {"batch_size": 0}}, "'source.batch_size'"),
        (
            {"source": {"batch_size": "big"}},
            "invalid value 'big' for 'source.batch_size': expected an integer",
        ),
        ({"source": {"format": "xml"}}, "one of auto, jsonl, parquet, csv"),
        ({"snapshot": {"keep": 0}}, "'snapshot.keep'"),
        ({"snapshots": {}}, "unknown key 'snapshots' (did you mean 'snapshot'?)"),
        ({"learners": []}, "'learners'"),
        ({"learners": ["ftrl", "ftrl"]}, "learner names must be unique; repeated: ftrl"),
        ({"learners": [{"kind": "ftrl", "parms": {}}]}, "unknown key 'learners[0].parms'"),
        ({"events": {"dedup_window": -1}}, "'events.dedup_window'"),
        ({"metrics": {"port": 70000}}, "'metrics.port'"),
        ({"features": {"crosses": [["a"]]}}, "'features.crosses[0]'"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=overrides, environ={})
    assert message in str(err.value)


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[source\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, environ={})
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "none.toml", environ={})


def test_config_hash_ignores_operational_settings():
    a = load_config(environ={})
    b = load_config(overrides={"source": {"batch_size": 7}, "metrics": {"port": 9}}, environ={})
    c = load_config(overrides={"learners": ["ftrl", "river:linear_model.LogisticRegression"]}, environ={})
    assert config_hash(a) == config_hash(b) != config_hash(c)
