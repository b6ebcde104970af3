"""The Kafka package's errors, and the kafka-python errors that mean "the broker is away".

:data:`UNAVAILABLE_ERRORS` are retried with backoff and never fatal on their own;
:data:`BROKER_ERRORS` is everything a broker call may raise that the worker treats as "broker
trouble" (retry, report not ready) rather than a bug. Backoff and bounded retries come from
:mod:`consumers.backoff`; :func:`retry_call` is its broker flavour.

>>> issubclass(KafkaUnavailableError, BROKER_ERRORS)
True
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kafka import errors as kafka_errors

from consumers.backoff import Backoff
from consumers.backoff import retry_call as _retry_call
from pipeline.errors import StreamlearnError

__all__ = ["BROKER_ERRORS", "UNAVAILABLE_ERRORS", "KafkaSourceError", "KafkaUnavailableError", "retry_call"]

#: Errors meaning "the broker is away (for now)": retried with backoff, never fatal on their own.
#: kafka-python 2.x raises NoBrokersAvailable where 3.x raises KafkaTimeoutError; retriable errors cover the rest.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = tuple(
    getattr(kafka_errors, name)
    for name in ("NoBrokersAvailable", "KafkaTimeoutError", "KafkaConnectionError", "RetriableError")
    if hasattr(kafka_errors, name)
)


class KafkaSourceError(StreamlearnError):
    """The Kafka source cannot go on; the message names the topic, partition or setting."""


class KafkaUnavailableError(KafkaSourceError):
    """The brokers did not answer within the bounded retries."""


#: Any error of a broker call that means broker trouble (retried by the worker), not a bug.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.KafkaError,
    KafkaSourceError,
    OSError,
    *UNAVAILABLE_ERRORS,
)


def retry_call(
    fn: Callable[[], object],
    *,
    attempts: int,
    backoff: Backoff | None = None,
    retry_on: tuple[type[BaseException], ...] = UNAVAILABLE_ERRORS,
    sleep: Callable[[float], None] = time.sleep,
    what: str = "call",
):
    """:func:`consumers.backoff.retry_call` for broker calls: raises :class:`KafkaUnavailableError`."""
    return _retry_call(
        fn,
        attempts=attempts,
        backoff=backoff,
        retry_on=retry_on,
        sleep=sleep,
        what=what,
        error=KafkaUnavailableError,
    )
