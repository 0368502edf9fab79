"""Instruction templates, the chat format and tokenisation with the ``<video>`` placeholder.

Light module (no torch): training data code and the captioner share it, so a caption is asked exactly as
the model was taught. The instruction texts live in ``instructions.json`` next to this file: the
benchmark's instruction, about twenty paraphrases for training, and VideoLLaMA2's system prompt.

The chat format is the tokenizer's own chat template when it has one (a VideoLLaMA2 checkpoint ships
one); a template that refuses a system message gets it folded into the first user turn. A tokenizer
without a template gets Mistral's instruct format: ``<s>[INST] {system}\\n\\n{user} [/INST]{answer}</s>``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

VIDEO_TOKEN = "<video>"
"""Placeholder in the prompt text where the visual tokens (video, then face) are spliced in."""
VIDEO_TOKEN_INDEX = -201
"""The placeholder's id in token sequences (VideoLLaMA2's value); never a real vocabulary id."""

_DEFAULT = object()


@functools.cache
def _texts() -> dict[str, Any]:
    with resources.files("facetrack.model").joinpath("instructions.json").open("r", encoding="utf-8") as f:
        return json.load(f)


def benchmark_instruction() -> str:
    """The instruction FEC-Bench asks with (the captioner's default prompt)."""
    return _texts()["benchmark"]


def paraphrases() -> list[str]:
    """Paraphrases of the benchmark instruction, for training."""
    return list(_texts()["paraphrases"])


def training_instructions() -> list[str]:
    """The training pool: the benchmark instruction followed by its paraphrases."""
    return [benchmark_instruction(), *paraphrases()]


def system_prompt() -> str:
    """VideoLLaMA2's system prompt for its Mistral-based models."""
    return _texts()["system"]


def user_content(instruction: str) -> str:
    """The first user turn: the placeholder on its own line, then the instruction (VideoLLaMA2's layout)."""
    return f"{VIDEO_TOKEN}\n{instruction.strip()}"


def mistral_chat(
    messages: Sequence[dict[str, str]],
    system: str | None,
    bos: str = "<s>",
    eos: str = "</s>",
    add_generation_prompt: bool = True,
) -> str:
    """Mistral's instruct format; the system text opens the first user turn.

    ``add_generation_prompt`` is accepted for symmetry with chat templates: the format ends a user turn
    with ``[/INST]`` either way, which is where the answer starts.
    """
    out = [bos]
    first_user = True
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"]
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(f"conversation roles must alternate user/assistant; message {i} is {role!r}")
        if role == "user":
            if first_user and system:
                content = f"{system}\n\n{content}"
            first_user = False
            out.append(f"[INST] {content} [/INST]")
        else:
            out.append(f"{content}{eos}")
    return "".join(out)


def format_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    system: str | None | object = _DEFAULT,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for ``messages`` (``[{"role": "user"|"assistant", "content": ...}, ...]``).

    Args:
        tokenizer: a transformers tokenizer; its ``chat_template`` is used when it has one.
        messages: alternating user/assistant turns, starting with the user.
        system: system text; defaults to :func:`system_prompt`; ``None`` for none.
        add_generation_prompt: end with the assistant's turn opening.
    """
    if system is _DEFAULT:
        system = system_prompt()
    messages = [dict(m) for m in messages]
    if getattr(tokenizer, "chat_template", None):
        from jinja2.exceptions import TemplateError

        with_system = ([{"role": "system", "content": system}] if system else []) + messages
        try:
            return tokenizer.apply_chat_template(
                with_system, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except TemplateError:
            if not system:
                raise
            folded = [dict(m) for m in messages]
            folded[0]["content"] = f"{system}\n\n{folded[0]['content']}"
            return tokenizer.apply_chat_template(
                folded, tokenize=False, add_generation_prompt=add_generation_prompt
            )
    bos = getattr(tokenizer, "bos_token", None) or ""
    eos = getattr(tokenizer, "eos_token", None) or ""
    return mistral_chat(messages, system, bos=bos, eos=eos, add_generation_prompt=add_generation_prompt)


def caption_prompt(tokenizer: Any, instruction: str, system: str | None | object = _DEFAULT) -> str:
    """The full prompt text that asks for a caption of one video with ``instruction``."""
    return format_chat(tokenizer, [{"role": "user", "content": user_content(instruction)}], system=system)


def tokenize_with_video(text: str, tokenizer: Any) -> list[int]:
    """Token ids of ``text`` with each ``<video>`` replaced by :data:`VIDEO_TOKEN_INDEX`.

    Special tokens written in the text (``<s>``) are recognised; none are added.
    """
    ids: list[int] = []
    for i, chunk in enumerate(text.split(VIDEO_TOKEN)):
        if i > 0:
            ids.append(VIDEO_TOKEN_INDEX)
        if chunk:
            ids.extend(tokenizer(chunk, add_special_tokens=False).input_ids)
    return ids
