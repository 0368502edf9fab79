"""CIDEr with tokenizer=ptb on a machine without Java: a one-line error, not a traceback."""

from __future__ import annotations

import pytest

from evaluation import ngram
from facetrack.cli import main

pytest.importorskip("pycocoevalcap")


def test_ptb_without_java_is_one_clear_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ValueError, match="needs Java: no 'java' on PATH"):
        ngram.cider({"a": "he smiles"}, {"a": "he smiles"}, tokenizer="ptb")


def test_tem_command_reports_missing_java_in_one_line(monkeypatch, tmp_path, capsys) -> None:
    pred, ref = tmp_path / "pred.jsonl", tmp_path / "ref.jsonl"
    pred.write_text('{"id": "a", "caption": "He smiles."}\n')
    ref.write_text('{"id": "a", "caption": "He smiles."}\n')
    config = tmp_path / "eval.yaml"
    config.write_text("tokenizer: ptb\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    code = main(
        [
            "tem",
            "--pred",
            str(pred),
            "--ref",
            str(ref),
            "--out",
            str(tmp_path / "out"),
            "--metrics",
            "cider",
            "--config",
            str(config),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "needs Java" in err and "\n" not in err and "Traceback" not in err
