"""Golden cases for LCS, TEM and AutoDQ aggregation, run through the judge stages with a scripted judge."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytest

from evaluation import autodq, tem
from evaluation.judges.base import JudgeError
from evaluation.lcs import lcs_align, lcs_length
from tests.evaluation.eval_helpers import ScriptedJudge, golden, scripted_from_case

LCS = golden("lcs")
TEM = golden("tem")
AUTODQ = golden("autodq")


class FlakyJudge:
    """The case's scripted judge, failing the first ``flaky[caption]`` calls that carry that caption."""

    def __init__(self, inner: ScriptedJudge, flaky: Mapping[str, int]) -> None:
        self.inner, self.left = inner, dict(flaky)
        self.name, self.approximate, self.max_concurrency = inner.name, False, 1
        self.failures = 0

    def stage_version(self, stage: str) -> str:
        return self.inner.stage_version(stage)

    def ask(self, stage: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        for value in inputs.values():
            if isinstance(value, str) and self.left.get(value, 0) > 0:
                self.left[value] -= 1
                self.failures += 1
                raise JudgeError(f"scripted outage for {value!r}")
        return self.inner.ask(stage, inputs)


def _judge(case: dict[str, Any]) -> ScriptedJudge | FlakyJudge:
    judge = scripted_from_case(case)
    return FlakyJudge(judge, case["flaky"]) if "flaky" in case else judge


def _matrix(case: dict[str, Any]) -> list[list[str]]:
    if "pred" in case:  # a classic string LCS written as a relation matrix
        return [["same" if p == r else "unrelated" for r in case["ref"]] for p in case["pred"]]
    code = {"S": "same", "O": "opposite", ".": "unrelated"}
    return [[code[c] for c in row] for row in case["relations"]]


def _close(actual: Any, expected: Any, tol: float) -> bool:
    if isinstance(expected, float) and actual is not None and not isinstance(actual, str):
        return math.isclose(actual, expected, abs_tol=tol)
    return actual == expected


@pytest.mark.parametrize("case", LCS["cases"], ids=[c["name"] for c in LCS["cases"]])
def test_lcs_golden(case: dict[str, Any]) -> None:
    relations = _matrix(case)
    pairs = lcs_align(relations)
    assert len(pairs) == case["expected_lcs"] == lcs_length(relations)
    if "expected_pairs" in case:
        assert [list(p) for p in pairs] == case["expected_pairs"]
    # Whatever the alignment, it must be strictly increasing on both sides and use only "same" pairs.
    for (i0, j0), (i1, j1) in zip(pairs, pairs[1:]):
        assert i0 < i1 and j0 < j1
    assert all(relations[i][j] == "same" for i, j in pairs)


def test_lcs_rejects_a_ragged_matrix() -> None:
    with pytest.raises(ValueError, match="rectangular"):
        lcs_align([["same", "same"], ["same"]])


@pytest.mark.parametrize("case", TEM["cases"], ids=[c["name"] for c in TEM["cases"]])
def test_tem_golden(case: dict[str, Any]) -> None:
    tol = TEM["tolerance"]
    judge = _judge(case)
    config = tem.TemConfig(**case["config"])
    items = [
        tem.judge_item(judge, it["id"], it["prediction"], it["reference"], config) for it in case["items"]
    ]
    by_id = {it.id: it for it in items}
    for item_id, expected in case.get("expected_items", {}).items():
        for key, value in expected.items():
            assert _close(getattr(by_id[item_id], key), value, tol), (
                item_id,
                key,
                getattr(by_id[item_id], key),
            )
    result = tem.aggregate(items, config)
    for key, value in case["expected"].items():
        assert _close(result[key], value, tol), (key, result[key], value)
    assert result["n_items"] == len(case["items"])


@pytest.mark.parametrize("case", AUTODQ["cases"], ids=[c["name"] for c in AUTODQ["cases"]])
def test_autodq_golden(case: dict[str, Any]) -> None:
    tol = AUTODQ["tolerance"]
    judge = _judge(case)
    config = autodq.AutoDQConfig(**case["config"])
    items = [
        autodq.judge_item(judge, it["id"], it["prediction"], it["reference"], config) for it in case["items"]
    ]
    by_id = {it.id: it for it in items}
    for item_id, expected in case.get("expected_items", {}).items():
        for key, value in expected.items():
            assert _close(getattr(by_id[item_id], key), value, tol), (item_id, key)
    result = autodq.aggregate(items, config)
    for key, value in case["expected"].items():
        assert _close(result[key], value, tol), (key, result[key], value)


def test_autodq_asks_for_the_configured_number_of_events() -> None:
    case = AUTODQ["cases"][0]
    judge = scripted_from_case(case)
    autodq.judge_item(judge, "a", "pa", "ra", autodq.AutoDQConfig(max_events=7))
    asked = [c for s, c in judge.calls if s == "dq_events"]
    assert asked and all('"max_events": 7' in c for c in asked)


def test_tem_items_round_trip_through_dicts() -> None:
    case = TEM["cases"][0]
    judge = scripted_from_case(case)
    item = tem.judge_item(judge, "a", "pa", "ra", tem.TemConfig())
    again = tem.item_from_dict(item.to_dict())
    assert again == item
    assert again.pairs == [(0, 0), (1, 2), (3, 4)]


def test_tem_config_rejects_a_negative_penalty() -> None:
    with pytest.raises(ValueError):
        tem.TemConfig(opposite="penalize", opposite_penalty=-1)


FACTS = golden("reference_rules")["autodq"]


def test_autodq_defaults_follow_tarsier() -> None:
    from evaluation.judges.base import ENTAILMENT_LABELS

    config = autodq.AutoDQConfig()
    assert config.max_events == FACTS["max_events_asked"] == 10
    assert config.lowercase is FACTS["lowercase_captions"] is True
    assert sorted(ENTAILMENT_LABELS) == sorted(FACTS["entailment_labels"])
    assert FACTS["hit_labels_precision"] == FACTS["hit_labels_recall"] == ["entailment"]


def test_autodq_prompts_ask_for_the_cap_and_a_reason_per_event() -> None:
    from evaluation.prompts import load_prompt

    events = load_prompt("dq_events").render({"caption": "he smiles", "max_events": 10})[1]["content"]
    assert "at most 10" in events
    entail = load_prompt("dq_entailment").render({"caption": "c", "events": ["a", "b", "c"]})[1]["content"]
    assert '"reasons"' in entail and '"labels"' in entail and "exactly 3" in entail
    assert entail.index('"reasons"') < entail.index('"labels"')


def test_autodq_label_count_mismatch_is_asked_again_then_fails() -> None:
    class Miscounting:
        name, approximate, max_concurrency = "miscount", False, 1

        def __init__(self) -> None:
            self.calls = 0

        def stage_version(self, stage: str) -> str:
            return "1"

        def ask(self, stage: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
            if stage == "dq_events":
                return {"events": ["e1", "e2"]}
            self.calls += 1
            return {"labels": ["entailment"] * (2 if self.calls > 2 else 1)}

    judge = Miscounting()
    item = autodq.judge_item(judge, "m", "p", "r", autodq.AutoDQConfig(retries=2))
    assert item.status == "ok" and item.precision == 1.0 and judge.calls == 4
    failed = autodq.judge_item(Miscounting(), "m", "p", "r", autodq.AutoDQConfig(retries=1))
    assert failed.status == "error" and "2 events" in failed.error
