"""Chat backend for any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, OpenAI, ...), stdlib only.

Requests are bounded by a semaphore (``max_concurrency`` in flight per backend), each with a timeout;
429 and 5xx answers, timeouts, dropped connections and malformed response bodies are retried with
exponential backoff and jitter (``Retry-After`` is honoured); other HTTP errors fail at once. The API key
is read from the environment variable named in the config, never from a file.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from evaluation.judges.base import JudgeError

log = logging.getLogger(__name__)

BASE_URL_ENV = "FACETRACK_JUDGE_BASE_URL"
OPENAI_BASE_URL_ENV = "OPENAI_BASE_URL"
"""The ``openai`` client's own variable, used when neither the setting nor ours is given."""
MODEL_ENV = "FACETRACK_JUDGE_MODEL"


@dataclass
class OpenAIJudgeConfig:
    """Where the endpoint is and how to talk to it.

    ``base_url`` (for example ``http://localhost:8000/v1``) and ``model`` fall back to the environment
    variables ``FACETRACK_JUDGE_BASE_URL`` and ``FACETRACK_JUDGE_MODEL`` when empty.
    """

    base_url: str = ""
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    max_concurrency: int = 8
    temperature: float = 0.0
    max_tokens: int = 1024
    json_mode: bool = False
    """Send ``response_format={"type": "json_object"}`` (only for servers that support it)."""


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class OpenAIChat:
    """A :class:`~evaluation.judges.llm.ChatBackend` over HTTP."""

    def __init__(self, config: OpenAIJudgeConfig | None = None) -> None:
        config = config or OpenAIJudgeConfig()
        self.config = config
        self.base_url = (
            config.base_url or os.environ.get(BASE_URL_ENV, "") or os.environ.get(OPENAI_BASE_URL_ENV, "")
        ).rstrip("/")
        self.model = config.model or os.environ.get(MODEL_ENV, "")
        if not self.base_url:
            raise ValueError(
                f"openai judge: set judge.openai.base_url, {BASE_URL_ENV} or {OPENAI_BASE_URL_ENV}"
            )
        if not self.model:
            raise ValueError(f"openai judge: set judge.openai.model or {MODEL_ENV}")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"openai judge: base_url must start with http:// or https://, got {self.base_url!r}"
            )
        self.url = self.base_url + "/chat/completions"
        self.name = f"openai:{self.model}@{self.base_url}"
        self.max_concurrency = max(1, config.max_concurrency)
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self.requests = 0
        self.retries = 0
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "openai-compatible",
            "model": self.model,
            "base_url": self.base_url,
            "max_concurrency": self.max_concurrency,
            "timeout_s": self.config.timeout_s,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.config.api_key_env, "") if self.config.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, body: bytes) -> str:
        request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(f"HTTP {exc.code}: {detail}", _retry_after(exc.headers)) from None
            raise JudgeError(f"{self.url}: HTTP {exc.code}: {detail}") from None
        except TimeoutError as exc:
            raise _Retryable(f"timed out after {self.config.timeout_s}s: {exc}") from None
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            raise _Retryable(f"connection failed: {exc}") from None
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable(f"malformed response body: {raw[:200]!r}") from None
        if not isinstance(content, str):
            raise _Retryable(f"response has no text content: {raw[:200]!r}")
        return content

    def complete(self, messages: list[dict[str, str]]) -> str:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        if self.config.json_mode:
            payload["response_format"] = {"type": "json_object"}
        body = json.dumps(payload).encode()
        last = ""
        with self._slots:
            for attempt in range(self.config.max_retries + 1):
                with self._lock:
                    self.requests += 1
                try:
                    return self._post(body)
                except _Retryable as exc:
                    last = str(exc)
                    if attempt == self.config.max_retries:
                        break
                    delay = min(self.config.backoff_max_s, self.config.backoff_s * 2**attempt)
                    delay *= 0.5 + random.random() / 2
                    if exc.retry_after is not None:
                        delay = max(delay, min(exc.retry_after, self.config.backoff_max_s))
                    with self._lock:
                        self.retries += 1
                    log.debug("judge %s: %s; retrying in %.2fs", self.name, last, delay)
                    time.sleep(delay)
        raise JudgeError(f"{self.url}: gave up after {self.config.max_retries + 1} attempt(s): {last}")
