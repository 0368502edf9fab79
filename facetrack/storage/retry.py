"""The time budget for remote storage calls: transient failures are retried until it is spent.

The client libraries retry each request a few times on their own (botocore's standard mode for S3); what
they lack is a deadline across requests, so that an outage of a minute or two is outlasted and a dead
endpoint still ends in a clear error. ``FACETRACK_STORAGE_RETRY_SECONDS`` (default 120) sets that
budget and ``FACETRACK_STORAGE_RETRIES`` (default 30) the most retries within it.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from facetrack.storage.errors import StorageError, TransientStorageError, describe, is_transient, translate

T = TypeVar("T")
log = logging.getLogger("facetrack.storage")

RETRY_SECONDS_ENV = "FACETRACK_STORAGE_RETRY_SECONDS"
RETRIES_ENV = "FACETRACK_STORAGE_RETRIES"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: at most ``retries`` retries, none starting after ``max_seconds``."""

    retries: int = 30
    max_seconds: float = 120.0
    base_delay: float = 0.25
    max_delay: float = 10.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The policy from ``FACETRACK_STORAGE_RETRIES`` and ``FACETRACK_STORAGE_RETRY_SECONDS``."""
        values: dict[str, Any] = {}
        for var, name, kind in ((RETRIES_ENV, "retries", int), (RETRY_SECONDS_ENV, "max_seconds", float)):
            raw = os.environ.get(var)
            if raw is None or raw == "":
                continue
            try:
                values[name] = kind(raw)
            except ValueError:
                raise StorageError(f"{var}={raw!r}: expected a {kind.__name__}") from None
            if values[name] < 0:
                raise StorageError(f"{var}={raw!r}: must not be negative")
        return cls(**values)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


class Backoff:
    """Retry bookkeeping for one operation: decides, logs and sleeps, or raises the storage error."""

    def __init__(self, op: str, uri: str, bucket: str | None = None) -> None:
        self.op, self.uri, self.bucket = op, uri, bucket
        self.policy = RetryPolicy.from_env()
        self.start = time.monotonic()
        self.attempt = 0

    def wait_or_raise(self, exc: BaseException) -> None:
        """Sleep before the next try when ``exc`` is transient and budget remains; raise otherwise."""
        if not is_transient(exc):
            raise translate(exc, self.uri, self.op, self.bucket) from exc
        self.attempt += 1
        delay = self.policy.delay(self.attempt)
        elapsed = time.monotonic() - self.start
        if self.attempt > self.policy.retries or elapsed + delay > self.policy.max_seconds:
            raise TransientStorageError(
                f"{self.uri}: {self.op} failed after {self.attempt} attempts in {elapsed:.1f} s "
                f"({RETRIES_ENV} / {RETRY_SECONDS_ENV}): {describe(exc)}"
            ) from exc
        log.warning("%s %s: %s; retry %d in %.1f s", self.op, self.uri, describe(exc), self.attempt, delay)
        time.sleep(delay)


def call(op: str, uri: str, fn: Callable[[], T], bucket: str | None = None) -> T:
    """Run ``fn`` within the retry budget; what it raises comes out as a storage error naming ``uri``."""
    backoff = Backoff(op, uri, bucket)
    while True:
        try:
            return fn()
        except Exception as exc:  # classified by wait_or_raise: retried or translated
            backoff.wait_or_raise(exc)
