"""The worker's Kafka clients built from the configuration: the group consumer and the dead-letter sink.

Security settings in ``[kafka.client]`` reach the consumer and the dead-letter producer alike
(:mod:`consumers.kafka.settings`); the consumer's ``auto_offset_reset`` there decides where a
partition with neither a snapshot position nor a committed offset starts (default earliest).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kafka import KafkaConsumer, KafkaProducer

from consumers.backoff import Backoff
from consumers.kafka.dead_letter import KafkaDeadLetterSink
from consumers.kafka.decisions import KafkaDecisionLog
from consumers.kafka.producer import ensure_topic
from consumers.kafka.settings import consumer_settings, producer_settings
from consumers.kafka.source import KafkaSource, PartitionsCallback
from pipeline.config import Config

if TYPE_CHECKING:  # consumers.worker imports this package: no import cycle at run time
    from consumers.worker.options import WorkerOptions

__all__ = ["decision_topic", "make_dead_letter_sink", "make_decision_log", "make_source"]


def make_source(
    config: Config,
    on_assign: PartitionsCallback,
    on_revoke: PartitionsCallback,
    on_lost: PartitionsCallback,
) -> KafkaSource:
    """The group consumer; the worker retries connecting itself, so one attempt per call."""
    client = consumer_settings(config.kafka.client)
    reset = str(client.pop("auto_offset_reset", "earliest"))
    client.setdefault("reconnect_backoff_max_ms", 1000)  # back within a second of the broker's return
    if "bootstrap_timeout_ms" in KafkaConsumer.DEFAULT_CONFIG:  # kafka-python >= 3
        client.setdefault("bootstrap_timeout_ms", 5000)
    return KafkaSource(
        list(config.kafka.topics),
        config.kafka.bootstrap_servers,
        config.kafka.group_id,
        max_records=config.kafka.max_poll_records,
        poll_timeout_ms=config.kafka.poll_timeout_ms,
        on_assign=on_assign,
        on_revoke=on_revoke,
        on_lost=on_lost,
        client_kwargs=client,
        connect_attempts=1,
        auto_offset_reset=reset,
    )


def make_dead_letter_sink(config: Config, options: WorkerOptions) -> KafkaDeadLetterSink:
    """``<topic><dead_letter.topic_suffix>`` (or ``dead_letter.topic``), a few quick retries per write."""
    producer = producer_settings(config.kafka.client)
    if "bootstrap_timeout_ms" in KafkaProducer.DEFAULT_CONFIG:
        producer.setdefault("bootstrap_timeout_ms", 3000)
    return KafkaDeadLetterSink(
        config.kafka.bootstrap_servers,
        topic=config.dead_letter.topic or None,
        topic_suffix=config.dead_letter.topic_suffix,
        attempts=options.dead_letter_attempts,
        backoff=Backoff(0.2, 2.0),
        send_timeout_s=options.dead_letter_timeout_s,
        max_message_bytes=config.dead_letter.max_message_bytes,
        **producer,
    )


def decision_topic(config: Config) -> str:
    """``serving.decisions_topic``, or ``<first topic>.decisions``."""
    return config.serving.decisions_topic or f"{config.kafka.topics[0]}.decisions"


def make_decision_log(config: Config) -> KafkaDecisionLog:
    """The decision topic's producer, creating the topic (one partition) when it is missing."""
    client = producer_settings(config.kafka.client)
    topic = decision_topic(config)
    ensure_topic(config.kafka.bootstrap_servers, topic, 1, client, connect_timeout_s=5.0)
    return KafkaDecisionLog(config.kafka.bootstrap_servers, topic, client)
