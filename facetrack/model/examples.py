"""Training examples: cached clips joined to their captions, built into micro-batches in training order."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from facetrack import storage
from facetrack.data import Example
from facetrack.model.modeling import FaceTrackMM
from facetrack.model.schedule import DataOrder

log = logging.getLogger(__name__)


@dataclass
class TrainItem:
    """One usable training example after preprocessing: a record joined to its cached clip."""

    id: str
    caption: str
    clip: str
    """URI of the cached clip (see :func:`facetrack.data.encode_clip`)."""
    n_frames: int
    has_crops: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "caption": self.caption,
            "clip": self.clip,
            "n_frames": self.n_frames,
            "has_crops": self.has_crops,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainItem:
        return cls(
            id=str(data["id"]),
            caption=str(data["caption"]),
            clip=str(data["clip"]),
            n_frames=int(data["n_frames"]),
            has_crops=bool(data["has_crops"]),
        )


@dataclass
class Batch:
    """A micro-batch ready for :meth:`FaceTrackMM.forward`."""

    ids: list[str]
    sequences: list[list[int]]
    labels: list[list[int]]
    pixel_values: torch.Tensor
    face_pixels: list[torch.Tensor | None]
    n_tokens: int
    """Positions of the language model's sequences (text plus visual tokens), padding excluded."""
    n_cut: int
    """Answer tokens cut by the length limit in this micro-batch."""


class ExampleBuilder:
    """Turns training items into model inputs: reads cached clips, draws instructions, tokenises.

    Holds only picklable state (tokenizer, image preprocessors, items), so it can run in DataLoader
    worker processes.
    """

    def __init__(
        self,
        items: Sequence[TrainItem],
        tokenizer: Any,
        templates: Sequence[str],
        frame_processor: Any,
        face_processor: Any | None,
        visual_tokens: Sequence[int],
        max_length: int,
        seed: int,
    ) -> None:
        if len(visual_tokens) != len(items):
            raise ValueError("visual_tokens must give one count per item")
        self.items = list(items)
        self.tokenizer = tokenizer
        self.templates = list(templates)
        self.frame_processor = frame_processor
        self.face_processor = face_processor
        self.visual_tokens = list(visual_tokens)
        self.max_length = max_length
        self.seed = seed

    def example(self, index: int, epoch: int) -> Example | None:
        from facetrack.data import Record, build_conversation, tokenize_example

        item = self.items[index]
        record = Record(id=item.id, video=item.clip, caption=item.caption)
        conversation = build_conversation(record, self.templates, self.seed, epoch)
        return tokenize_example(
            self.tokenizer, item.id, conversation, self.max_length, n_visual=self.visual_tokens[index]
        )

    def batch(self, indices: Sequence[int], epoch: int) -> Batch:
        from facetrack.data import decode_clip

        examples, frames, faces = [], [], []
        for index in indices:
            example = self.example(index, epoch)
            if example is None:  # filtered out beforehand (see FinetuneSession.setup); never expected here
                raise ValueError(f"{self.items[index].id}: no room for an answer within max_length")
            clip, _ = decode_clip(storage.read_bytes(self.items[index].clip))
            examples.append(example)
            frames.append(self.frame_processor(clip.frames))
            use_faces = clip.crops is not None and self.face_processor is not None
            faces.append(self.face_processor(clip.crops) if use_faces else None)
        n_frames = {f.shape[0] for f in frames}
        if len(n_frames) != 1:
            raise ValueError(f"clips of one micro-batch have different frame counts: {sorted(n_frames)}")
        return Batch(
            ids=[e.id for e in examples],
            sequences=[e.input_ids for e in examples],
            labels=[e.labels for e in examples],
            pixel_values=torch.stack(frames),
            face_pixels=faces,
            n_tokens=sum(e.length for e in examples),
            n_cut=sum(e.n_cut for e in examples),
        )


class MicroBatches(torch.utils.data.IterableDataset):
    """The micro-batches of one rank from ``start_step`` to ``end_step``, in training order.

    Yields ``(step, k, batch)``. With DataLoader workers, worker ``w`` builds every ``w``-th micro-batch
    and the loader returns them in order.
    """

    def __init__(self, builder: ExampleBuilder, order: DataOrder, rank: int, start_step: int, end_step: int):
        super().__init__()
        self.builder = builder
        self.order = order
        self.rank = rank
        self.start_step = start_step
        self.end_step = end_step

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        count = 0
        for step in range(self.start_step, self.end_step):
            epoch = self.order.epoch_of(step)
            for k, indices in enumerate(self.order.micro_batches(step, self.rank)):
                if count % n_workers == worker:
                    yield step, k, self.builder.batch(indices, epoch)
                count += 1


def visual_token_count(model: FaceTrackMM, n_frames: int, has_crops: bool) -> int:
    """How many visual tokens a clip adds to the language model's sequence."""
    n = model.num_video_tokens(n_frames)
    if has_crops and model.has_face_branch:
        n += model.num_face_tokens(n_frames)
    return n


def longest_prompt(tokenizer: Any, templates: Sequence[str]) -> int:
    """Text tokens of the longest prompt any template gives (placeholder excluded)."""
    from facetrack.model import prompt as chat

    return max(
        len(chat.tokenize_with_video(chat.caption_prompt(tokenizer, t), tokenizer)) - 1 for t in templates
    )


def model_num_frames(
    source: str | os.PathLike, default: int | None = 8, cache_dir: str | os.PathLike | None = None
) -> int | None:
    """The frame count a checkpoint was made for, read from its small config file only (no weights).

    Args:
        source: a local folder, a remote prefix (``s3://``, ``gs://``, ``memory://``, ...) or a hub id.
        default: returned when the config does not say (a VideoLLaMA2 ``config.json`` without
            ``num_frames``: VideoLLaMA2 itself then takes 8) or cannot be read (missing, offline and not
            cached, denied); the reason is logged as a warning.
        cache_dir: the hub's cache folder (default: the hub's).

    Returns:
        ``spec.num_frames`` of ``facetrack.json``, else ``num_frames`` of ``config.json``, else ``default``.
    """
    from facetrack.model.checkpoint_files import OUR_CONFIG, CheckpointError
    from facetrack.model.sources import read_config_file

    try:
        found = read_config_file(source, (OUR_CONFIG, "config.json"), cache_dir)
    except CheckpointError as exc:
        log.warning("%s: using %s model frames: %s", os.fspath(source), default, exc)
        return default
    if found is None:
        log.warning("%s: no %s or config.json; using %s model frames", os.fspath(source), OUR_CONFIG, default)
        return default
    name, config = found
    frames = (config.get("spec") or {}).get("num_frames") if name == OUR_CONFIG else config.get("num_frames")
    return int(frames) if frames else default
