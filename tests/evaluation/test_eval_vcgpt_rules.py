"""VideoChatGPT scores follow Video-ChatGPT's rules: the question, int() truncation, retry before failing."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import facetrack
from evaluation import vcgpt
from evaluation.judges import JudgeConfig
from evaluation.judges.base import JudgeError
from tests.evaluation.eval_helpers import golden


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


VCGPT = golden("vcgpt")
FACTS = golden("reference_rules")


class AnswersJudge:
    """Answers each item's raw score per criterion (the item is known by its prediction text)."""

    def __init__(self, answers: Mapping[str, Mapping[str, Any]], flaky: Mapping[str, Mapping[str, int]]):
        self.answers = answers
        self.left = {(i, c): n for i, per in flaky.items() for c, n in per.items()}

    def ask(self, stage: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        item, criterion = inputs["prediction"], stage.removeprefix("vcgpt_")
        if self.left.get((item, criterion), 0) > 0:
            self.left[item, criterion] -= 1
            raise JudgeError("scripted outage")
        return {"score": self.answers[item][criterion]}


@pytest.mark.parametrize("case", VCGPT["cases"], ids=[c["name"] for c in VCGPT["cases"]])
def test_vcgpt_golden(case: dict[str, Any]) -> None:
    judge = AnswersJudge(case["answers"], case.get("flaky", {}))
    config = vcgpt.VcgptConfig(question="q", **case["config"])
    items = [vcgpt.judge_item(judge, i, i, "ref", config) for i in case["answers"]]
    by_id = {it.id: it for it in items}
    for item_id, expected in case.get("expected_items", {}).items():
        for criterion, value in expected.items():
            assert by_id[item_id].scores[criterion] == value, (item_id, criterion)
            assert value is None or type(by_id[item_id].scores[criterion]) is int
    result = vcgpt.aggregate(items)
    for key, value in case["expected"].items():
        if isinstance(value, float):
            assert result[key] == pytest.approx(value, abs=VCGPT["tolerance"]), key
        else:
            assert result[key] == value, key


@pytest.mark.parametrize("raw, expected", FACTS["vcgpt"]["truncation_examples"])
def test_truncation_matches_the_reference_int(raw: float, expected: int) -> None:
    assert vcgpt.truncate_score(raw) == expected == int(raw)


def test_the_judge_sees_the_benchmark_instruction_as_the_question() -> None:
    # Video-ChatGPT gives the judge the question the model answered: for FEC-Bench, its instruction.
    instructions = Path(facetrack.__file__).parent / "model" / "instructions.json"
    benchmark = json.loads(instructions.read_text())["benchmark"]
    assert vcgpt.default_question() == benchmark
    seen: list[str] = []

    class Recorder(FlakyJudge):
        def ask(self, stage: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
            seen.append(inputs["question"])
            return super().ask(stage, inputs)

    vcgpt.judge_item(Recorder(SCORES, 0), "a", "p", "r", vcgpt.VcgptConfig())
    assert seen == [benchmark] * 4


def test_vcgpt_prompts_ask_for_an_integer_from_0_to_5() -> None:
    from evaluation.prompts import load_prompt

    for criterion in ("correctness", "detail", "context", "temporal"):
        text = load_prompt(f"vcgpt_{criterion}").user
        assert "integer" in text and "0" in text and "5" in text, criterion


def test_the_question_comes_from_the_prompt_set_in_use(tmp_path: Path) -> None:
    # A user's set (--prompts) governs the question, whether given to default_question or held by the judge.
    import yaml

    from evaluation.prompts import PROMPT_DIR, load_prompt_set
    from evaluation.results import EvalConfig

    stages = {p.stem: yaml.safe_load(p.read_text()) for p in PROMPT_DIR.glob("*.yaml") if p.stem != "common"}
    common = {
        **yaml.safe_load((PROMPT_DIR / "common.yaml").read_text()),
        "fec_question": "Describe the face.",
    }
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"name": "mine", "common": common, "stages": stages}))
    assert vcgpt.default_question(str(mine)) == "Describe the face."
    assert vcgpt.default_question(load_prompt_set(str(mine))) == "Describe the face."
    seen: list[str] = []

    class Recorder(FlakyJudge):
        prompts = load_prompt_set(str(mine))

        def ask(self, stage: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
            seen.append(inputs["question"])
            return super().ask(stage, inputs)

    vcgpt.judge_item(Recorder(SCORES, 0), "a", "p", "r", vcgpt.VcgptConfig())
    assert seen == ["Describe the face."] * 4
    from evaluation.pipeline import prepare

    config, _ = prepare(EvalConfig(metrics=["vcgpt"], judge=JudgeConfig(kind="openai", prompts=str(mine))))
    assert config.vcgpt.question == "Describe the face."
    del common["fec_question"]
    mine.write_text(yaml.safe_dump({"name": "mine2", "common": common, "stages": stages}))
    load_prompt_set.cache_clear()
    with pytest.raises(ValueError, match="fec_question"):
        vcgpt.default_question(str(mine))
