"""Evaluation test helpers: a scripted judge (a stand-in for an LLM), golden cases, sample captions."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evaluation.judges.base import JudgeError, check_inputs, validate_answer

GOLDEN = Path(__file__).parent / "golden"

# Captions written the way FEC-Bench references are: appearance first, then the face along time.
CAPTIONS = {
    "man_smile": (
        "The video shows the facial changes of a young man with short black hair and a thin beard.\n"
        "At the beginning of the video, he looks straight ahead with his mouth closed and his eyebrows "
        "relaxed. As the video progresses, the corners of his mouth turn upwards and he smiles, "
        "showing his upper teeth.\n"
        "In the middle of the video, he raises his eyebrows, his eyes widen, and he starts speaking.\n"
        "Towards the end of the video, he stops speaking, his smile fades and he tilts his head to the "
        "left while blinking."
    ),
    "woman_frown": (
        "This video shows an elderly woman with grey curly hair and glasses.\n"
        "At the beginning of the video, she furrows her brows and presses her lips together, her gaze "
        "fixed downwards. Then she shakes her head slowly.\n"
        "In the middle of the video, she narrows her eyes and wrinkles her nose, and her lower lip "
        "trembles.\n"
        "Towards the end of the video, she turns her head to the right, closes her eyes, and sighs."
    ),
    "boy_talk": (
        "The video shows a teenage boy in a red cap.\n"
        "At the beginning of the video, he opens his mouth and talks quickly while nodding.\n"
        "In the middle of the video, he glances to the left and licks his lips.\n"
        "Towards the end of the video, he grins widely, his cheeks lift, and he laughs with his eyes "
        "squinting."
    ),
}


class ScriptedJudge:
    """A judge that answers from a script, counts its calls and can fail on chosen captions.

    ``events`` maps caption -> event list (for both ``tem_events`` and ``dq_events``); ``relations``
    maps (pred events, ref events) -> sparse ``[i, j, label]`` list; ``labels`` maps caption ->
    {event: entailment label}; ``scores`` maps criterion -> score; captions in ``fail`` raise
    :class:`JudgeError`; ``crash_after`` raises ``KeyboardInterrupt`` on that call (a crashed run).
    """

    approximate = False

    def __init__(
        self,
        events: Mapping[str, list[str]] | None = None,
        relations: Mapping[tuple[tuple[str, ...], tuple[str, ...]], list] | None = None,
        labels: Mapping[str, Mapping[str, str]] | None = None,
        scores: Mapping[str, float] | None = None,
        fail: tuple[str, ...] | list[str] = (),
        name: str = "scripted",
        version: str = "1",
        max_concurrency: int = 1,
        crash_after: int | None = None,
    ) -> None:
        self.events = dict(events or {})
        self.relations = dict(relations or {})
        self.labels = {k: dict(v) for k, v in (labels or {}).items()}
        self.scores = dict(scores or {})
        self.fail = set(fail)
        self.name = name
        self.version = version
        self.max_concurrency = max_concurrency
        self.crash_after = crash_after
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def stage_version(self, stage: str) -> str:
        return self.version

    def ask(self, stage: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        check_inputs(stage, inputs)
        with self._lock:
            self.calls.append((stage, json.dumps(dict(inputs), sort_keys=True)))
            if self.crash_after is not None and len(self.calls) > self.crash_after:
                raise KeyboardInterrupt("scripted crash")
        for value in inputs.values():
            if isinstance(value, str) and value in self.fail:
                raise JudgeError(f"scripted failure for {value!r}")
        if stage in ("tem_events", "dq_events"):
            answer: dict[str, Any] = {"events": list(self.events[inputs["caption"]])}
        elif stage == "tem_relations":
            key = (tuple(inputs["pred_events"]), tuple(inputs["ref_events"]))
            pairs = [
                {"pred": i + 1, "ref": j + 1, "relation": lab} for i, j, lab in self.relations.get(key, [])
            ]
            answer = {"pairs": pairs}
        elif stage == "dq_entailment":
            table = self.labels[inputs["caption"]]
            answer = {"labels": [table[e] for e in inputs["events"]]}
        else:
            answer = {"score": self.scores.get(stage.removeprefix("vcgpt_"), 3)}
        return validate_answer(stage, inputs, answer)

    def count(self, stage: str | None = None) -> int:
        return sum(1 for s, _ in self.calls if stage is None or s == stage)


def scripted_from_case(case: Mapping[str, Any]) -> ScriptedJudge:
    """A scripted judge for one golden case (relations keyed by item id in the file)."""
    events = case.get("events", {})
    relations = {}
    for item in case["items"]:
        rel = case.get("relations", {}).get(item["id"])
        if rel is not None:
            key = (tuple(events[item["prediction"]]), tuple(events[item["reference"]]))
            relations[key] = rel
    return ScriptedJudge(
        events=events, relations=relations, labels=case.get("labels"), fail=case.get("fail", ())
    )


def golden(name: str) -> dict[str, Any]:
    return json.loads((GOLDEN / f"{name}.json").read_text())
