"""The judge cache: re-runs make no judge call, crashed runs resume, keys follow judge and prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.data import Item, Pairing
from evaluation.judges.cache import CachedJudge, JudgeCache, cache_key
from evaluation.pipeline import EvalConfig, evaluate, judge_items
from tests.evaluation.eval_helpers import ScriptedJudge


def make_case(n: int = 4) -> tuple[Pairing, dict[str, list[str]], dict]:
    events: dict[str, list[str]] = {}
    relations = {}
    items = []
    for k in range(n):
        pred, ref = f"pred {k}", f"ref {k}"
        events[pred] = [f"p{k}a", f"p{k}b", f"p{k}c"]
        events[ref] = [f"r{k}a", f"r{k}b"]
        relations[(tuple(events[pred]), tuple(events[ref]))] = [[0, 0, "same"], [2, 1, "same"]]
        items.append(Item(id=str(k), prediction=pred, reference=ref))
    pairing = Pairing(
        items=items, references={it.id: it.reference for it in items}, n_references=n, n_predictions=n
    )
    return pairing, events, relations


def config(cache: Path, **kw) -> EvalConfig:
    return EvalConfig(metrics=["tem"], cache=str(cache), **kw)


def test_a_rerun_is_served_from_the_cache(tmp_path: Path) -> None:
    pairing, events, relations = make_case()
    first = ScriptedJudge(events=events, relations=relations)
    report1 = evaluate(
        pairing, config(tmp_path / "cache"), str(tmp_path / "out1"), judge=first, progress=False
    )
    assert first.count() == 4 * 3  # per item: two event lists and one relation matrix
    again = ScriptedJudge(events=events, relations=relations)
    report2 = evaluate(
        pairing, config(tmp_path / "cache"), str(tmp_path / "out2"), judge=again, progress=False
    )
    assert again.count() == 0
    assert report2["judge_calls"]["calls"] == 0 and report2["judge_calls"]["hits"] == 12
    assert report2["metrics"]["tem"] == report1["metrics"]["tem"]
    assert report1["metrics"]["tem"]["tem"] == pytest.approx(2 * (2 / 3) * 1.0 / (2 / 3 + 1.0))


def test_a_crashed_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    pairing, events, relations = make_case()
    crashing = ScriptedJudge(events=events, relations=relations, crash_after=5)
    with pytest.raises(KeyboardInterrupt):
        evaluate(pairing, config(tmp_path / "cache"), str(tmp_path / "out"), judge=crashing, progress=False)
    assert not (tmp_path / "out" / "report.json").exists()
    resumed = ScriptedJudge(events=events, relations=relations)
    report = evaluate(
        pairing, config(tmp_path / "cache"), str(tmp_path / "out"), judge=resumed, progress=False
    )
    assert resumed.count() == 12 - 5, "the five answers given before the crash are not asked again"
    assert report["judge_calls"]["hits"] == 5
    assert report["metrics"]["tem"]["n_scored"] == 4


def test_keys_follow_judge_name_and_prompt_version(tmp_path: Path) -> None:
    pairing, events, relations = make_case(2)
    evaluate(
        pairing,
        config(tmp_path / "c"),
        str(tmp_path / "o"),
        judge=ScriptedJudge(events, relations),
        progress=False,
    )
    new_version = ScriptedJudge(events, relations, version="2")
    evaluate(pairing, config(tmp_path / "c"), str(tmp_path / "o"), judge=new_version, progress=False)
    assert new_version.count() == 6
    other_judge = ScriptedJudge(events, relations, name="another-model")
    evaluate(pairing, config(tmp_path / "c"), str(tmp_path / "o"), judge=other_judge, progress=False)
    assert other_judge.count() == 6
    assert cache_key("a", "1", "tem_events", {"caption": "x"}) != cache_key(
        "a", "1", "tem_events", {"caption": "y"}
    )
    assert cache_key("a", "1", "tem_events", {"caption": "x"}) != cache_key(
        "a", "1", "dq_events", {"caption": "x"}
    )


def test_failed_calls_are_not_cached(tmp_path: Path) -> None:
    pairing, events, relations = make_case(2)
    failing = ScriptedJudge(events, relations, fail=["pred 1"])
    report = evaluate(pairing, config(tmp_path / "c"), str(tmp_path / "o"), judge=failing, progress=False)
    assert report["metrics"]["tem"]["failed_ids"] == ["1"]
    fixed = ScriptedJudge(events, relations)
    report = evaluate(pairing, config(tmp_path / "c"), str(tmp_path / "o"), judge=fixed, progress=False)
    assert report["metrics"]["tem"]["n_failed"] == 0
    assert fixed.count() == 3, "only item 1's three stages are asked again"


def test_cache_off_always_calls(tmp_path: Path) -> None:
    pairing, events, relations = make_case(1)
    judge = ScriptedJudge(events, relations)
    for _ in range(2):
        evaluate(
            pairing,
            EvalConfig(metrics=["tem"], cache="off"),
            str(tmp_path / "o"),
            judge=judge,
            progress=False,
        )
    assert judge.count() == 6
    assert not (tmp_path / "o" / "judge_cache").exists()


def test_a_half_written_line_is_skipped(tmp_path: Path) -> None:
    cache = JudgeCache(str(tmp_path))
    cache.put("k1", {"events": ["a"]}, stage="tem_events")
    cache.put("k2", {"events": ["b"]}, stage="tem_events")
    cache.close()
    segment = next(tmp_path.glob("*.jsonl"))
    segment.write_text(segment.read_text() + '{"k": "k3", "a": {"ev')
    again = JudgeCache(str(tmp_path))
    assert len(again) == 2 and again.skipped_lines == 1
    assert again.get("k2") == {"events": ["b"]} and again.get("k3") is None


def test_several_writers_share_one_cache(tmp_path: Path) -> None:
    a, b = JudgeCache(str(tmp_path)), JudgeCache(str(tmp_path))
    a.put("ka", {"score": 1.0})
    b.put("kb", {"score": 2.0})
    a.close()
    b.close()
    assert len(list(tmp_path.glob("*.jsonl"))) == 2
    merged = JudgeCache(str(tmp_path))
    assert merged.get("ka") == {"score": 1.0} and merged.get("kb") == {"score": 2.0}


def test_cached_answers_are_copies(tmp_path: Path) -> None:
    cache = JudgeCache(str(tmp_path))
    cache.put("k", {"events": ["a"]})
    got = cache.get("k")
    got["events"].append("mutated")
    assert cache.get("k") == {"events": ["a"]}


def test_concurrent_items_keep_their_order_and_results(tmp_path: Path) -> None:
    pairing, events, relations = make_case(8)
    sequential = judge_items(pairing.items, ScriptedJudge(events, relations), EvalConfig(metrics=["tem"]))
    parallel_judge = CachedJudge(
        ScriptedJudge(events, relations, max_concurrency=4), JudgeCache(str(tmp_path))
    )
    parallel = judge_items(pairing.items, parallel_judge, EvalConfig(metrics=["tem"]))
    assert [r.id for r in parallel] == [it.id for it in pairing.items]
    assert [r.tem for r in parallel] == [r.tem for r in sequential]
    assert parallel_judge.totals()["calls"] == 24
    lines = [json.loads(line) for f in tmp_path.glob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(lines) == 24 and {line["stage"] for line in lines} == {"tem_events", "tem_relations"}


def test_cache_key_includes_model_and_sampling_parameters(tmp_path) -> None:

    class Sampled(ScriptedJudge):
        def __init__(self, temperature: float) -> None:
            super().__init__(events={"c": ["he smiles"]})
            self.temperature = temperature

        def describe(self) -> dict:
            return {"model": "m", "temperature": self.temperature, "max_tokens": 64}

    cache = JudgeCache(str(tmp_path / "cache"))
    first, same, other = Sampled(0.0), Sampled(0.0), Sampled(0.7)
    for judge in (first, same, other):
        CachedJudge(judge, cache).ask("tem_events", {"caption": "c"})
    assert (first.count(), same.count(), other.count()) == (1, 0, 1)
