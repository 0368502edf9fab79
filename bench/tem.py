"""TEM scoring speed with the embedded judge: items per second cold and warm (judge cache), calls per item.

    python bench/tem.py --ref FEC_BENCH_REFERENCES.json [--limit 200] [--json tem_bench.json]

The references may also come from the FACETRACK_BENCH_REFS environment variable; without either the
benchmark is skipped. Predictions are made from the references themselves: each item's caption with its
temporal sentences in reverse order (same content, different order), which is the work a real run does.
It measures, for TEM alone and for all metrics:

- judging throughput in this process, cold (empty cache; the sentence model load is timed apart) and
  warm (a new judge on the filled cache);
- the wall time of the whole ``facetrack tem`` command in a fresh interpreter, cold and warm;
- judge calls per item in both runs;

and, as a sanity check of the embedded judge, the corpus TEM of each caption against itself, against
its own sentences reversed and shuffled, and against another item's caption. Prints a table and writes
the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_report  # noqa: E402

REFS_ENV = "FACETRACK_BENCH_REFS"


def _reversed(caption: str) -> str:
    from evaluation.judges.facial_rules import segments

    segs = segments(caption)
    return " ".join([segs[0], *segs[1:][::-1]]) if len(segs) > 2 else " ".join(segs[::-1])


def _shuffled(caption: str, rng: random.Random) -> str:
    from evaluation.judges.facial_rules import segments

    segs = segments(caption)
    body = segs[1:]
    rng.shuffle(body)
    return " ".join([segs[0], *body])


def in_process(
    refs: list[dict[str, Any]], preds: list[dict[str, Any]], metrics: list[str], work: Path
) -> dict:
    """Cold and warm judging in this process (model load timed apart)."""
    from evaluation.data import pair
    from evaluation.judges.embedded import EmbeddedJudge
    from evaluation.pipeline import EvalConfig, evaluate

    pairing = pair(preds, refs)
    cache = work / f"cache-{'-'.join(metrics)}"
    config = EvalConfig(metrics=metrics, cache=str(cache))
    judge = EmbeddedJudge()
    t0 = time.perf_counter()
    judge.setup()
    load_s = time.perf_counter() - t0
    cold = evaluate(pairing, config, str(work / "cold"), judge=judge, progress=False)
    warm_judge = EmbeddedJudge()
    warm = evaluate(pairing, config, str(work / "warm"), judge=warm_judge, progress=False)
    n = len(pairing.items)
    cold_s, warm_s = cold["timings"]["judging_s"], warm["timings"]["judging_s"]
    return {
        "items": n,
        "model_load_s": load_s,
        "cold_judging_s": cold_s,
        "cold_items_per_s": n / cold_s,
        "cold_calls_per_item": cold["judge_calls"]["calls_per_item"],
        "warm_judging_s": warm_s,
        "warm_items_per_s": n / warm_s,
        "warm_calls_per_item": warm["judge_calls"]["calls_per_item"],
        "warm_model_loaded": warm_judge.describe()["sentence_model_loaded"],
        "speedup_judging": cold_s / warm_s,
        "speedup_judging_incl_model_load": (cold_s + load_s) / warm_s,
        "table": cold["table"],
    }


def cli_runs(pred_path: Path, ref_path: Path, metrics: list[str], work: Path) -> dict:
    """Wall time of ``facetrack tem`` in a fresh interpreter, cold then warm on the same output."""
    out = work / f"cli-{'-'.join(metrics)}"
    cmd = [sys.executable, "-m", "facetrack.cli", "tem", "--pred", str(pred_path), "--ref", str(ref_path)]
    cmd += ["--out", str(out), "--metrics", ",".join(metrics), "--no-progress"]
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
    report = json.loads((out / "report.json").read_text())
    return {
        "cold_wall_s": times[0],
        "warm_wall_s": times[1],
        "speedup_wall": times[0] / times[1],
        "warm_calls": report["judge_calls"]["calls"],
    }


def quality(refs: list[dict[str, Any]]) -> dict[str, float]:
    """Corpus TEM of captions against themselves, their sentences reversed or shuffled, another caption."""
    from evaluation import tem
    from evaluation.judges.embedded import EmbeddedJudge

    judge = EmbeddedJudge()
    rng = random.Random(0)
    out = {}
    variants = {
        "self": lambda k, c: c,
        "reversed_sentences": lambda k, c: _reversed(c),
        "shuffled_sentences": lambda k, c: _shuffled(c, rng),
        "other_item": lambda k, c: refs[(k + len(refs) // 2) % len(refs)]["caption"],
    }
    for name, make in variants.items():
        items = [
            tem.judge_item(judge, str(r["id"]), make(k, r["caption"]), r["caption"], tem.TemConfig())
            for k, r in enumerate(refs)
        ]
        agg = tem.aggregate(items)
        out[name] = agg["tem"]
        out[f"{name}_mean_item_f1"] = agg["mean_item_f1"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ref", default=os.environ.get(REFS_ENV), help=f"reference captions (or ${REFS_ENV})"
    )
    parser.add_argument("--limit", type=int, default=200, help="use the first N references (default 200)")
    parser.add_argument("--json", default="tem_bench.json", help="where to write the numbers")
    parser.add_argument("--no-cli", action="store_true", help="skip the fresh-interpreter command timings")
    args = parser.parse_args(argv)
    if not args.ref or not Path(args.ref).is_file():
        print(f"skipped: no reference captions (pass --ref or set {REFS_ENV})")
        write_report({"skipped": True}, args.json)
        return 0
    refs = json.loads(Path(args.ref).read_text())[: args.limit]
    preds = [{"id": r["id"], "caption": _reversed(r["caption"])} for r in refs]
    results: dict[str, Any] = {"n_references": len(refs), "cpu_count": os.cpu_count(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="tem-bench-") as tmp:
        work = Path(tmp)
        pred_path, ref_path = work / "pred.json", work / "ref.json"
        pred_path.write_text(json.dumps(preds))
        ref_path.write_text(json.dumps(refs))
        for metrics in (["tem"], ["tem", "autodq", "cider", "rouge_l", "vcgpt"]):
            name = "tem" if metrics == ["tem"] else "all"
            run = in_process(refs, preds, metrics, work / name)
            if not args.no_cli:
                run["cli"] = cli_runs(pred_path, ref_path, metrics, work / name)
            results["runs"][name] = run
    results["quality_tem"] = quality(refs)

    print(f"\nTEM benchmark, embedded judge, {len(refs)} items, {os.cpu_count()} CPUs")
    head = (
        f"{'metrics':8} {'load s':>7} {'cold it/s':>10} {'warm it/s':>10} {'x judge':>8} "
        f"{'calls/it cold':>14} {'warm':>5} {'cli cold s':>11} {'cli warm s':>11} {'x cli':>6}"
    )
    print(head)
    print("-" * len(head))
    for name, r in results["runs"].items():
        cli = r.get("cli", {})
        print(
            f"{name:8} {r['model_load_s']:7.1f} {r['cold_items_per_s']:10.1f} {r['warm_items_per_s']:10.0f} "
            f"{r['speedup_judging']:8.0f} {r['cold_calls_per_item']:14.2f} {r['warm_calls_per_item']:5.1f} "
            f"{cli.get('cold_wall_s', float('nan')):11.1f} {cli.get('warm_wall_s', float('nan')):11.1f} "
            f"{cli.get('speedup_wall', float('nan')):6.1f}"
        )
    q = results["quality_tem"]
    print(
        "\ncorpus TEM (embedded judge): self {self:.3f}, reversed sentences {reversed_sentences:.3f}, "
        "shuffled sentences {shuffled_sentences:.3f}, another item {other_item:.3f}".format(**q)
    )
    write_report(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
