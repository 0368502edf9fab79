"""Reading benchmark files, CIDEr/ROUGE-L, the report files, and ``facetrack tem`` offline end to end."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from evaluation import ngram
from evaluation.data import DataError, Item, pair, parse_records
from evaluation.pipeline import EvalConfig, evaluate
from evaluation.published import load_published
from tests.evaluation.eval_helpers import CAPTIONS, ScriptedJudge

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- data -------------------------------------------------------------------------------------------
def test_records_from_json_list_jsonl_and_wrapped_list() -> None:
    rows = [{"id": 1, "video": "a.mp4", "caption": "x"}, {"id": "2", "caption": "y"}]
    assert parse_records(json.dumps(rows)) == rows
    assert parse_records("\n".join(json.dumps(r) for r in rows) + "\n") == rows
    assert parse_records(json.dumps({"items": rows})) == rows
    assert parse_records("") == []


@pytest.mark.parametrize(
    "text, message",
    [('{"id": 1}\n{oops', "line 2"), ('[{"caption": "x"}]', "no 'id'"), ("[3]", "not a JSON object")],
)
def test_bad_records_are_reported(text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_records(text, "preds.jsonl")


def test_pairing_lists_what_cannot_be_scored() -> None:
    refs = [{"id": i, "video": f"{i}.mp4", "caption": f"ref {i}"} for i in ("a", "b", "c", "d")]
    preds = [
        {"id": "a", "caption": "pred a"},
        {"id": "a", "caption": "again"},
        {"id": "b", "caption": None, "error": "decode: broken file"},
        {"id": "d", "caption": "pred d"},
        {"id": "zz", "caption": "not in the benchmark"},
    ]
    p = pair(preds, refs)
    assert [(it.id, it.prediction, it.video) for it in p.items] == [
        ("a", "pred a", "a.mp4"),
        ("d", "pred d", "d.mp4"),
    ]
    assert p.missing_ids == ["c"] and p.failed_ids == ["b"] and p.extra_ids == ["zz"]
    assert p.duplicate_ids == ["a"] and p.references["c"] == "ref c"
    with pytest.raises(DataError, match="no caption"):
        pair([], [{"id": "x"}])


# -- CIDEr / ROUGE-L ------------------------------------------------------------------------------------
def test_rouge_l_and_cider_behave() -> None:
    refs = {k: v for k, v in CAPTIONS.items()}
    same_r, per_item = ngram.rouge_l(refs, refs)
    assert same_r == pytest.approx(1.0) and set(per_item) == set(refs)
    shifted = dict(zip(refs, list(refs.values())[1:] + list(refs.values())[:1]))
    other_r, _ = ngram.rouge_l(shifted, refs)
    assert other_r < 0.5
    same_c, _ = ngram.cider(refs, refs)
    other_c, _ = ngram.cider(shifted, refs)
    assert same_c > 5 * other_c and other_c >= 0
    assert ngram.cider({}, refs) == (None, {})


def test_both_rouge_implementations_agree_roughly() -> None:
    refs = dict(CAPTIONS)
    shifted = dict(zip(refs, list(refs.values())[1:] + list(refs.values())[:1]))
    coco, _ = ngram.rouge_l(shifted, refs)
    google, _ = ngram.rouge_l(shifted, refs, implementation="rouge-score")
    assert 0 < coco < 1 and abs(coco - google) < 0.05
    for implementation in ("coco", "rouge-score"):
        assert ngram.rouge_l({"a": ""}, {"a": "he smiles"}, implementation=implementation)[0] == 0.0


def test_tokenizer_drops_punctuation_and_case() -> None:
    assert ngram.tokenize("He smiles, then she's SAD!\nEnd.") == "he smiles then she's sad end"


@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's PTB tokenizer needs Java")
def test_ptb_tokenizer_gives_comparable_scores() -> None:
    refs = dict(CAPTIONS)
    simple, _ = ngram.rouge_l(refs, refs, tokenizer="simple")
    ptb, _ = ngram.rouge_l(refs, refs, tokenizer="ptb")
    assert simple == pytest.approx(ptb)


# -- reports ---------------------------------------------------------------------------------------------
def scripted_pairing():
    events = {"pa": ["p1", "p2"], "ra": ["r1", "r2", "r3"], "pb": ["q1"], "rb": ["s1"]}
    relations = {
        (("p1", "p2"), ("r1", "r2", "r3")): [[0, 0, "same"], [1, 2, "same"], [1, 1, "opposite"]],
        (("q1",), ("s1",)): [[0, 0, "same"]],
    }
    labels = {
        "ra": {"p1": "entailment", "p2": "neutral"},
        "pa": {"r1": "entailment", "r2": "neutral", "r3": "neutral"},
    }
    labels |= {"rb": {"q1": "entailment"}, "pb": {"s1": "entailment"}}
    judge = ScriptedJudge(
        events, relations, labels, scores={"correctness": 4, "detail": 3, "context": 5, "temporal": 2}
    )
    refs = [
        {"id": "a", "video": "va.mp4", "caption": "ra"},
        {"id": "b", "video": "vb.mp4", "caption": "rb"},
        {"id": "m", "video": "vm.mp4", "caption": "rm"},
    ]
    preds = [{"id": "a", "caption": "pa"}, {"id": "b", "caption": "pb"}, {"id": "x", "caption": "zz"}]
    return judge, pair(preds, refs)


def test_reports_hold_the_table_items_and_plot(tmp_path: Path) -> None:
    judge, pairing = scripted_pairing()
    out = tmp_path / "out"
    cfg = EvalConfig(model_name="my-model", compare_paper=True, cache="off")
    report = evaluate(pairing, cfg, str(out), judge=judge, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["items.csv", "report.json", "report.md", "tem_plot.png"]
    saved = json.loads((out / "report.json").read_text())
    assert saved["table"] == report["table"]
    table = saved["table"]
    assert table["TEM"] == pytest.approx(2 * 1.0 * (5 / 6) / (1.0 + 5 / 6))  # P: 1, 1; R: 2/3, 1
    assert table["Correctness"] == 4 and table["Temporal"] == 2
    assert table["AutoDQ"] == pytest.approx(2 * 0.75 * (2 / 3) / (0.75 + 2 / 3))
    assert saved["counts"]["missing_ids"] == ["m"] and saved["counts"]["extra_ids"] == ["x"]
    assert (
        saved["config"]["model_name"] == "my-model"
        and saved["published"]["rows"][0]["model"] == "FaceTrack-MM"
    )
    assert saved["judge_calls"]["calls"] == judge.count() == 2 * (3 + 4 + 4)

    md = (out / "report.md").read_text()
    header = "| Model | Correctness | Detail | Context | Temporal | CIDEr | ROUGE-L | AutoDQ | TEM |"
    assert header in md
    assert "| my-model (this run) | 4.000 | 3.000 | 5.000 | 2.000 |" in md
    assert "| FaceTrack-MM (paper) | 4.420 | 4.300 | 4.600 | 4.260 | 0.418 | 0.473 | 0.483 | 0.364 |" in md
    assert "| Claude3.5-Sonnet (paper) | - | - | - | - | - | - | - | 0.298-0.307 |" in md
    assert "arXiv:2501.07978" in md and "Missing predictions (1): `m`" in md
    assert "Approximate judge" not in md  # the scripted judge does not call itself approximate

    rows = list(csv.DictReader(io.StringIO((out / "items.csv").read_text())))
    assert [r["id"] for r in rows] == ["a", "b"]
    a = rows[0]
    assert json.loads(a["pred_events"]) == ["p1", "p2"] and json.loads(a["ref_events"]) == ["r1", "r2", "r3"]
    assert json.loads(a["relations"]) == [[0, 0, "same"], [1, 1, "opposite"], [1, 2, "same"]]
    assert json.loads(a["lcs_pairs"]) == [[0, 0], [1, 2]] and float(a["tem_f1"]) == pytest.approx(0.8)
    assert a["video"] == "va.mp4" and json.loads(a["autodq_pred_labels"]) == ["entailment", "neutral"]
    assert (out / "tem_plot.png").read_bytes().startswith(PNG_MAGIC)


def test_missing_predictions_can_score_zero(tmp_path: Path) -> None:
    judge, pairing = scripted_pairing()
    report = evaluate(
        pairing, EvalConfig(missing="zero", cache="off"), str(tmp_path), judge=judge, progress=False
    )
    tem = report["metrics"]["tem"]
    assert tem["n_scored"] == 3 and tem["n_missing_scored_zero"] == 1
    assert tem["precision"] == pytest.approx((1 + 1 + 0) / 3)
    assert report["metrics"]["vcgpt"]["correctness"] == pytest.approx(8 / 3)
    assert "scored 0 in every metric" in (tmp_path / "report.md").read_text()
    assert set(report["per_item_ngram"]["rouge_l"]) == {"a", "b", "m"}
    assert report["per_item_ngram"]["rouge_l"]["m"] == 0.0


def test_ngram_only_runs_make_no_judge_call(tmp_path: Path) -> None:
    judge, pairing = scripted_pairing()
    report = evaluate(
        pairing, EvalConfig(metrics=["cider", "rouge_l"]), str(tmp_path), judge=judge, progress=False
    )
    assert judge.count() == 0 and report["table"]["TEM"] is None and report["table"]["ROUGE-L"] is not None


def test_approximate_judges_are_flagged_in_the_report(tmp_path: Path) -> None:
    judge, pairing = scripted_pairing()
    judge.approximate = True
    judge.describe = lambda: {"name": "scripted", "approximate": True, "note": "rules, not an LLM"}
    evaluate(
        pairing, EvalConfig(metrics=["tem"], compare_paper=True), str(tmp_path), judge=judge, progress=False
    )
    md = (tmp_path / "report.md").read_text()
    assert "**Approximate judge.** rules, not an LLM" in md and "not comparable" in md


def test_published_rows_name_their_source() -> None:
    data = load_published()
    assert "2501.07978" in data["source"] + data["url"]
    rows = {r["model"]: r for r in data["rows"]}
    assert rows["FaceTrack-MM"]["TEM"] == 0.364 and rows["GPT-4o"]["TEM"] == [0.291, 0.303]
    assert rows["VideoLLaMA2"]["AutoDQ"] == 0.344


def test_unknown_metric_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        EvalConfig(metrics=["bleu"])


# -- facetrack tem, offline --------------------------------------------------------------------------------
def _files(tmp_path: Path) -> tuple[str, str]:
    refs = [{"id": k, "video": f"{k}.mp4", "caption": v} for k, v in CAPTIONS.items()]
    preds = [
        {"id": "man_smile", "caption": CAPTIONS["man_smile"]},
        {"id": "woman_frown", "caption": CAPTIONS["boy_talk"]},
    ]
    (tmp_path / "ref.json").write_text(json.dumps(refs))
    (tmp_path / "pred.jsonl").write_text("\n".join(json.dumps(p) for p in preds))
    return str(tmp_path / "pred.jsonl"), str(tmp_path / "ref.json")


def test_facetrack_tem_offline_with_the_embedded_judge(tmp_path: Path, embedded_judge, capsys) -> None:
    from facetrack import cli

    pred, ref = _files(tmp_path)
    out = tmp_path / "out"
    args = ["tem", "--pred", pred, "--ref", ref, "--out", str(out), "--no-progress", "--compare-paper"]
    assert cli.main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["judge"]["approximate"] is True and report["judge"]["name"].startswith("embedded:")
    f1 = {row["id"]: float(row["tem_f1"]) for row in csv.DictReader((out / "items.csv").open())}
    assert f1["man_smile"] == 1.0 and f1["woman_frown"] < 0.3
    assert report["counts"]["missing_ids"] == ["boy_talk"]
    assert "Approximate judge" in (out / "report.md").read_text()
    assert "TEM" in capsys.readouterr().out
    # The warm re-run answers everything from the cache and never loads the sentence model.
    assert cli.main(args) == 0
    again = json.loads((out / "report.json").read_text())
    first = report["judge_calls"]
    assert (
        again["judge_calls"]["calls"] == 0 and again["judge_calls"]["hits"] == first["calls"] + first["hits"]
    )
    assert again["judge"]["sentence_model_loaded"] is False
    assert again["metrics"]["tem"] == report["metrics"]["tem"]


def test_facetrack_tem_reports_bad_input(tmp_path: Path, capsys) -> None:
    from facetrack import cli

    pred, ref = _files(tmp_path)
    assert (
        cli.main(["tem", "--pred", str(tmp_path / "nope.json"), "--ref", ref, "--out", str(tmp_path / "o")])
        == 2
    )
    assert "nope.json" in capsys.readouterr().err
    assert (
        cli.main(
            ["tem", "--pred", pred, "--ref", ref, "--out", str(tmp_path / "o"), "tem.opposite=sometimes"]
        )
        == 2
    )
    assert "tem.opposite" in capsys.readouterr().err
    assert (
        cli.main(["tem", "--pred", pred, "--ref", ref, "--out", str(tmp_path / "o"), "--metrics", "bleu"])
        == 2
    )


def test_items_carry_video_paths() -> None:
    assert Item(id="1", prediction="p", reference="r", video="v.mp4").video == "v.mp4"


def test_main_table_shows_scored_failed_excluded_counts() -> None:
    from evaluation.report import _count_lines

    metrics = {
        "tem": {"n_items": 5, "n_scored": 3, "n_failed": 1},
        "vcgpt": {"n_items": 5, "n_scored_detail": 4, "failed_ids_detail": ["x"], "n_scored_context": 5},
    }
    text = "\n".join(_count_lines(metrics))
    assert "TEM 3 scored / 1 failed / 2 excluded" in text
    assert "VideoChatGPT 4 scored / 1 failed" in text
