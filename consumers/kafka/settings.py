"""kafka-python client settings from the configuration's ``[kafka.client]`` table.

One table serves the consumer, the dead-letter producer and ``streamlearn produce``: each client
gets the keys it knows (security settings — ``security_protocol``, ``sasl_mechanism``,
``sasl_plain_username``, ``sasl_plain_password``, ``ssl_cafile``, ``ssl_certfile``, … — are known to
all of them and pass through unchanged). A key that no client knows is a configuration error.

Examples
--------
>>> client = {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "session_timeout_ms": 6000}
>>> sorted(consumer_settings(client)), sorted(producer_settings(client))
(['sasl_mechanism', 'security_protocol', 'session_timeout_ms'], ['sasl_mechanism', 'security_protocol'])
>>> consumer_settings({"sesion_timeout_ms": 1})
Traceback (most recent call last):
...
pipeline.errors.ConfigError: unknown key 'kafka.client.sesion_timeout_ms' (did you mean 'session_timeout_ms'?): not a kafka-python consumer or producer setting
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from pipeline.errors import ConfigError

__all__ = ["consumer_settings", "producer_settings"]

#: settings the worker owns; the configuration may not override them
_RESERVED = {"enable_auto_commit", "group_id", "bootstrap_servers", "value_serializer", "key_serializer"}


def _check(client: Mapping[str, Any]) -> None:
    known = set(KafkaConsumer.DEFAULT_CONFIG) | set(KafkaProducer.DEFAULT_CONFIG)
    for key in client:
        if key in _RESERVED:
            raise ConfigError(
                f"'kafka.client.{key}' is set by streamlearn (use kafka.bootstrap_servers / kafka.group_id)"
            )
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown key 'kafka.client.{key}'{hint}: not a kafka-python consumer or producer setting"
            )


def consumer_settings(client: Mapping[str, Any]) -> dict[str, Any]:
    """The ``KafkaConsumer`` settings among ``client``."""
    _check(client)
    return {k: v for k, v in client.items() if k in KafkaConsumer.DEFAULT_CONFIG}


def producer_settings(client: Mapping[str, Any]) -> dict[str, Any]:
    """The ``KafkaProducer`` settings among ``client``."""
    _check(client)
    return {k: v for k, v in client.items() if k in KafkaProducer.DEFAULT_CONFIG}
