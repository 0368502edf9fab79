"""A judge backed by a chat LLM: render the stage's versioned prompt, parse the JSON answer, re-ask on errors.

The transport is a :class:`ChatBackend` (an OpenAI-compatible HTTP endpoint or a local transformers
model). The answer is parsed as JSON (code fences and text around the object are tolerated, as is a
Python-style dict) and validated against the stage's schema; an unusable answer is sent back with the
reason and asked again, up to ``max_parse_retries`` times, then the request fails with
:class:`~evaluation.judges.base.JudgeError`.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from typing import Any, Protocol

from evaluation.judges.base import AnswerError, JudgeError, check_inputs, validate_answer
from evaluation.prompts import PromptSet, load_prompt_set

_FENCE = re.compile(r"```(?:json|python)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


class ChatBackend(Protocol):
    """Sends chat messages to a model and returns the text of its reply."""

    name: str
    max_concurrency: int

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The reply text; raises :class:`JudgeError` when the model cannot be reached after retries."""
        ...


def parse_json_answer(text: str) -> Any:
    """The JSON object in a model reply.

    Raises:
        AnswerError: no JSON object could be read from the text.
    """
    if not isinstance(text, str) or not text.strip():
        raise AnswerError("the reply was empty; a JSON object was expected")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for candidate in candidates:
        start, end = candidate.find("{"), candidate.rfind("}")
        if start < 0 or end <= start:
            continue
        body = candidate[start : end + 1]
        try:
            return json.loads(body)
        except ValueError:
            pass
        try:
            value = ast.literal_eval(body)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    raise AnswerError("the reply is not a JSON object")


class LLMJudge:
    """A :class:`~evaluation.judges.base.Judge` over a chat backend and the versioned prompts.

    Args:
        backend: where the messages go.
        prompts: the prompt set, or where to load it from (a folder or a file; empty: the shipped set).
        max_parse_retries: how many times an unusable answer is asked again.
    """

    approximate = False

    def __init__(
        self, backend: ChatBackend, prompts: PromptSet | str | None = None, max_parse_retries: int = 2
    ) -> None:
        self.backend = backend
        self.prompts = prompts if isinstance(prompts, PromptSet) else load_prompt_set(prompts or None)
        self.max_parse_retries = max(0, max_parse_retries)
        self.name = backend.name
        self.max_concurrency = backend.max_concurrency

    def stage_version(self, stage: str) -> str:
        return self.prompts.prompt(stage).cache_version

    def ask(self, stage: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        check_inputs(stage, inputs)
        prompt = self.prompts.prompt(stage)
        messages = prompt.render(inputs)
        last_error = ""
        for _ in range(1 + self.max_parse_retries):
            text = self.backend.complete(messages)
            try:
                return validate_answer(stage, inputs, parse_json_answer(text))
            except AnswerError as exc:
                last_error = str(exc)
                messages = [
                    *messages,
                    {"role": "assistant", "content": text},
                    prompt.reask_message(last_error),
                ]
        raise JudgeError(
            f"{stage}: no valid answer from {self.name} after {1 + self.max_parse_retries} attempt(s): "
            f"{last_error}"
        )

    def describe(self) -> dict[str, Any]:
        describe = getattr(self.backend, "describe", None)
        out = describe() if callable(describe) else {}
        return {
            "name": self.name,
            "approximate": False,
            "kind": "llm",
            **out,
            "prompts": self.prompts.describe(),
        }
