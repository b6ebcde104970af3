"""Everything that speaks kafka-python; nothing outside this package imports ``kafka``.

Modules: :mod:`~consumers.kafka.source` (:class:`KafkaSource`, the worker's
:class:`~consumers.sources.PartitionedSource`), :mod:`~consumers.kafka.rebalance` (its rebalance
listener), :mod:`~consumers.kafka.internals` (the reads of kafka-python's private state), :mod:`~consumers.kafka.records` (partition keys, records as columns),
:mod:`~consumers.kafka.dead_letter` (the dead-letter topic), :mod:`~consumers.kafka.producer`
(``streamlearn produce``, ``simulate --to-kafka``), :mod:`~consumers.kafka.settings` (the
``[kafka.client]`` table per client), :mod:`~consumers.kafka.wiring` (the worker's clients from the
configuration), :mod:`~consumers.kafka.decisions` (the decision topic), :mod:`~consumers.kafka.probe` (:class:`BrokerProbe`, readiness off the consume loop)
and :mod:`~consumers.kafka.errors` (:data:`BROKER_ERRORS`, :data:`UNAVAILABLE_ERRORS`).
"""

from consumers.kafka.dead_letter import ADMIN_KEYS, DeadLetterError, KafkaDeadLetterSink, dead_letter_headers
from consumers.kafka.decisions import KafkaDecisionLog
from consumers.kafka.errors import (
    BROKER_ERRORS,
    UNAVAILABLE_ERRORS,
    KafkaSourceError,
    KafkaUnavailableError,
    retry_call,
)
from consumers.kafka.probe import BrokerProbe
from consumers.kafka.producer import KafkaProduceError, KafkaWriter, ensure_topic
from consumers.kafka.records import parse_key, partition_key, records_from_consumer
from consumers.kafka.settings import consumer_settings, producer_settings
from consumers.kafka.source import KafkaSource, PartitionsCallback
from consumers.kafka.wiring import decision_topic, make_dead_letter_sink, make_decision_log, make_source

__all__ = [
    "ADMIN_KEYS",
    "BROKER_ERRORS",
    "UNAVAILABLE_ERRORS",
    "BrokerProbe",
    "DeadLetterError",
    "KafkaDeadLetterSink",
    "KafkaDecisionLog",
    "KafkaProduceError",
    "KafkaSource",
    "KafkaSourceError",
    "KafkaUnavailableError",
    "KafkaWriter",
    "PartitionsCallback",
    "consumer_settings",
    "dead_letter_headers",
    "decision_topic",
    "ensure_topic",
    "make_dead_letter_sink",
    "make_decision_log",
    "make_source",
    "parse_key",
    "partition_key",
    "producer_settings",
    "records_from_consumer",
    "retry_call",
]
