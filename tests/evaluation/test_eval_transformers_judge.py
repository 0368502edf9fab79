"""The local transformers judge on a tiny random Mistral saved to disk with the real Mistral tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="needs torch (pip install 'facetrack[model]')")
transformers = pytest.importorskip(
    "transformers", reason="needs transformers (pip install 'facetrack[model]')"
)

from evaluation.judges import JudgeConfig, build_judge  # noqa: E402
from evaluation.judges.base import JudgeError  # noqa: E402
from evaluation.judges.local_hf import TransformersChat, TransformersJudgeConfig  # noqa: E402

MESSAGES = [
    {"role": "system", "content": "You answer with JSON only."},
    {"role": "user", "content": "Score this caption: the man smiles."},
]


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from facetrack.model.tiny import write_mistral_tokenizer

    out = tmp_path_factory.mktemp("tiny-judge-llm")
    write_mistral_tokenizer(out)
    torch.manual_seed(0)
    config = transformers.MistralConfig(
        vocab_size=32000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    )
    transformers.MistralForCausalLM(config).save_pretrained(out)
    return out


def chat(path: Path, **kw) -> TransformersChat:
    return TransformersChat(TransformersJudgeConfig(model=str(path), device="cpu", max_new_tokens=8, **kw))


def test_a_local_model_answers_deterministically(tiny_llm: Path) -> None:
    backend = chat(tiny_llm)
    first = backend.complete(MESSAGES)
    assert isinstance(first, str) and first == backend.complete(MESSAGES)
    assert "Score this caption" not in first, "only the generated continuation is returned"
    assert backend.describe()["device"] == "cpu" and backend.name == f"transformers:{tiny_llm}"
    prompt = backend._tokenizer.decode(backend._prompt_ids(MESSAGES)[0])
    assert "System: You answer with JSON only." in prompt and prompt.rstrip().endswith("Assistant:")


def test_the_tokenizers_chat_template_is_used(tiny_llm: Path, tmp_path: Path) -> None:
    folder = tmp_path / "with-template"
    shutil.copytree(tiny_llm, folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = (
        "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}<reply>"
    )
    config_path.write_text(json.dumps(config))
    backend = chat(folder)
    backend.setup()
    prompt = backend._tokenizer.decode(backend._prompt_ids(MESSAGES)[0])
    assert "<system> You answer with JSON only." in prompt and prompt.rstrip().endswith("<reply>")
    assert isinstance(backend.complete(MESSAGES), str)


def test_unusable_output_fails_cleanly_after_re_asking(tiny_llm: Path) -> None:
    judge = build_judge(
        JudgeConfig(
            kind="transformers",
            transformers=TransformersJudgeConfig(model=str(tiny_llm), device="cpu", max_new_tokens=6),
            max_parse_retries=1,
        )
    )
    assert judge.approximate is False and judge.name.startswith("transformers:")
    with pytest.raises(JudgeError, match="after 2 attempt"):
        judge.ask("vcgpt_detail", {"question": "q", "prediction": "he smiles", "reference": "he smiles"})


def test_a_model_is_required() -> None:
    with pytest.raises(ValueError, match="judge.transformers.model"):
        build_judge(JudgeConfig(kind="transformers"))
