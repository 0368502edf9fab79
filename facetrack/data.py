"""Training data: FDA/FEC caption records, instruction conversations, cached clips, tokenisation with masks.

An FDA-format file is a JSON list (or JSONL) of ``{"id", "video", "caption"}`` records. Each record becomes
one conversation: an instruction drawn from the template pool (deterministically from the seed, the epoch
and the record id) asks about the video, and the caption is the answer. Tokenisation masks every label
except the answer's, and enforces a length limit, counting what it cut.

Decoded frames and face crops are cached per clip as one small ``.npz`` file of JPEG-encoded images (see
:func:`encode_clip`), so training epochs never decode video or run face tracking again.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facetrack import storage
from facetrack.manifest import json_records, resolve_video
from facetrack.types import Clip

IGNORE_INDEX = -100
"""Label value that the loss ignores (every position that is not part of the answer)."""


@dataclass(slots=True)
class Record:
    """One training example: a video and the caption that describes it."""

    id: str
    video: str
    caption: str


@dataclass(slots=True)
class RecordSet:
    """The usable records of a file plus a count of the records dropped and why."""

    records: list[Record] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    """reason -> count; reasons: ``bad_json``, ``not_an_object``, ``no_video_field``, ``empty_caption``,
    ``duplicate_id``."""
    examples: dict[str, list[str]] = field(default_factory=dict)
    """reason -> up to a few ``file:item`` positions, to find the bad records."""

    def drop(self, reason: str, where: str) -> None:
        self.dropped[reason] += 1
        seen = self.examples.setdefault(reason, [])
        if len(seen) < 5:
            seen.append(where)

    def summary(self) -> dict[str, Any]:
        return {
            "kept": len(self.records),
            "dropped": dict(sorted(self.dropped.items())),
            "dropped_examples": self.examples,
        }


def read_records(source: str, video_root: str | None = None) -> RecordSet:
    """Read FDA-format records from a ``.json`` list or ``.jsonl`` file (local path or ``s3://``).

    Bad records are dropped and counted, never fatal: an item that is not an object, has no ``video``,
    has an empty or missing ``caption``, or repeats an earlier ``id``. A record without ``id`` takes its
    ``video`` as id. Relative ``video`` paths are resolved against ``video_root`` (default: the folder of
    ``source``).

    Raises:
        storage.NotFoundError: ``source`` does not exist.
        ValueError: a ``.json`` file is not a JSON list.
    """
    out = RecordSet()
    base = video_root if video_root is not None else posixpath.dirname(source.rstrip("/"))
    seen: set[str] = set()
    name = posixpath.basename(source.rstrip("/"))
    records = json_records(storage.read_text(source), source, "{'id', 'video', 'caption'} records")
    for number, item in records:
        where = f"{name}:{number}"
        if isinstance(item, ValueError):
            out.drop("bad_json", where)
            continue
        if not isinstance(item, dict):
            out.drop("not_an_object", where)
            continue
        video = item.get("video")
        if not isinstance(video, str) or not video.strip():
            out.drop("no_video_field", where)
            continue
        caption = item.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            out.drop("empty_caption", where)
            continue
        rid = item.get("id")
        rid = str(rid) if isinstance(rid, (str, int)) and str(rid).strip() else video
        if rid in seen:
            out.drop("duplicate_id", where)
            continue
        seen.add(rid)
        out.records.append(Record(id=rid, video=resolve_video(video.strip(), base), caption=caption.strip()))
    return out


def load_templates(uri: str | None = None) -> list[str]:
    """The instruction pool: the model's training instructions, or a JSON list of strings at ``uri``."""
    if uri is None:
        from facetrack.model.prompt import training_instructions

        return training_instructions()
    data = json.loads(storage.read_text(uri))
    if isinstance(data, dict):
        data = data.get("paraphrases") or data.get("templates")
    if not isinstance(data, list) or not data or not all(isinstance(t, str) and t.strip() for t in data):
        raise ValueError(f"{uri}: expected a non-empty JSON list of instruction strings")
    return [t.strip() for t in data]


def draw_instruction(templates: Sequence[str], record_id: str, seed: int, epoch: int = 0) -> str:
    """The instruction for one record in one epoch: a deterministic draw from ``templates``.

    The draw depends only on (seed, epoch, record id), not on data order or on which worker asks, so a
    resumed run and an uninterrupted one build the same conversations.
    """
    if not templates:
        raise ValueError("the instruction template pool is empty")
    key = hashlib.sha256(f"{seed}/{epoch}/{record_id}".encode()).digest()
    return templates[random.Random(key).randrange(len(templates))]


def build_conversation(
    record: Record, templates: Sequence[str], seed: int, epoch: int = 0
) -> list[dict[str, str]]:
    """A two-turn conversation: the user asks a drawn instruction, the assistant answers the caption."""
    return [
        {"role": "user", "content": draw_instruction(templates, record.id, seed, epoch)},
        {"role": "assistant", "content": record.caption},
    ]


# --------------------------------------------------------------------------------------------- clip cache


def clip_key(video: str, params: dict[str, Any]) -> str:
    """A cache key for one clip: a hash of the video URI and the preprocessing parameters.

    Changing any parameter (frame count, sizes, tracker settings) gives a new key, so a stale cache entry
    is never read for different settings.
    """
    blob = json.dumps({"video": video, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _encode_images(images: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    chunks: list[bytes] = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img)).save(buf, format="JPEG", quality=quality)
        chunks.append(buf.getvalue())
    offsets = np.cumsum([0] + [len(c) for c in chunks]).astype(np.int64)
    return np.frombuffer(b"".join(chunks), dtype=np.uint8), offsets


def _decode_images(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    from PIL import Image

    raw = data.tobytes()
    images = [
        np.asarray(Image.open(io.BytesIO(raw[int(a) : int(b)])).convert("RGB"))
        for a, b in zip(offsets[:-1], offsets[1:])
    ]
    return np.stack(images)


def shrink_frames(images: np.ndarray, max_side: int) -> np.ndarray:
    """Resize ``(N, H, W, 3)`` frames so that their longer side is at most ``max_side`` (aspect kept).

    The model later pads each frame to a square and resizes it to its input size; shrinking first to
    that size keeps the cache small and changes nothing the model sees but the resampling order.
    """
    from PIL import Image

    h, w = int(images.shape[1]), int(images.shape[2])
    if max_side <= 0 or max(h, w) <= max_side:
        return images
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.stack([np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC)) for img in images])


def encode_clip(clip: Clip, quality: int = 95, meta: dict[str, Any] | None = None) -> bytes:
    """Serialise a clip as one ``.npz``: frames and crops as JPEG bytes plus offsets, and a JSON header.

    A 16-frame clip at 336x336 takes a few hundred KB instead of 5 MB raw; decoding it is a few ms.
    """
    if clip.frames.ndim != 4 or clip.frames.shape[-1] != 3:
        raise ValueError(f"{clip.id}: frames must be (T, H, W, 3), got {clip.frames.shape}")
    arrays: dict[str, np.ndarray] = {}
    arrays["frames"], arrays["frames_offsets"] = _encode_images(clip.frames, quality)
    if clip.crops is not None:
        arrays["crops"], arrays["crops_offsets"] = _encode_images(clip.crops, quality)
    header = {"id": clip.id, "n_frames": int(clip.frames.shape[0]), "has_crops": clip.crops is not None}
    header.update(meta or {})
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode_clip(data: bytes) -> tuple[Clip, dict[str, Any]]:
    """Inverse of :func:`encode_clip`: the clip and its header (``id``, ``n_frames``, ``has_crops``, ...)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        header = json.loads(npz["header"].tobytes().decode())
        frames = _decode_images(npz["frames"], npz["frames_offsets"])
        crops = _decode_images(npz["crops"], npz["crops_offsets"]) if "crops" in npz.files else None
    return Clip(id=header["id"], frames=frames, crops=crops), header


# ------------------------------------------------------------------------------------------ tokenisation


@dataclass(slots=True)
class Example:
    """One tokenised training example; ``labels`` is ``IGNORE_INDEX`` everywhere but on the answer."""

    id: str
    input_ids: list[int]
    labels: list[int]
    n_visual: int = 0
    """Visual tokens that the model splices in at the ``<video>`` placeholder (they count in the length)."""
    n_cut: int = 0
    """Answer tokens cut by the length limit."""

    @property
    def length(self) -> int:
        """Length of the language model's sequence: text tokens minus the placeholder plus visual tokens."""
        return len(self.input_ids) - 1 + self.n_visual


@dataclass(slots=True)
class LengthStats:
    """What the length limit did to a set of examples."""

    examples: int = 0
    truncated: int = 0
    """Examples whose answer was cut to fit."""
    tokens_cut: int = 0
    """Answer tokens removed in all."""
    dropped_too_long: int = 0
    """Examples whose prompt and visual tokens alone leave no room for an answer."""

    def add(self, example: Example | None) -> None:
        if example is None:
            self.dropped_too_long += 1
            return
        self.examples += 1
        if example.n_cut:
            self.truncated += 1
            self.tokens_cut += example.n_cut

    def summary(self) -> dict[str, int]:
        return {
            "examples": self.examples,
            "truncated": self.truncated,
            "tokens_cut": self.tokens_cut,
            "dropped_too_long": self.dropped_too_long,
        }


def tokenize_example(
    tokenizer: Any,
    record_id: str,
    conversation: Sequence[dict[str, str]],
    max_length: int,
    n_visual: int = 0,
    system: str | None | object = None,
) -> Example | None:
    """Tokenise a (user, assistant) conversation for training, masking everything but the answer.

    The prompt is built exactly as the captioner asks (:func:`facetrack.model.prompt.caption_prompt`:
    the chat format, the ``<video>`` placeholder on its own line, then the instruction), so training and
    inference see the same text. The answer is the caption followed by the end-of-sequence token.

    When the sequence (text tokens plus ``n_visual``) is longer than ``max_length``, the answer is cut to
    fit (and loses its end-of-sequence token); ``Example.n_cut`` says how many tokens went.

    Args:
        tokenizer: a transformers tokenizer.
        record_id: the record's id (carried on the example).
        conversation: ``[{"role": "user", "content": instruction},
            {"role": "assistant", "content": caption}]`` (see :func:`build_conversation`).
        max_length: the language model's sequence budget, visual tokens included.
        n_visual: how many visual tokens replace the placeholder.
        system: system text for the prompt; default: the model's standard system prompt.

    Returns:
        The example, or ``None`` when the prompt and visual tokens alone reach ``max_length``.
    """
    from facetrack.model import prompt as chat

    if len(conversation) != 2 or conversation[0]["role"] != "user" or conversation[1]["role"] != "assistant":
        raise ValueError("a training conversation is one user turn followed by one assistant turn")
    kwargs = {} if system is None else {"system": system}
    prompt_text = chat.caption_prompt(tokenizer, conversation[0]["content"], **kwargs)
    prompt_ids = chat.tokenize_with_video(prompt_text, tokenizer)
    answer_ids = list(tokenizer(conversation[1]["content"], add_special_tokens=False).input_ids)
    if tokenizer.eos_token_id is not None:
        answer_ids.append(int(tokenizer.eos_token_id))
    prompt_len = len(prompt_ids) - 1 + n_visual
    room = max_length - prompt_len
    if room <= 0:
        return None
    n_cut = max(0, len(answer_ids) - room)
    if n_cut:
        answer_ids = answer_ids[:room]
    return Example(
        id=record_id,
        input_ids=prompt_ids + answer_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + answer_ids,
        n_visual=n_visual,
        n_cut=n_cut,
    )


# ------------------------------------------------------------------------------------------- demo data

_DEMO_KINDS = ("extras", "occlusion", "cut", "no-face")


def _demo_caption(spec: Any) -> str:
    """A caption of what a composed clip shows (its composition, not a real facial expression)."""
    parts = []
    if spec.main is None:
        parts.append("No single main character: the scene shows no face or only small passing faces.")
    else:
        start, end = spec.main_path
        direction = "from left to right" if end > start else "from right to left"
        parts.append(f"A person faces the camera with a steady, neutral expression and drifts {direction}.")
    if len(spec.extras) == 1:
        parts.append("Another person enters and leaves the frame.")
    elif spec.extras:
        parts.append(f"{len(spec.extras)} other people enter and leave the frame.")
    if spec.occlusion:
        parts.append("For a moment a panel hides the face, then it is visible again.")
    if spec.no_face:
        parts.append("The video cuts to an empty scene and back to the person.")
    return " ".join(parts)


def write_demo_dataset(
    out_dir: str, n: int = 6, seconds: float = 1.5, width: int = 192, height: int = 128
) -> str:
    """Compose ``n`` short clips from packaged face photographs and write FDA records for them.

    The captions describe each clip's composition (who moves where, occlusions, cuts): enough for a
    model to learn something in a demo or test, not facial-expression data. Writes ``clip-<i>.mp4`` and
    ``train.json`` under ``out_dir`` (a local folder) and returns the records file's path.
    """
    import os

    from facetrack.samples import compose_video, preset

    os.makedirs(out_dir, exist_ok=True)
    records = []
    for i in range(n):
        spec = preset(_DEMO_KINDS[i % len(_DEMO_KINDS)], seconds=seconds, seed=i, width=width, height=height)
        name = f"clip-{i:03d}.mp4"
        compose_video(os.path.join(out_dir, name), spec)
        records.append({"id": f"clip-{i:03d}", "video": name, "caption": _demo_caption(spec)})
    path = os.path.join(out_dir, "train.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(records, f, indent=1)
    return path
