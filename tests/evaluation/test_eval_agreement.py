"""Agreement across judges: correlations, Cohen's kappa of TEM relations, Kendall's tau of rankings, and
``facetrack benchmark --judges`` end to end."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from evaluation import tem
from evaluation.agreement import (
    Run,
    agreement,
    correlation,
    item_correlations,
    ranking_agreement,
    relation_kappa,
    write_summary,
)
from evaluation.judges import JudgeConfig, parse_judge_spec, parse_judges
from evaluation.results import ItemResult
from tests.evaluation.eval_helpers import ScriptedJudge

pytest.importorskip("scipy")
pytest.importorskip("sklearn")

# Three items, two events a side; "same" on the diagonal is the first judge's view.
EVENTS = {
    "p1": ["he blinks", "he smiles"],
    "r1": ["he blinks", "he smiles"],
    "p2": ["she frowns", "she smiles"],
    "r2": ["she frowns", "she nods"],
    "p3": ["he looks up"],
    "r3": ["he looks down", "he sighs"],
}
ITEMS = [("1", "p1", "r1"), ("2", "p2", "r2"), ("3", "p3", "r3")]


def _judge(relations: dict[str, list]) -> ScriptedJudge:
    rel = {(tuple(EVENTS[p]), tuple(EVENTS[r])): relations[i] for i, p, r in ITEMS}
    return ScriptedJudge(events=EVENTS, relations=rel)


DIAGONAL = {"1": [[0, 0, "same"], [1, 1, "same"]], "2": [[0, 0, "same"]], "3": []}
# The flipping judge: every pair the first calls unrelated is "same", every "same" unrelated.
FLIPPED = {
    "1": [[0, 1, "same"], [1, 0, "same"]],
    "2": [[0, 1, "same"], [1, 0, "same"], [1, 1, "same"]],
    "3": [[0, 0, "same"], [0, 1, "same"]],
}


def _results(judge: ScriptedJudge, items: Sequence[tuple[str, str, str]] = ITEMS) -> list[ItemResult]:
    return [ItemResult(id=i, tem=tem.judge_item(judge, i, p, r, tem.TemConfig())) for i, p, r in items]


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def test_identical_judges_agree_fully() -> None:
    a, b = _results(_judge(DIAGONAL)), _results(_judge(DIAGONAL))
    assert [r.tem.f1 for r in a] == [1.0, 0.5, 0.0]
    corr = item_correlations(a, b)["tem_f1"]
    assert corr["n"] == 3 and corr["pearson"] == pytest.approx(1.0) and corr["spearman"] == pytest.approx(1.0)
    kappa = relation_kappa(a, b)
    assert kappa["n_pairs"] == 4 + 4 + 2 and kappa["kappa"] == pytest.approx(1.0)
    assert kappa["observed_agreement"] == 1.0


def test_a_judge_that_flips_relations_has_negative_kappa() -> None:
    a, b = _results(_judge(DIAGONAL)), _results(_judge(FLIPPED))
    # F1 per item, by hand: flipped item 1 LCS 1 of 2/2 -> 0.5; item 2 LCS 1 -> 0.5; item 3 P 1, R 1/2.
    assert [r.tem.f1 for r in b] == pytest.approx([0.5, 0.5, 2 / 3])
    corr = item_correlations(a, b)["tem_f1"]
    assert corr["pearson"] == pytest.approx(_pearson([1.0, 0.5, 0.0], [0.5, 0.5, 2 / 3]))
    k = relation_kappa(a, b)
    # 10 shared pairs, no agreement; judge a: 3 same / 7 unrelated, judge b: 7 same / 3 unrelated.
    # Expected agreement 0.3 * 0.7 + 0.7 * 0.3 = 0.42, kappa = (0 - 0.42) / (1 - 0.42).
    assert k["n_pairs"] == 10 and k["observed_agreement"] == 0.0
    assert k["labels_a"] == {"same": 3, "opposite": 0, "unrelated": 7}
    assert k["labels_b"] == {"same": 7, "opposite": 0, "unrelated": 3}
    assert k["kappa"] == pytest.approx(-0.42 / 0.58)


def test_fewer_than_three_items_give_no_correlation() -> None:
    assert correlation([0.1, 0.9], [0.2, 0.8])["pearson"] is None
    a, b = _results(_judge(DIAGONAL), ITEMS[:2]), _results(_judge(FLIPPED), ITEMS[:2])
    corr = item_correlations(a, b)["tem_f1"]
    assert corr["n"] == 2 and corr["pearson"] is None and corr["spearman"] is None
    assert correlation([0.5, 0.5, 0.5], [0.1, 0.2, 0.3])["pearson"] is None  # a constant side


def test_failed_items_are_left_out_of_the_correlation() -> None:
    judge = _judge(DIAGONAL)
    judge.fail = {"p3"}
    a, b = _results(judge), _results(_judge(DIAGONAL))
    assert a[2].tem.status == "error"
    assert item_correlations(a, b)["tem_f1"]["n"] == 2


def _metrics(value: float) -> dict:
    return {"tem": {"tem": value}, "autodq": {"autodq": value / 2}}


def test_systems_ranked_alike_or_opposite_give_tau_plus_or_minus_one() -> None:
    a = {"s1": _metrics(0.5), "s2": _metrics(0.3), "s3": _metrics(0.1)}
    alike = {"s1": _metrics(0.9), "s2": _metrics(0.6), "s3": _metrics(0.2)}
    opposite = {"s1": _metrics(0.1), "s2": _metrics(0.2), "s3": _metrics(0.3)}
    assert ranking_agreement(a, alike)["TEM"]["tau"] == pytest.approx(1.0)
    assert ranking_agreement(a, opposite)["TEM"]["tau"] == pytest.approx(-1.0)
    assert ranking_agreement(a, opposite)["AutoDQ"]["n_systems"] == 3
    two = ranking_agreement(
        {"x": _metrics(0.4), "y": _metrics(0.2)}, {"x": _metrics(0.1), "y": _metrics(0.3)}
    )
    assert two["TEM"]["tau"] == pytest.approx(-1.0)


def test_the_summary_has_the_agreement_section_with_its_numbers(tmp_path: Path) -> None:
    def report(results: list[ItemResult], value: float) -> dict:
        return {"metrics": _metrics(value), "table": {"TEM": value}, "judge": {"name": "scripted"}}

    runs = [
        Run("good", "a", _results(_judge(DIAGONAL)), report([], 0.5), "runs/good/a"),
        Run("good", "b", _results(_judge(FLIPPED)), report([], 0.57), "runs/good/b"),
        Run("bad", "a", _results(_judge(DIAGONAL)), report([], 0.1), "runs/bad/a"),
        Run("bad", "b", _results(_judge(FLIPPED)), report([], 0.67), "runs/bad/b"),
    ]
    section = agreement(runs)
    assert section["judges"] == ["a", "b"] and section["systems"] == ["good", "bad"]
    assert section["pairs"][0]["ranking"]["TEM"]["tau"] == pytest.approx(-1.0)
    summary = write_summary(runs, str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    assert "## Judge agreement" in md and "### `a` vs `b` on good" in md
    assert f"Cohen's kappa {-0.42 / 0.58:.3f}" in md
    assert f"| tem_f1 | 3 | {_pearson([1.0, 0.5, 0.0], [0.5, 0.5, 2 / 3]):.3f} |" in md
    assert "| TEM | 2 | -1.000 |" in md
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(summary))


def test_judge_specs() -> None:
    base = JudgeConfig()
    base.openai.base_url = "http://h:8000/v1"
    spec = parse_judge_spec("openai:llama3:8b", base)
    assert (
        spec.kind == "openai"
        and spec.openai.model == "llama3:8b"
        and spec.openai.base_url == "http://h:8000/v1"
    )
    assert base.openai.model == "" and base.kind == "embedded"  # the base is not changed
    hf = parse_judge_spec("transformers:Qwen/Qwen2.5-7B-Instruct", base)
    assert hf.kind == "transformers" and hf.transformers.model == "Qwen/Qwen2.5-7B-Instruct"
    labels = [label for label, _ in parse_judges("embedded, openai:gpt-4o-mini", base)]
    assert labels == ["embedded", "openai:gpt-4o-mini"]
    with pytest.raises(ValueError, match="unknown kind"):
        parse_judge_spec("gpt4", base)
    with pytest.raises(ValueError, match="more than once"):
        parse_judges("embedded,embedded", base)


# -- end to end: two judges behind a local OpenAI-compatible server, two systems, on a local Ray ---------
def test_facetrack_benchmark_with_two_judges_and_two_systems(tmp_path: Path, ray_local) -> None:
    from facetrack import cli
    from tests.evaluation.test_eval_openai_judge import FakeLLM, _numbered

    def flipped(body: dict) -> str | None:
        user = body["messages"][1]["content"]
        if body["model"] != "fake-b" or "Predicted events" not in user:
            return None  # events (and fake-a's relations) as the shared stand-in LLM answers them
        pred = _numbered(user.split("Reference events", 1)[0])
        ref = _numbered(user.split("Reference events", 1)[1].split("For every pair", 1)[0])
        pairs = [
            {"pred": i + 1, "ref": j + 1, "relation": "same"}
            for i, p in enumerate(pred)
            for j, r in enumerate(ref)
            if p != r
        ]
        return json.dumps({"pairs": pairs})

    refs = [{"id": i, "video": f"{i}.mp4", "caption": ". ".join(EVENTS[r]) + "."} for i, _, r in ITEMS]
    good = [{"id": i, "caption": ". ".join(EVENTS[p]) + "."} for i, p, _ in ITEMS]
    vague = [{"id": i, "caption": "He yawns."} for i, _, _ in ITEMS]
    paths = {}
    for name, rows in (("refs", refs), ("good", good), ("vague", vague)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(rows))
    server = FakeLLM()
    server.reply = flipped
    out = tmp_path / "eval"
    try:
        args = ["benchmark", "--ref", str(paths["refs"]), "--pred", str(paths["good"]), "--pred"]
        args += [str(paths["vague"]), "--out", str(out), "--judges", "openai:fake-a,openai:fake-b"]
        args += [
            "--judge-url",
            server.url,
            "--metrics",
            "tem",
            "--workers",
            "1",
            "judge.openai.backoff_s=0.01",
        ]
        assert cli.main(args) == 0
        asked = len(server.requests)
    finally:
        server.close()
    summary = json.loads((out / "report.json").read_text())
    assert [(r["system"], r["judge"]) for r in summary["runs"]] == [
        ("good", "openai:fake-a"),
        ("good", "openai:fake-b"),
        ("vague", "openai:fake-a"),
        ("vague", "openai:fake-b"),
    ]
    tems = {(r["system"], r["judge"]): r["table"]["TEM"] for r in summary["runs"]}
    # By hand: good/fake-a mean P = mean R = 0.5; good/fake-b P 2/3, R 1/2; vague/fake-a 0;
    # vague/fake-b P 1, R 1/2.
    assert tems[("good", "openai:fake-a")] == pytest.approx(0.5)
    assert tems[("good", "openai:fake-b")] == pytest.approx(tem.f1(2 / 3, 0.5))
    assert tems[("vague", "openai:fake-a")] == 0.0
    assert tems[("vague", "openai:fake-b")] == pytest.approx(tem.f1(1.0, 0.5))
    (pair,) = summary["agreement"]["pairs"]
    good_pair = pair["systems"]["good"]
    assert good_pair["tem_relations"]["n_pairs"] == 10
    assert good_pair["tem_relations"]["kappa"] == pytest.approx(-0.42 / 0.58)
    assert good_pair["items"]["tem_f1"]["pearson"] == pytest.approx(
        _pearson([1.0, 0.5, 0.0], [0.5, 0.5, 2 / 3])
    )
    assert pair["ranking"]["TEM"]["tau"] == pytest.approx(-1.0)
    md = (out / "report.md").read_text()
    assert (
        "## Judge agreement" in md and "### Ranking of the systems: `openai:fake-a` vs `openai:fake-b`" in md
    )
    for system in ("good", "vague"):
        for judge in ("openai_fake-a", "openai_fake-b"):
            assert (out / "runs" / system / judge / "report.md").is_file()
    # One shared cache: each judge's answers are kept apart (its key names the model), and the reference
    # captions' events, asked by both systems' runs, are asked once per judge.
    assert (out / "judge_cache").is_dir()
    for judge in ("openai_fake-a", "openai_fake-b"):
        calls = json.loads((out / "runs" / "vague" / judge / "report.json").read_text())["judge_calls"]
        assert calls["hits"] >= 3, "the reference events come from the good run's answers"
    assert asked <= 2 * (3 + 3 + 3) + 2 * (3 + 3)


def test_the_nolexicon_variant_is_the_embedded_judge_without_its_lexicon(embedded_judge) -> None:
    from evaluation.judges import build_judge

    config = parse_judge_spec("embedded-nolexicon")
    assert config.kind == "embedded" and config.embedded.lexicon is False
    plain = build_judge(config)
    assert plain.name == embedded_judge.name + "-nolexicon"
    assert plain.stage_version("tem_relations") != embedded_judge.stage_version("tem_relations")
    pred, ref = ["he frowns"], ["he smiles"]
    assert embedded_judge.relations(pred, ref) == [["opposite"]]
    assert plain.relations(pred, ref) == [["unrelated"]]  # no antonyms without the lexicon
    caption = "He blinks, then he smiles and nods."
    assert plain.events(caption) == embedded_judge.events(caption)  # the same events either way
    sim = float((plain.embed(["he blinks"]) @ plain.embed(["he blinks twice"]).T)[0, 0])
    expected = "same" if sim >= plain.config.same_threshold else "unrelated"
    assert plain.relations(["he blinks"], ["he blinks twice"]) == [[expected]]


def test_prediction_files_name_the_systems() -> None:
    pytest.importorskip("ray")
    from jobs.benchmark import _pred_uris, system_names

    assert _pred_uris(["a.json, b/preds.jsonl", "s3://x/c.json"]) == [
        "a.json",
        "b/preds.jsonl",
        "s3://x/c.json",
    ]
    assert _pred_uris("one.json") == ["one.json"] and _pred_uris(None) == []
    names = system_names(["a/preds.jsonl", "b/preds.json", "s3://x/other.json", "c/preds.json"])
    assert names == ["preds", "preds-2", "other", "preds-3"]
