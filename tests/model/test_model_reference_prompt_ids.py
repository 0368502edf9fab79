"""Prompt text and token ids as VideoLLaMA2 v1.x built them, for the benchmark instruction and paraphrases.

``golden/videollama2_prompt_ids.json`` holds what VideoLLaMA2 v1.0's ``llama2`` conversation and its
multimodal tokeniser gave with the slow sentencepiece tokenizer (transformers 4.40) on the
``tokenizer.model.v1`` that ships in mistral-common (equal to sentencepiece run on each chunk, with the
beginning-of-sequence id first). Our prompt and ids must be the same with only ``tokenizer.model`` in the
folder and with a ``tokenizer.json`` beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

GOLDEN = Path(__file__).parent / "golden" / "videollama2_prompt_ids.json"
CASES = json.loads(GOLDEN.read_text())["cases"]


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from transformers import AutoTokenizer

    from facetrack.model.tiny import write_mistral_tokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    slow = write_mistral_tokenizer(root / "model_only")
    fast = write_mistral_tokenizer(root / "with_json")
    AutoTokenizer.from_pretrained(str(fast)).save_pretrained(str(fast))
    assert (fast / "tokenizer.json").is_file() and not (slow / "tokenizer.json").exists()
    return {"model_only": slow, "with_json": fast}


def test_golden_ids_are_sentencepiece_on_mistral_commons_file() -> None:
    from facetrack.model.tiny import mistral_tokenizer_file

    sp = spm.SentencePieceProcessor(model_file=str(mistral_tokenizer_file()))
    assert len(CASES) >= 5
    for case in CASES:
        before, after = case["prompt"].split("<video>")
        assert case["input_ids"] == [1, *sp.encode(before), -201, *sp.encode(after)]


@pytest.mark.parametrize("case", CASES, ids=[f"instruction{i}" for i in range(len(CASES))])
def test_llama2_prompt_text(case: dict) -> None:
    from facetrack.model.prompt import llama2_prompt

    assert llama2_prompt(case["instruction"]) == case["prompt"]


@pytest.mark.parametrize("layout", ["model_only", "with_json"])
@pytest.mark.parametrize("case", CASES, ids=[f"instruction{i}" for i in range(len(CASES))])
def test_llama2_prompt_ids(case: dict, layout: str, tokenizer_dirs: dict[str, Path]) -> None:
    from facetrack.model.language_model import load_tokenizer
    from facetrack.model.prompt import prompt_ids

    tokenizer = load_tokenizer(tokenizer_dirs[layout])
    assert prompt_ids(case["prompt"], tokenizer, style="llama2") == case["input_ids"]
