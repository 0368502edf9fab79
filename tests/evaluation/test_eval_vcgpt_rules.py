"""VideoChatGPT scores follow Video-ChatGPT's rules: int() truncation and retry before failing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from evaluation import vcgpt
from evaluation.judges.base import JudgeError


class FlakyJudge:
    """Answers fixed float scores after failing the first ``fail_first`` calls of every criterion."""

    def __init__(self, scores: Mapping[str, Any], fail_first: int) -> None:
        self.scores, self.fail_first, self.calls = dict(scores), fail_first, {}

    def ask(self, stage: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        self.calls[stage] = self.calls.get(stage, 0) + 1
        if self.calls[stage] <= self.fail_first:
            raise JudgeError("scripted outage")
        return {"score": self.scores[stage.removeprefix("vcgpt_")]}


SCORES = {"correctness": 3.9, "detail": 4.5, "context": 2.0, "temporal": "1.2"}
CONFIG = vcgpt.VcgptConfig(question="What do the faces do?")


def test_scores_are_truncated_with_int_like_the_reference() -> None:
    item = vcgpt.judge_item(FlakyJudge(SCORES, 0), "a", "p", "r", CONFIG)
    assert item.scores == {"correctness": 3, "detail": 4, "context": 2, "temporal": 1}
    assert vcgpt.aggregate([item])["correctness"] == 3.0


def test_failed_calls_are_retried_before_the_item_fails() -> None:
    judge = FlakyJudge(SCORES, 2)
    item = vcgpt.judge_item(judge, "a", "p", "r", CONFIG)
    assert item.scores["detail"] == 4 and not item.errors
    assert judge.calls["vcgpt_detail"] == 3
    failed = vcgpt.judge_item(FlakyJudge(SCORES, 3), "b", "p", "r", CONFIG)
    assert failed.scores["detail"] is None and "outage" in failed.errors["detail"]
    assert vcgpt.aggregate([item, failed])["failed_ids_detail"] == ["b"]


@pytest.mark.parametrize("bad", ["five", 7, None])
def test_an_unusable_score_is_a_failure(bad: Any) -> None:
    item = vcgpt.judge_item(FlakyJudge({**SCORES, "context": bad}, 0), "a", "p", "r", CONFIG)
    assert item.scores["context"] is None and item.errors["context"]
