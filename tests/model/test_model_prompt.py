"""Instruction templates, Mistral chat format, chat templates and the <video> placeholder."""

from __future__ import annotations

import pytest

from facetrack.model import prompt

BENCHMARK = (
    "Please provide a detailed description of the facial appearance attributes and expression changes "
    "of the character in the video"
)


def test_instruction_file() -> None:
    assert prompt.benchmark_instruction() == BENCHMARK
    paraphrases = prompt.paraphrases()
    assert 18 <= len(paraphrases) <= 25
    assert len(set(paraphrases)) == len(paraphrases)
    assert BENCHMARK not in paraphrases
    assert all(p.strip() == p and len(p) > 30 for p in paraphrases)
    assert prompt.training_instructions()[0] == BENCHMARK
    assert prompt.system_prompt().startswith("<<SYS>>\n") and prompt.system_prompt().endswith("\n<</SYS>>")


def test_builtin_mistral_format() -> None:
    text = prompt.mistral_chat(
        [
            {"role": "user", "content": "<video>\nQ1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"},
        ],
        system="SYS",
    )
    assert text == "<s>[INST] SYS\n\n<video>\nQ1 [/INST]A1</s>[INST] Q2 [/INST]"
    with pytest.raises(ValueError, match="alternate"):
        prompt.mistral_chat([{"role": "assistant", "content": "x"}], system=None)


def test_caption_prompt_with_real_tokenizer(tokenizer) -> None:
    assert not tokenizer.chat_template  # Mistral's v1 sentencepiece file has no template: built-in format
    text = prompt.caption_prompt(tokenizer, BENCHMARK)
    assert text == f"<s>[INST] {prompt.system_prompt()}\n\n<video>\n{BENCHMARK} [/INST]"
    bare = prompt.caption_prompt(tokenizer, "Describe.", system=None)
    assert bare == "<s>[INST] <video>\nDescribe. [/INST]"


def test_tokenize_with_video_marks_one_position(tokenizer) -> None:
    text = prompt.caption_prompt(tokenizer, "Describe the face.", system=None)
    ids = prompt.tokenize_with_video(text, tokenizer)
    assert ids.count(prompt.VIDEO_TOKEN_INDEX) == 1
    assert ids[0] == tokenizer.bos_token_id == 1
    p = ids.index(prompt.VIDEO_TOKEN_INDEX)
    assert tokenizer.decode(ids[:p]).replace(" ", "") == "<s>[INST]"
    assert tokenizer.decode(ids[p + 1 :]).strip() == "Describe the face. [/INST]"
    assert all(0 <= i < 32000 for i in ids if i != prompt.VIDEO_TOKEN_INDEX)


class _TemplateTokenizer:
    """Only the chat-template part of a tokenizer (the template engine is the real one)."""

    def __init__(self, template: str) -> None:
        self.chat_template = template
        self.bos_token, self.eos_token = "<s>", "</s>"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(
            conversations=[messages],
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )
        return rendered[0]


STRICT = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
WITH_SYSTEM = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] + ' ' }}"
    "{% elif m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% endif %}{% endfor %}"
)


def test_tokenizer_chat_template_is_used() -> None:
    tok = _TemplateTokenizer(WITH_SYSTEM)
    assert prompt.caption_prompt(tok, "Q", system="S") == "<s>S [INST] <video>\nQ [/INST]"


def test_template_refusing_system_gets_it_folded() -> None:
    tok = _TemplateTokenizer(STRICT)
    assert prompt.caption_prompt(tok, "Q", system="S") == "<s>[INST] S\n\n<video>\nQ [/INST]"
