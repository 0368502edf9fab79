"""The judge contract: stages, their inputs, and the validated answer each stage must produce.

A judge answers one *stage* at a time (``judge.ask(stage, inputs) -> answer``). Every judge, whether an
LLM behind HTTP, a local transformers model or the embedded offline judge, returns the same canonical
answer for a stage; :func:`validate_answer` checks it (and converts the looser forms an LLM may write into
the canonical one), raising :class:`AnswerError` with a message precise enough to re-ask an LLM with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

RELATIONS = ("same", "opposite", "unrelated")
ENTAILMENT_LABELS = ("entailment", "neutral", "contradiction")
VCGPT_CRITERIA = ("correctness", "detail", "context", "temporal")

STAGES: dict[str, tuple[str, ...]] = {
    # stage -> the input fields it takes
    "tem_events": ("caption",),
    "tem_relations": ("pred_events", "ref_events"),
    "dq_events": ("caption", "max_events"),
    "dq_entailment": ("caption", "events"),
    **{f"vcgpt_{c}": ("question", "prediction", "reference") for c in VCGPT_CRITERIA},
}
"""Every stage a judge answers, with its input fields."""


class JudgeError(RuntimeError):
    """A judge could not produce a valid answer for one request (after its retries)."""


class JudgeFatalError(RuntimeError):
    """No request of this judge can succeed (rejected key, unknown model, wrong URL): stop the run.

    Not a :class:`JudgeError`, so metrics do not record it on one item and go on; the commands print its
    one-line message and exit.
    """


class AnswerError(ValueError):
    """An answer does not match its stage's schema; the message says what is wrong."""


@runtime_checkable
class Judge(Protocol):
    """Anything that answers evaluation stages.

    ``name`` identifies the judge (backend and model) in cache keys and reports; ``approximate`` is true
    for judges that only approximate an LLM judge (the embedded one); ``max_concurrency`` bounds how
    many requests a caller should have in flight at once.
    """

    name: str
    approximate: bool
    max_concurrency: int

    def stage_version(self, stage: str) -> str:
        """A string that changes whenever the way this judge answers ``stage`` changes (prompt, rules)."""
        ...

    def ask(self, stage: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Answer one request; returns the canonical answer or raises :class:`JudgeError`."""
        ...


def check_inputs(stage: str, inputs: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` if ``stage`` is unknown or ``inputs`` lacks one of its fields."""
    if stage not in STAGES:
        raise ValueError(f"unknown judge stage {stage!r}; known: {', '.join(STAGES)}")
    missing = [f for f in STAGES[stage] if f not in inputs]
    if missing:
        raise ValueError(f"stage {stage}: missing input field(s) {', '.join(missing)}")


def _event_list(answer: Mapping[str, Any], key: str = "events") -> list[str]:
    events = answer.get(key)
    if not isinstance(events, list):
        raise AnswerError(f'"{key}" must be a JSON list of strings')
    out = []
    for i, event in enumerate(events):
        if isinstance(event, Mapping) and isinstance(event.get("event"), str):
            event = event["event"]
        if not isinstance(event, str):
            raise AnswerError(f'"{key}"[{i}] must be a string, got {type(event).__name__}')
        event = " ".join(event.split())
        if event:
            out.append(event)
    return out


def _label(value: Any, allowed: Sequence[str], where: str) -> str:
    if not isinstance(value, str) or value.strip().lower() not in allowed:
        raise AnswerError(f"{where} must be one of {', '.join(allowed)}; got {value!r}")
    return value.strip().lower()


def _index(value: Any, size: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AnswerError(f"{where} must be an integer from 1 to {size}; got {value!r}")
    if not 1 <= value <= size:
        raise AnswerError(f"{where} is {value}, outside 1..{size}")
    return value - 1


def _relations(inputs: Mapping[str, Any], answer: Mapping[str, Any]) -> list[list[str]]:
    n, m = len(inputs["pred_events"]), len(inputs["ref_events"])
    if "relations" in answer:
        rows = answer["relations"]
        if not isinstance(rows, list) or len(rows) != n:
            raise AnswerError(f'"relations" must be a list of {n} rows (one per predicted event)')
        matrix = []
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != m:
                raise AnswerError(f'"relations"[{i}] must be a list of {m} labels (one per reference event)')
            matrix.append([_label(v, RELATIONS, f'"relations"[{i}][{j}]') for j, v in enumerate(row)])
        return matrix
    pairs = answer.get("pairs")
    if not isinstance(pairs, list):
        raise AnswerError('the answer must have "pairs": a list of {"pred": i, "ref": j, "relation": ...}')
    matrix = [["unrelated"] * m for _ in range(n)]
    for k, pair in enumerate(pairs):
        if not isinstance(pair, Mapping):
            raise AnswerError(f'"pairs"[{k}] must be an object with "pred", "ref" and "relation"')
        i = _index(pair.get("pred"), n, f'"pairs"[{k}].pred')
        j = _index(pair.get("ref"), m, f'"pairs"[{k}].ref')
        matrix[i][j] = _label(pair.get("relation"), RELATIONS, f'"pairs"[{k}].relation')
    return matrix


def _entailment(inputs: Mapping[str, Any], answer: Mapping[str, Any]) -> list[str]:
    n = len(inputs["events"])
    labels = answer.get("labels")
    if not isinstance(labels, list):
        raise AnswerError('the answer must have "labels": a list with one label per event')
    if len(labels) != n:
        raise AnswerError(f'"labels" has {len(labels)} entries; there are {n} events')
    return [_label(v, ENTAILMENT_LABELS, f'"labels"[{i}]') for i, v in enumerate(labels)]


def _score(answer: Mapping[str, Any]) -> float:
    value = answer.get("score")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise AnswerError(f'"score" must be a number from 0 to 5; got {value!r}') from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AnswerError(f'"score" must be a number from 0 to 5; got {value!r}')
    if not 0 <= value <= 5:
        raise AnswerError(f'"score" is {value}, outside 0..5')
    return float(value)


def validate_answer(stage: str, inputs: Mapping[str, Any], answer: Any) -> dict[str, Any]:
    """Check ``answer`` for ``stage`` and return its canonical form.

    Canonical answers: ``{"events": [str]}`` (``tem_events``, ``dq_events``), ``{"relations": n x m
    labels}`` (``tem_relations``; an LLM may instead give sparse ``{"pairs": [...]}`` with 1-based
    indices, unlisted pairs being unrelated), ``{"labels": [...]}`` (``dq_entailment``) and ``{"score":
    float in 0..5}`` (``vcgpt_*``).

    Raises:
        AnswerError: the answer does not fit; the message names the field and the problem.
    """
    check_inputs(stage, inputs)
    if not isinstance(answer, Mapping):
        raise AnswerError("the answer must be a JSON object")
    if stage in ("tem_events", "dq_events"):
        return {"events": _event_list(answer)}
    if stage == "tem_relations":
        return {"relations": _relations(inputs, answer)}
    if stage == "dq_entailment":
        return {"labels": _entailment(inputs, answer)}
    return {"score": _score(answer)}
