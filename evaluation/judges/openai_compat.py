"""Chat backend for any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, OpenAI, ...) on the
official ``openai`` client.

Where the endpoint is: the setting ``judge.openai.base_url``, else ``FACETRACK_JUDGE_BASE_URL``, else the
client's own ``OPENAI_BASE_URL``, else OpenAI's API. The key: ``FACETRACK_JUDGE_API_KEY``, else the
variable named by ``judge.openai.api_key_env`` (``OPENAI_API_KEY``); a local server needs none.

Requests are bounded by a semaphore (``max_concurrency`` in flight per backend), each with a timeout.
Retries are ours, not the client's (it is built with ``max_retries=0``), so they are counted and their
backoff is configurable: 408, 409, 429 and 5xx answers, timeouts, dropped connections and malformed
response bodies are retried with exponential backoff and jitter, waiting at least what ``Retry-After``
asks (up to ``backoff_max_s``). Servers differ in what they accept, so a 400 is read before it fails:
reasoning models (``o1``/``o3``/``o4``/``gpt-5`` names, or a 400 naming ``max_tokens`` or
``temperature``) get ``max_completion_tokens`` and no temperature; a server that rejects JSON mode is
asked once without it. Any other 4xx means no request of the run can succeed (bad key, unknown model,
bad URL): it raises :class:`~evaluation.judges.base.JudgeFatalError` with one line, and every later call
of this backend fails the same way without a request, so the run stops instead of failing item by item.
A 400 about one request's length (context exceeded) fails only that request.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from evaluation.judges.base import JudgeError, JudgeFatalError

log = logging.getLogger(__name__)

BASE_URL_ENV = "FACETRACK_JUDGE_BASE_URL"
OPENAI_BASE_URL_ENV = "OPENAI_BASE_URL"
"""The ``openai`` client's own variable, used when neither the setting nor ours is given."""
API_KEY_ENV = "FACETRACK_JUDGE_API_KEY"
"""Our key variable; it wins over ``judge.openai.api_key_env`` (``OPENAI_API_KEY``)."""
MODEL_ENV = "FACETRACK_JUDGE_MODEL"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
OPENAI_INSTALL = "pip install openai"
NO_KEY = "EMPTY"
"""Sent when no key is set: local servers (vLLM without --api-key) accept any key."""

_REASONING_MODEL = re.compile(r"^(o\d+|gpt-5)([-.:_]|$)", re.IGNORECASE)
_RETRYABLE_STATUS = (408, 409, 429)
_CONTEXT_TOO_LONG = re.compile(r"context[_ ]length|maximum context|too many tokens|prompt is too long", re.I)
_TOKENS_PARAM = re.compile(r"max_tokens", re.I)
_TEMPERATURE_PARAM = re.compile(r"temperature", re.I)
_JSON_MODE = re.compile(r"response_format|json_object|json mode|json_mode", re.I)

ReasoningMode = Literal["auto", "yes", "no"]


@dataclass
class OpenAIJudgeConfig:
    """Where the endpoint is and how to talk to it.

    ``base_url`` (for example ``http://localhost:8000/v1``) and ``model`` fall back to the environment
    variables ``FACETRACK_JUDGE_BASE_URL`` (then ``OPENAI_BASE_URL``, then OpenAI's API) and
    ``FACETRACK_JUDGE_MODEL`` when empty.
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
    """Answer length limit; sent as ``max_completion_tokens`` to reasoning models (whose reasoning
    tokens count against it, so give them more)."""
    json_mode: bool = True
    """Send ``response_format={"type": "json_object"}``; dropped for good when the server rejects it."""
    reasoning: ReasoningMode = "auto"
    """``auto``: a reasoning model by its name (o1, o3, o4-mini, gpt-5, ...) or by the server's 400;
    ``yes``/``no`` decide it."""


def is_reasoning_model(model: str) -> bool:
    """Whether ``model`` names an OpenAI reasoning model (``o1``, ``o3-mini``, ``openai/gpt-5``, ...)."""
    return bool(_REASONING_MODEL.match(model.rsplit("/", 1)[-1]))


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(response: Any) -> float | None:
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / divisor)
        except ValueError:
            continue
    return None


def _error_text(exc: Any) -> str:
    """The server's own error message (``{"error": {"message": ...}}`` or the raw body), one line."""
    body = getattr(exc, "body", None)
    message = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if message is None:
            message = body.get("detail") or body.get("message")
    if message is None:
        response = getattr(exc, "response", None)
        message = getattr(response, "text", None) or str(exc)
    return " ".join(str(message).split())[:300]


_HINTS = {
    401: "check the API key (FACETRACK_JUDGE_API_KEY or the variable in judge.openai.api_key_env)",
    403: "the key may not use this model or endpoint",
    404: "check the base URL (it usually ends in /v1) and the model name (--judge-model)",
}


class OpenAIChat:
    """A :class:`~evaluation.judges.llm.ChatBackend` over the ``openai`` client."""

    def __init__(self, config: OpenAIJudgeConfig | None = None) -> None:
        config = config or OpenAIJudgeConfig()
        self.config = config
        self.base_url = (
            config.base_url
            or os.environ.get(BASE_URL_ENV, "")
            or os.environ.get(OPENAI_BASE_URL_ENV, "")
            or DEFAULT_BASE_URL
        ).rstrip("/")
        self.model = config.model or os.environ.get(MODEL_ENV, "")
        if not self.model:
            raise ValueError(f"openai judge: set judge.openai.model (--judge-model) or {MODEL_ENV}")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"openai judge: base_url must start with http:// or https://, got {self.base_url!r}"
            )
        key = os.environ.get(API_KEY_ENV, "") or (
            os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        )
        if not key and self.base_url == DEFAULT_BASE_URL:
            raise ValueError(
                f"openai judge: no API key for {DEFAULT_BASE_URL}: set {config.api_key_env or API_KEY_ENV} "
                f"or {API_KEY_ENV}, or point judge.openai.base_url / {OPENAI_BASE_URL_ENV} at your server"
            )
        self._key = key or NO_KEY
        self.url = self.base_url + "/chat/completions"
        self.name = f"openai:{self.model}@{self.base_url}"
        self.max_concurrency = max(1, config.max_concurrency)
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._lock = threading.Lock()
        self._client: Any = None
        self.reasoning = config.reasoning == "yes" or (
            config.reasoning == "auto" and is_reasoning_model(self.model)
        )
        self.json_mode = config.json_mode
        self.fatal: str | None = None
        self.requests = 0
        self.retries = 0

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backend": "openai-compatible",
            "model": self.model,
            "base_url": self.base_url,
            "max_concurrency": self.max_concurrency,
            "timeout_s": self.config.timeout_s,
            "json_mode": self.json_mode,
            "reasoning": self.reasoning,
        }
        if self.reasoning:
            out["max_completion_tokens"] = self.config.max_tokens
        else:
            out["temperature"] = self.config.temperature
            out["max_tokens"] = self.config.max_tokens
        return out

    def client(self) -> Any:
        """The ``openai.OpenAI`` client (made on first use; retries are ours, so its own are off)."""
        with self._lock:
            if self._client is None:
                try:
                    import openai
                except ImportError as exc:
                    raise ImportError(f"the openai judge needs the openai client: {OPENAI_INSTALL}") from exc
                self._client = openai.OpenAI(
                    api_key=self._key, base_url=self.base_url, timeout=self.config.timeout_s, max_retries=0
                )
            return self._client

    def _payload(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.reasoning:
            payload["max_completion_tokens"] = self.config.max_tokens
        else:
            payload["temperature"] = self.config.temperature
            payload["max_tokens"] = self.config.max_tokens
        if self.json_mode:
            payload["response_format"] = {"type": "json_object"}
        return payload

    def _adapt(self, status: int, text: str, payload: dict[str, Any]) -> bool:
        """After a 400/422: change what is sent if the server named what it rejects; True if changed."""
        with self._lock:
            if not self.reasoning and (_TOKENS_PARAM.search(text) or _TEMPERATURE_PARAM.search(text)):
                self.reasoning = True
                log.warning(
                    "judge %s: the server rejects max_tokens/temperature (HTTP %d: %s); sending "
                    "max_completion_tokens and no temperature from now on",
                    self.name,
                    status,
                    text,
                )
                return True
            if "response_format" in payload and self.json_mode:
                # Named (response_format, json_object) or not: JSON mode is the one optional thing we
                # send, so a server that rejects the request is asked once without it.
                self.json_mode = False
                log.warning(
                    "judge %s: HTTP %d with JSON mode (%s); asking without response_format from now on",
                    self.name,
                    status,
                    text,
                )
                return True
        return False

    def _fail_fatal(self, status: int, text: str) -> JudgeFatalError:
        hint = _HINTS.get(status, "")
        message = f"openai judge {self.model} at {self.base_url}: HTTP {status}: {text}" + (
            f" ({hint})" if hint else ""
        )
        with self._lock:
            if self.fatal is None:
                self.fatal = message
        return JudgeFatalError(message)

    def _post(self, messages: list[dict[str, str]]) -> str:
        import openai

        client = self.client()
        for _adaptation in range(3):  # at most: reasoning parameters, then JSON mode off, then the request
            payload = self._payload(messages)
            with self._lock:
                self.requests += 1
            try:
                response = client.chat.completions.create(**payload)
            except openai.APITimeoutError:
                raise _Retryable(f"timed out after {self.config.timeout_s}s") from None
            except openai.APIConnectionError as exc:
                raise _Retryable(f"connection failed: {exc}") from None
            except openai.APIStatusError as exc:
                status, text = exc.status_code, _error_text(exc)
                if status in _RETRYABLE_STATUS or status >= 500:
                    raise _Retryable(f"HTTP {status}: {text}", _retry_after(exc.response)) from None
                if status in (400, 422) and _CONTEXT_TOO_LONG.search(text):
                    raise JudgeError(f"{self.url}: HTTP {status}: {text}") from None
                if status in (400, 422) and self._adapt(status, text, payload):
                    continue
                raise self._fail_fatal(status, text) from None
            except openai.APIError as exc:  # a 2xx body the client could not read
                raise _Retryable(f"malformed response body: {_error_text(exc)}") from None
            except ValueError as exc:  # a body that is not JSON at all
                raise _Retryable(f"malformed response body: {exc}") from None
            try:
                content = response.choices[0].message.content
            except (AttributeError, IndexError, TypeError):
                raise _Retryable(f"malformed response body: {str(response)[:200]!r}") from None
            if not isinstance(content, str) or not content.strip():
                finish = getattr(response.choices[0], "finish_reason", None)
                more = (
                    " (the answer hit max_tokens: raise judge.openai.max_tokens)"
                    if finish == "length"
                    else ""
                )
                raise _Retryable(f"response has no text content{more}")
            return content
        raise JudgeError(f"{self.url}: the server rejected every form of the request")

    def complete(self, messages: list[dict[str, str]]) -> str:
        if self.fatal:
            raise JudgeFatalError(self.fatal)
        last = ""
        with self._slots:
            for attempt in range(self.config.max_retries + 1):
                if self.fatal:
                    raise JudgeFatalError(self.fatal)
                try:
                    return self._post(messages)
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
