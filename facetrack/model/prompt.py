"""Instruction templates, the chat format and tokenisation with the ``<video>`` placeholder.

Light module (no torch): training data code and the captioner share it, so a caption is asked exactly as
the model was taught. The instruction texts live in ``instructions.json`` next to this file: the
benchmark's instruction, about twenty paraphrases for training, and VideoLLaMA2's system prompt.

Two prompt styles:

- ``llama2``: what VideoLLaMA2 v1.x checkpoints (Mistral and Mixtral based) were run with by their
  authors, its ``llama2`` conversation template: ``[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n<video>\\n
  {instruction} [/INST]``, the system text with a blank line between its two paragraphs, and the
  beginning-of-sequence id put in front of the ids (:func:`llama2_prompt`).
- ``chat``: the tokenizer's own chat template when it has one (later checkpoints ship one); a template that
  refuses a system message gets it folded into the first user turn. A tokenizer without a template gets
  Mistral's instruct format: ``<s>[INST] {system}\\n\\n{user} [/INST]{answer}</s>``.

Token ids are what the slow sentencepiece tokenizer (transformers 4's ``LlamaTokenizer``, ``legacy``, as
VideoLLaMA2 ran it) gives, chunk by chunk around ``<video>`` (:func:`encode`): transformers 5's tokenizer
drops the ``▁`` (28705) of a space after a special token and splits a double space differently.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

VIDEO_TOKEN = "<video>"
"""Placeholder in the prompt text where the visual tokens (video, then face) are spliced in."""
VIDEO_TOKEN_INDEX = -201
"""The placeholder's id in token sequences (VideoLLaMA2's value); never a real vocabulary id."""

_DEFAULT = object()

PromptStyle = Literal["llama2", "chat"]
PROMPT_STYLES: tuple[str, ...] = ("llama2", "chat")


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


def llama2_system_prompt() -> str:
    """The system text of VideoLLaMA2's ``llama2`` conversation template (two paragraphs, a blank line)."""
    return _texts()["llama2_system"]


def llama2_prompt(instruction: str, system: str | None | object = _DEFAULT) -> str:
    """VideoLLaMA2's ``llama2`` template for one question about a video (its ``conv_llama2``).

    ``[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n<video>\\n{instruction} [/INST]``; the template puts no
    ``<s>`` in the text: the ids start with the beginning-of-sequence id (see :func:`prompt_ids`).
    ``system=None`` leaves the system block out.
    """
    if system is _DEFAULT:
        system = llama2_system_prompt()
    opening = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if system else ""
    return f"[INST] {opening}{VIDEO_TOKEN}\n{instruction} [/INST]"


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


def caption_prompt(
    tokenizer: Any, instruction: str, system: str | None | object = _DEFAULT, style: PromptStyle = "chat"
) -> str:
    """The full prompt text that asks for a caption of one video with ``instruction``.

    Args:
        style: ``chat`` (:func:`format_chat`) or ``llama2`` (:func:`llama2_prompt`; there ``system``
            defaults to :func:`llama2_system_prompt`).
    """
    if style == "llama2":
        return llama2_prompt(instruction, system=system)
    if style != "chat":
        raise ValueError(f"prompt style must be one of {', '.join(PROMPT_STYLES)}, got {style!r}")
    return format_chat(tokenizer, [{"role": "user", "content": user_content(instruction)}], system=system)


def prompt_ids(text: str, tokenizer: Any, style: PromptStyle = "chat") -> list[int]:
    """The ids of a caption prompt: :func:`tokenize_with_video`, after the beginning-of-sequence id for
    ``llama2`` (VideoLLaMA2 v1.x tokenised each chunk with it and kept the first one only)."""
    ids = tokenize_with_video(text, tokenizer)
    if style == "llama2" and getattr(tokenizer, "bos_token_id", None) is not None:
        ids = [int(tokenizer.bos_token_id), *ids]
    return ids


def tokenize_with_video(text: str, tokenizer: Any) -> list[int]:
    """Token ids of ``text`` with each ``<video>`` replaced by :data:`VIDEO_TOKEN_INDEX`.

    Each chunk between placeholders is encoded on its own (as VideoLLaMA2 does) with :func:`encode`:
    special tokens written in the text (``<s>``) are recognised; none are added.
    """
    ids: list[int] = []
    for i, chunk in enumerate(text.split(VIDEO_TOKEN)):
        if i > 0:
            ids.append(VIDEO_TOKEN_INDEX)
        if chunk:
            ids.extend(encode(chunk, tokenizer))
    return ids


# ----------------------------------------------------------------------------- slow sentencepiece ids


def sentencepiece_file(tokenizer: Any) -> Path | None:
    """The tokenizer's sentencepiece model (``tokenizer.model``), when it has one on disk."""
    for candidate in (
        getattr(tokenizer, "vocab_file", None),
        os.path.join(str(getattr(tokenizer, "name_or_path", "") or ""), "tokenizer.model"),
    ):
        if candidate and os.path.isfile(str(candidate)):
            return Path(str(candidate))
    return None


@functools.lru_cache(maxsize=8)
def _sentencepiece(path: str, mtime: float):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=path)


def _is_legacy(tokenizer: Any) -> bool:
    """Whether the tokenizer's config asks for the legacy sentencepiece behaviour: transformers 4's
    default when the config does not say (transformers 5 reports ``legacy=False`` then)."""
    legacy = (getattr(tokenizer, "init_kwargs", None) or {}).get("legacy")
    return legacy is None or bool(legacy)


def _special_tokens(tokenizer: Any) -> dict[str, int]:
    """Special and added tokens that the slow tokenizer never splits, with their ids."""
    names: set[str] = set(getattr(tokenizer, "all_special_tokens", None) or [])
    added = getattr(tokenizer, "get_added_vocab", None)
    if callable(added):
        names.update(added())
    out = {}
    for name in names:
        if name:
            token_id = tokenizer.convert_tokens_to_ids(name)
            if token_id is not None:
                out[name] = int(token_id)
    return out


def encoding_backend(tokenizer: Any) -> str:
    """``sentencepiece`` when :func:`encode` reproduces the slow tokenizer from ``tokenizer.model``, else
    ``tokenizer`` (the tokenizer itself: a folder with only ``tokenizer.json``, a non-legacy config or
    a tokenizer that is not sentencepiece-based)."""
    if sentencepiece_file(tokenizer) is None or not _is_legacy(tokenizer):
        return "tokenizer"
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        return "tokenizer"
    return "sentencepiece"


def encode(text: str, tokenizer: Any) -> list[int]:
    """Ids of ``text`` as the slow sentencepiece tokenizer gives them; no special tokens added.

    As transformers 4's slow ``LlamaTokenizer`` (``legacy``): the text is split at special and added
    tokens (``<s>``, ``</s>``, ...), which map to their ids, and every other piece is encoded by
    sentencepiece on its own (with its dummy prefix), so a space after ``<s>`` is ``▁`` (28705) and a
    double space is ``▁`` + a word piece, as VideoLLaMA2 saw them. Without a ``tokenizer.model`` (or with
    a non-legacy config) the tokenizer's own encoding is used.
    """
    if encoding_backend(tokenizer) != "sentencepiece":
        return list(tokenizer(text, add_special_tokens=False).input_ids)
    path = sentencepiece_file(tokenizer)
    assert path is not None
    sp = _sentencepiece(str(path), path.stat().st_mtime)
    special = _special_tokens(tokenizer)
    if not special:
        return list(sp.encode(text))
    pattern = "(" + "|".join(re.escape(t) for t in sorted(special, key=len, reverse=True)) + ")"
    ids: list[int] = []
    for piece in re.split(pattern, text):
        if not piece:
            continue
        if piece in special:
            ids.append(special[piece])
        else:
            ids.extend(sp.encode(piece))
    return ids
