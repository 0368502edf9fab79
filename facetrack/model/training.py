"""Fine-tuning without Ray: LoRA setup, data order, batches, the DeepSpeed session, checkpoints, export.

What trains (FaceTrack-MM, as in the paper and VideoLLaMA2): LoRA adapters on every linear layer of the
language model (not its output head), the STC connector (``mm_projector``) and the face projector at full
rank; the vision tower, the face encoder and the language model's own weights stay frozen.

The data order is a pure function of (seed, epoch, step, rank), so a run resumed from a checkpoint sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facetrack import storage
from facetrack.data import Example
from facetrack.model.modeling import FaceTrackMM, checkpoint_key

log = logging.getLogger(__name__)

FULL_RANK_MODULES: tuple[str, ...] = ("mm_projector", "face_projector")
"""Modules trained at full rank by default: the STC connector and the face projector."""
FROZEN_MODULES: tuple[str, ...] = ("vision_tower", "face_encoder")
"""Modules that never train: the vision tower and the face encoder."""
NON_LORA_FILE = "non_lora_trainables.bin"
"""VideoLLaMA2's name for the full-rank trainable weights saved next to a LoRA adapter."""


@dataclass
class LoraSettings:
    """LoRA on the language model's linear layers plus the modules trained at full rank."""

    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    target_modules: list[str] | None = None
    """Leaf names of the LLM's linear layers to adapt (``q_proj``, ...); ``None``: all but the output head."""
    full_rank: list[str] = field(default_factory=lambda: list(FULL_RANK_MODULES))
    """Top-level modules of the model trained at full rank."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        bad = [m for m in self.full_rank if m in FROZEN_MODULES or m == "llm"]
        if bad:
            raise ValueError(
                f"lora.full_rank cannot include {bad}: the vision tower, face encoder and LLM stay frozen"
            )


def lora_target_modules(llm: nn.Module) -> list[str]:
    """Leaf names of every ``nn.Linear`` in the language model except its output head, sorted."""
    head = llm.get_output_embeddings() if hasattr(llm, "get_output_embeddings") else None
    names = set()
    for name, module in llm.named_modules():
        if isinstance(module, nn.Linear) and module is not head:
            names.add(name.rsplit(".", 1)[-1])
    if not names:
        raise ValueError("the language model has no linear layer to adapt")
    return sorted(names)


@dataclass
class TrainableReport:
    """Which parameters train and how (names are the model's attribute paths)."""

    lora: list[str]
    full_rank: list[str]
    frozen: list[str]
    n_lora: int = 0
    n_full_rank: int = 0
    n_frozen: int = 0

    def summary(self) -> dict[str, int]:
        return {
            "lora_params": self.n_lora,
            "full_rank_params": self.n_full_rank,
            "frozen_params": self.n_frozen,
            "lora_tensors": len(self.lora),
            "full_rank_tensors": len(self.full_rank),
        }


def is_lora_name(name: str) -> bool:
    return "lora_" in name


def trainable_report(model: FaceTrackMM) -> TrainableReport:
    """Split the model's parameters into LoRA, full-rank trainable and frozen."""
    report = TrainableReport(lora=[], full_rank=[], frozen=[])
    for name, param in model.named_parameters():
        n = param.ds_numel if hasattr(param, "ds_numel") else param.numel()
        if not param.requires_grad:
            report.frozen.append(name)
            report.n_frozen += n
        elif is_lora_name(name):
            report.lora.append(name)
            report.n_lora += n
        else:
            report.full_rank.append(name)
            report.n_full_rank += n
    return report


def apply_lora(model: FaceTrackMM, settings: LoraSettings, seed: int = 0) -> TrainableReport:
    """Wrap the model's LLM in a peft LoRA model and set what trains (in place).

    The LoRA weights are initialised from ``seed`` so that every worker starts from the same adapter.

    Raises:
        ImportError: peft is missing (``pip install 'facetrack[model]'``).
        ValueError: a ``full_rank`` module does not exist in this model.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("LoRA fine-tuning needs peft: pip install 'facetrack[model]'") from exc
    targets = settings.target_modules or lora_target_modules(model.llm)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    for param in model.parameters():
        param.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.llm = get_peft_model(model.llm, config)
    for name in settings.full_rank:
        module = getattr(model, name, None)
        if module is None:
            if name == "face_projector":  # a model without a face branch has none: nothing to train
                continue
            raise ValueError(f"the model has no module {name!r} to train at full rank")
        for param in module.parameters():
            param.requires_grad_(True)
    return trainable_report(model)


def add_face_branch(model: FaceTrackMM, tokens_per_frame: int = 4, seed: int = 0) -> bool:
    """Give a model without a face branch (a plain VideoLLaMA2 checkpoint) FaceTrack-MM's face branch.

    The face encoder is the model's own vision tower on the crops (frozen); the face projector is new,
    initialised from ``seed`` (the same on every worker), and trains at full rank. Returns whether a
    branch was added (``False`` when the model has one already).
    """
    from facetrack.model.face import face_projector

    if model.has_face_branch:
        return False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projector = face_projector(model.vision_tower.hidden_size, model.hidden_size)
    param = next(model.mm_projector.parameters())
    model.face_projector = projector.to(param.device, param.dtype)
    model.face_processor = model.image_processor
    model.face_tokens_per_frame = tokens_per_frame
    model.spec.face_encoder = "vision_tower"
    model.spec.face_tokens_per_frame = tokens_per_frame
    return True


# ------------------------------------------------------------------------------------------ data order


@dataclass(frozen=True)
class DataOrder:
    """Which examples each rank sees at each optimizer step: a function of (seed, epoch, step, rank).

    Each epoch is a fresh permutation of all examples (seeded by ``seed`` and the epoch); a step takes the
    next ``global_batch`` of it; rank ``r`` gets micro-batch ``k`` from slot ``k * world_size + r``. The
    last incomplete global batch of an epoch is dropped so that all ranks always do the same work.
    """

    n_examples: int
    world_size: int
    micro_batch: int
    grad_accum: int
    seed: int

    def __post_init__(self) -> None:
        if min(self.world_size, self.micro_batch, self.grad_accum) < 1:
            raise ValueError("world_size, micro_batch and grad_accum must be >= 1")
        if self.n_examples < self.global_batch:
            raise ValueError(
                f"{self.n_examples} examples are fewer than one global batch "
                f"({self.world_size} workers x {self.micro_batch} per micro-batch x {self.grad_accum} "
                "accumulation steps): use fewer workers or a smaller batch"
            )

    @property
    def global_batch(self) -> int:
        return self.world_size * self.micro_batch * self.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        return self.n_examples // self.global_batch

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_examples)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """The ``grad_accum`` micro-batches (example indices) of rank ``rank`` at optimizer step ``step``."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        chunk = self.permutation(epoch)[pos * self.global_batch : (pos + 1) * self.global_batch]
        out = []
        for k in range(self.grad_accum):
            slot = k * self.world_size + rank
            out.append([int(i) for i in chunk[slot * self.micro_batch : (slot + 1) * self.micro_batch]])
        return out


def cosine_with_warmup(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Learning-rate factor: linear warmup over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_scheduler(optimizer: torch.optim.Optimizer, total: int, warmup: int, min_ratio: float = 0.0):
    """A ``LambdaLR`` following :func:`cosine_with_warmup` (stepped once per optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, total, warmup, min_ratio)
    )


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one rank at one step (dropout), so a resumed run draws the same masks."""
    return (seed * 1_000_003 + step * 1_009 + rank) % (2**63 - 1)


# ------------------------------------------------------------------------------------------- examples


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


class TrainingForward(nn.Module):
    """The training forward of FaceTrack-MM, with the same modules run on every rank for every batch.

    Data-parallel training needs every rank to run the same modules in the same order: ZeRO-3 gathers
    each module's weights collectively when it runs, and ZeRO-2 reduces gradients in buckets as they
    arrive. A clip without a main face skips the face branch in :meth:`FaceTrackMM.forward`, so here
    such a clip gets a blank crop through the face branch instead; its face tokens are left out of the
    sequence and enter the loss with weight zero, so every trainable weight gets a (possibly zero)
    gradient on every rank.
    """

    def __init__(self, model: FaceTrackMM) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        sequences: Sequence[Sequence[int]],
        pixel_values: torch.Tensor,
        face_pixels: Sequence[torch.Tensor | None],
        labels: Sequence[Sequence[int]],
    ) -> torch.Tensor:
        model = self.model
        visual = list(model.encode_video(pixel_values).unbind(0))
        unused = None
        if model.has_face_branch:
            assert model.face_processor is not None
            size = model.face_processor.size
            n_frames = pixel_values.shape[1]
            blank = pixel_values.new_zeros((n_frames, 3, size, size))
            crops = [blank if f is None else f for f in face_pixels]
            if len({c.shape for c in crops}) == 1:
                faces = list(model.encode_faces(torch.stack(crops)).unbind(0))
            else:
                faces = [model.encode_faces(c[None])[0] for c in crops]
            for i, tokens in enumerate(faces):
                if face_pixels[i] is not None:
                    visual[i] = torch.cat([visual[i], tokens.to(visual[i].dtype)], dim=0)
                else:
                    zero = tokens.float().sum() * 0.0
                    unused = zero if unused is None else unused + zero
        embeds, mask, lab = model.embed(sequences, visual, labels, padding_side="right")
        loss = model.llm(inputs_embeds=embeds, attention_mask=mask, labels=lab).loss
        return loss if unused is None else loss + unused.to(loss.dtype)


def batch_loss(model: nn.Module, batch: Batch, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Mean token cross-entropy over the answer tokens of a micro-batch (``model``: a
    :class:`TrainingForward` or a DeepSpeed engine around one)."""
    pixel_values = batch.pixel_values.to(device, dtype)
    faces = [None if f is None else f.to(device, dtype) for f in batch.face_pixels]
    return model(batch.sequences, pixel_values, faces, batch.labels)


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


# ------------------------------------------------------------------------------------------- settings


@dataclass
class TrainSettings:
    """Optimisation, schedule, precision, checkpointing (the ``train`` section of a fine-tuning config)."""

    epochs: int = 1
    max_steps: int = 0
    """Optimizer steps in all (0: ``epochs`` full passes). The schedule spans exactly this many."""
    micro_batch_size: int = 1
    """Examples per worker per forward pass."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    lr: float = 2e-4
    projector_lr: float | None = None
    """Learning rate of the full-rank modules (default: ``lr``)."""
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW's (beta1, beta2)."""
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None
    """Overrides ``warmup_ratio`` when set."""
    min_lr_ratio: float = 0.0
    """The cosine decays to ``lr * min_lr_ratio``."""
    max_grad_norm: float = 1.0
    seed: int = 42
    max_length: int = 2048
    """The language model's sequence budget per example, visual tokens included."""
    deepspeed: str = "zero2"
    """``zero2``, ``zero3`` (the shipped configs) or a path/URI of a DeepSpeed JSON config."""
    precision: str = "auto"
    """``auto`` (bf16 on GPU, fp32 on CPU), ``bf16`` or ``fp32``."""
    gradient_checkpointing: bool = False
    add_face_branch: bool = True
    """Give a base model without a face branch (plain VideoLLaMA2) one: the vision tower on the crops and
    a new face projector trained at full rank (FaceTrack-MM). ``false`` trains on the frames alone."""
    face_tokens_per_frame: int = 4
    """Face tokens per frame of an added face branch."""
    checkpoint_every: int = 100
    """Save a checkpoint every this many steps (and always after the last step)."""
    keep_checkpoints: int = 2
    metrics_every: int = 10
    progress: bool = True
    """Show a progress bar (rank 0)."""
    """Rewrite ``metrics.jsonl`` in storage every this many steps (and with every checkpoint)."""
    loader_workers: int = 0
    """DataLoader worker processes per training worker (0: build batches in the training process)."""
    fail_after_step: int = 0
    """Fault injection for resilience tests: rank 0 exits abruptly after this step, in a run that did not
    resume from a checkpoint (0: never)."""

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        for name in (
            "epochs",
            "micro_batch_size",
            "grad_accum",
            "checkpoint_every",
            "keep_checkpoints",
            "metrics_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps < 0 or self.loader_workers < 0 or self.fail_after_step < 0:
            raise ValueError("train.max_steps, loader_workers and fail_after_step must be >= 0")
        if self.lr <= 0 or (self.projector_lr is not None and self.projector_lr <= 0):
            raise ValueError("learning rates must be positive")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"train.betas must be two numbers in [0, 1), got {self.betas}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.max_steps or self.epochs * steps_per_epoch

    def warmup(self, total: int) -> int:
        return self.warmup_steps if self.warmup_steps is not None else int(round(self.warmup_ratio * total))


def resolve_deepspeed_config(base: dict[str, Any], settings: TrainSettings, bf16: bool) -> dict[str, Any]:
    """Fill the ``"auto"`` values of a DeepSpeed config from the training settings.

    Batch sizes, accumulation, clipping and precision come from ``settings`` (one source of truth); a
    config that sets one of them to something else than ``"auto"`` or the same value is an error.

    Raises:
        ValueError: a conflicting value, or an optimizer/scheduler section (this job builds its own).
    """
    config = json.loads(json.dumps(base))
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise ValueError(
                f"the DeepSpeed config has an {section!r} section: the optimizer (AdamW) and the cosine "
                "schedule come from the train settings; remove it"
            )
    wanted = {
        "train_micro_batch_size_per_gpu": settings.micro_batch_size,
        "gradient_accumulation_steps": settings.grad_accum,
        "gradient_clipping": settings.max_grad_norm,
    }
    for key, value in wanted.items():
        have = config.get(key, "auto")
        if have != "auto" and have != value:
            raise ValueError(f"DeepSpeed config sets {key}={have!r} but the train settings say {value!r}")
        config[key] = value
    config.pop("train_batch_size", None)
    bf16_section = dict(config.get("bf16") or {})
    have = bf16_section.get("enabled", "auto")
    if have != "auto" and bool(have) != bf16:
        precision = "bf16" if bf16 else "fp32"
        raise ValueError(f"DeepSpeed config sets bf16.enabled={have!r} but the precision is {precision}")
    bf16_section["enabled"] = bf16
    config["bf16"] = bf16_section
    if config.get("fp16", {}).get("enabled") is True:
        raise ValueError("fp16 is not supported: use precision bf16 (GPU) or fp32")
    config.pop("fp16", None)
    config.setdefault("zero_allow_untested_optimizer", True)
    return config


def zero_stage(config: dict[str, Any]) -> int:
    return int((config.get("zero_optimization") or {}).get("stage", 0))


def avoid_jit_ops_on_cpu() -> None:
    """Keep DeepSpeed from compiling its shared-memory all-reduce op when running on CPU.

    DeepSpeed's CPU backend JIT-compiles ``deepspeed_shm_comm`` (about half a minute, needs a compiler)
    at communication setup. It only serves inference all-reduce; training collectives go through the
    gloo process group. Marking it unavailable makes DeepSpeed fall back to gloo for it too.
    """
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


@contextlib.contextmanager
def gathered(params: Sequence[nn.Parameter], enabled: bool):
    """Full values of ZeRO-3 partitioned ``params`` inside the block (on every rank); no-op otherwise."""
    if not enabled:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(params), modifier_rank=None):
        yield


# -------------------------------------------------------------------------------------------- session


@dataclass
class StepStats:
    """What one optimizer step did, summed over all workers."""

    step: int
    epoch: int
    loss: float
    lr: float
    grad_norm: float | None
    samples: int
    tokens: int
    tokens_cut: int
    seconds: float
    """Wall time of the step on rank 0: loading its micro-batches, forward, backward, optimizer."""

    def row(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "loss": self.loss,
            "lr": self.lr,
            "grad_norm": self.grad_norm,
            "samples": self.samples,
            "tokens": self.tokens,
            "tokens_cut": self.tokens_cut,
            "step_seconds": round(self.seconds, 4),
            "samples_per_s": round(self.samples / self.seconds, 4) if self.seconds > 0 else None,
            "tokens_per_s": round(self.tokens / self.seconds, 2) if self.seconds > 0 else None,
        }


class FinetuneSession:
    """One training worker: the model with LoRA under a DeepSpeed engine, its data and its checkpoints.

    ``setup()`` loads the base model, applies LoRA, filters examples that cannot fit ``max_length`` and
    builds the engine; ``steps(start, end)`` yields :class:`StepStats`; ``save``/``load`` write and read
    a checkpoint folder (every rank writes only its own optimizer shard; rank 0 writes shared files).
    The process group must already be initialised (Ray Train does it; so does ``torchrun``).
    """

    def __init__(
        self,
        model_source: str,
        items: Sequence[TrainItem],
        templates: Sequence[str],
        lora: LoraSettings,
        train: TrainSettings,
        deepspeed_config: dict[str, Any],
        rank: int,
        world_size: int,
        device: torch.device,
    ) -> None:
        self.model_source = model_source
        self.all_items = list(items)
        self.templates = list(templates)
        self.lora = lora
        self.train = train
        self.base_ds_config = deepspeed_config
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.engine: Any = None
        self.model: FaceTrackMM | None = None
        self.tokenizer: Any = None
        self.builder: ExampleBuilder | None = None
        self.order: DataOrder | None = None
        self.report: TrainableReport | None = None
        self.data_stats: dict[str, Any] = {}
        self.total_steps = 0

    @property
    def bf16(self) -> bool:
        if self.train.precision == "auto":
            return self.device.type == "cuda"
        return self.train.precision == "bf16"

    @property
    def zero3(self) -> bool:
        return zero_stage(self.base_ds_config) == 3

    def setup(self) -> None:
        import deepspeed

        from facetrack.data import LengthStats
        from facetrack.model.loading import load_model

        avoid_jit_ops_on_cpu()
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        loaded = load_model(self.model_source, dtype=dtype, merge_lora=True)
        model, self.tokenizer = loaded.model, loaded.tokenizer
        if self.train.add_face_branch:
            add_face_branch(model, self.train.face_tokens_per_frame, seed=self.train.seed)
        self.report = apply_lora(model, self.lora, seed=self.train.seed)
        if self.train.gradient_checkpointing:
            model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        model.vision_tower.eval()
        if model.face_encoder is not None:
            model.face_encoder.eval()

        # Examples whose longest possible prompt plus visual tokens leaves no room for an answer are
        # dropped for every epoch (the same decision on every rank).
        prompt_max = longest_prompt(self.tokenizer, self.templates)
        visual = [visual_token_count(model, it.n_frames, it.has_crops) for it in self.all_items]
        keep = [i for i, v in enumerate(visual) if prompt_max + v < self.train.max_length]
        if not keep:
            raise ValueError(
                f"no example fits train.max_length={self.train.max_length}: the longest prompt has "
                f"{prompt_max} text tokens and a clip adds {min(visual)} or more visual tokens"
            )
        items = [self.all_items[i] for i in keep]
        visual = [visual[i] for i in keep]
        self.builder = ExampleBuilder(
            items,
            self.tokenizer,
            self.templates,
            model.image_processor,
            model.face_processor if model.has_face_branch else None,
            visual,
            self.train.max_length,
            self.train.seed,
        )
        lengths = LengthStats(dropped_too_long=len(self.all_items) - len(items))
        for i in range(len(items)):
            lengths.add(self.builder.example(i, 0))
        self.data_stats = {
            "items": len(self.all_items),
            "length_limit": self.train.max_length,
            **lengths.summary(),
        }
        self.order = DataOrder(
            n_examples=len(items),
            world_size=self.world_size,
            micro_batch=self.train.micro_batch_size,
            grad_accum=self.train.grad_accum,
            seed=self.train.seed,
        )
        self.total_steps = self.train.total_steps(self.order.steps_per_epoch)

        full_rank = [p for n, p in model.named_parameters() if p.requires_grad and not is_lora_name(n)]
        lora_params = [p for n, p in model.named_parameters() if p.requires_grad and is_lora_name(n)]
        groups = [{"params": lora_params, "lr": self.train.lr, "weight_decay": self.train.weight_decay}]
        if full_rank:
            groups.append(
                {
                    "params": full_rank,
                    "lr": self.train.projector_lr or self.train.lr,
                    "weight_decay": self.train.weight_decay,
                }
            )
        optimizer = torch.optim.AdamW(groups, lr=self.train.lr, betas=tuple(self.train.betas))
        scheduler = cosine_scheduler(
            optimizer, self.total_steps, self.train.warmup(self.total_steps), self.train.min_lr_ratio
        )
        config = resolve_deepspeed_config(self.base_ds_config, self.train, self.bf16)
        model.to(self.device)
        self.engine, _, _, _ = deepspeed.initialize(
            model=TrainingForward(model), optimizer=optimizer, lr_scheduler=scheduler, config=config
        )
        self.model = model

    # -- training -----------------------------------------------------------------------------------

    def batches(self, start: int, end: int):
        """The rank's micro-batches for steps ``[start, end)`` through a DataLoader."""
        assert self.builder is not None and self.order is not None
        stream = MicroBatches(self.builder, self.order, self.rank, start, end)
        workers = self.train.loader_workers
        return torch.utils.data.DataLoader(
            stream,
            batch_size=None,
            num_workers=workers,
            prefetch_factor=2 if workers else None,
            persistent_workers=False,
        )

    def steps(self, start: int, end: int):
        """Train optimizer steps ``[start, end)``; yield one :class:`StepStats` per step (all ranks alike)."""
        import time

        import torch.distributed as dist

        assert self.engine is not None and self.order is not None
        engine = self.engine
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        accum = self.train.grad_accum
        loss_sum = torch.zeros(4, dtype=torch.float64)  # loss sum, samples, tokens, tokens cut
        started = time.perf_counter()
        for step, k, batch in self.batches(start, end):
            if k == 0:
                torch.manual_seed(step_seed(self.train.seed, step, self.rank))
                loss_sum.zero_()
            loss = batch_loss(engine, batch, self.device, dtype)
            engine.backward(loss)
            if k == accum - 1:
                lr = float(engine.get_lr()[0])  # the rate this optimizer step uses
            engine.step()
            loss_sum += torch.tensor(
                [float(loss.detach()), len(batch.ids), batch.n_tokens, batch.n_cut], dtype=torch.float64
            )
            if k == accum - 1:
                totals = loss_sum.to(self.device if self.device.type == "cuda" else "cpu")
                dist.all_reduce(totals)
                totals = totals.cpu()
                seconds = time.perf_counter() - started
                norm = engine.get_global_grad_norm()
                yield StepStats(
                    step=step + 1,
                    epoch=self.order.epoch_of(step),
                    loss=float(totals[0]) / (accum * self.world_size),
                    lr=lr,
                    grad_norm=None if norm is None else float(norm),
                    samples=int(totals[1]),
                    tokens=int(totals[2]),
                    tokens_cut=int(totals[3]),
                    seconds=seconds,
                )
                started = time.perf_counter()  # data loading counts, the caller's checkpointing not

    # -- checkpoints --------------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike, state: dict[str, Any]) -> None:
        """Write this rank's part of a checkpoint into ``folder`` (a local, per-rank folder).

        Every rank writes its DeepSpeed optimizer shard under ``deepspeed/``; rank 0 also writes the
        trainable module weights there, the peft adapter (``adapter/``), the full-rank weights
        (``non_lora_trainables.bin``) and ``train_state.json`` (``state`` plus the data position).
        """
        assert self.engine is not None and self.model is not None
        state = {
            **state,
            "face_encoder": self.model.spec.face_encoder,
            "face_tokens_per_frame": self.model.face_tokens_per_frame,
        }
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.engine.save_checkpoint(
            str(out / "deepspeed"),
            tag="state",
            client_state={"train_state": state},
            exclude_frozen_parameters=True,
        )
        trainables = [p for p in self.model.parameters() if p.requires_grad]
        with gathered(trainables, self.zero3):
            if self.rank == 0:
                save_trainables(self.model, out, state)

    def load(self, folder: str | os.PathLike) -> dict[str, Any]:
        """Restore weights, optimizer, scheduler from a checkpoint folder; return its ``train_state``."""
        assert self.engine is not None
        path, client = self.engine.load_checkpoint(
            str(Path(folder) / "deepspeed"), tag="state", load_module_strict=False
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed state in {folder}")
        return dict(client.get("train_state") or {})


# --------------------------------------------------------------------------------------------- saving


def save_trainables(model: FaceTrackMM, folder: Path, state: dict[str, Any]) -> None:
    """The exportable part of a checkpoint: the peft adapter (``adapter/``), the full-rank weights
    (``non_lora_trainables.bin``) and ``train_state.json``. Weights must be whole (gathered under ZeRO-3)."""
    model.llm.save_pretrained(str(folder / "adapter"))
    torch.save(non_lora_state(model), folder / NON_LORA_FILE)
    write_json(folder / TRAIN_STATE_FILE, state)


def non_lora_state(model: FaceTrackMM) -> dict[str, torch.Tensor]:
    """The full-rank trainable weights under checkpoint (VideoLLaMA2) names, on CPU."""
    out = {}
    for name, param in model.named_parameters():
        if param.requires_grad and not is_lora_name(name):
            out[checkpoint_key(name)] = param.detach().to("cpu").clone()
    return out


def write_json(path: str | os.PathLike, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def model_num_frames(source: str) -> int:
    """The frame count a checkpoint was trained with, read from its config only (no weights)."""
    from facetrack.model.loading import OUR_CONFIG, resolve_source

    if not (storage.is_remote(source) or Path(source).is_dir()):  # a hub id: its config files only
        try:
            from huggingface_hub import hf_hub_download

            config = json.loads(Path(hf_hub_download(source, "config.json")).read_text())
            return int(config.get("num_frames") or 8)
        except Exception:  # noqa: BLE001 - any hub failure: let the loader resolve (and explain) it
            source = str(resolve_source(source))
    ours = storage.join(source, OUR_CONFIG)
    if storage.exists(ours):
        return int(json.loads(storage.read_text(ours))["spec"].get("num_frames") or 8)
    config = json.loads(storage.read_text(storage.join(source, "config.json")))
    return int(config.get("num_frames") or 8)


# ------------------------------------------------------------------------------- metrics, checkpoints


class MetricsLog:
    """Rows of per-step metrics, kept by rank 0 and written as JSONL (the whole file, atomically)."""

    def __init__(self, uri: str, rows: list[dict[str, Any]] | None = None) -> None:
        self.uri = uri
        self.rows = list(rows or [])

    @staticmethod
    def parse(text: str, up_to_step: int) -> list[dict[str, Any]]:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [r for r in rows if int(r["step"]) <= up_to_step]

    def text(self) -> str:
        return "".join(json.dumps(r) + "\n" for r in self.rows)

    def flush(self) -> None:
        storage.write_text(self.uri, self.text())


def checkpoint_complete(folder: str) -> int | None:
    """The step of a checkpoint folder when all of it is there (state and every rank's shard), else None."""
    try:
        state = json.loads(storage.read_text(storage.join(folder, "train_state.json")))
        shards = list(storage.list_uris(storage.join(folder, "deepspeed"), suffixes="optim_states.pt"))
    except (FileNotFoundError, storage.StorageError, ValueError):
        return None
    return int(state["step"]) if len(shards) == int(state.get("world_size", -1)) else None


def latest_checkpoint(run_dir: str) -> str | None:
    """The complete checkpoint with the highest step under a run folder.

    The run folder is scanned rather than trusting only Ray's registry: Ray registers a reported
    checkpoint a moment after the workers upload it, so a crash right after a checkpoint can leave the
    newest checkpoint on storage but unregistered.
    """
    try:
        states = list(storage.list_uris(run_dir, suffixes="train_state.json"))
    except (FileNotFoundError, storage.StorageError):
        return None
    best: tuple[int, str] | None = None
    for uri in states:
        folder = uri[: -len("/train_state.json")]
        if not folder.rsplit("/", 1)[-1].startswith("checkpoint_"):
            continue
        step = checkpoint_complete(folder)
        if step is not None and (best is None or step > best[0]):
            best = (step, folder)
    return None if best is None else best[1]


def local_checkpoint(uri: str, tmp: Path) -> Path:
    """A local folder with the checkpoint's files (the folder itself when it is local)."""
    if not storage.is_remote(uri):
        return Path(uri)
    for item in storage.list_uris(uri):
        target = tmp / item[len(uri) :].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        with storage.open_read(item) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return tmp


def plot_loss(metrics_text: str, title: str) -> bytes | None:
    """A PNG of loss (and learning rate) per step, or ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("no loss curve: matplotlib is missing (pip install 'facetrack[eval]')")
        return None
    import io

    rows = [json.loads(line) for line in metrics_text.splitlines() if line.strip()]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    (loss_line,) = ax.plot(steps, [r["loss"] for r in rows], color="tab:blue", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax2 = ax.twinx()
    (lr_line,) = ax2.plot(steps, [r["lr"] for r in rows], color="tab:orange", alpha=0.6, label="lr")
    ax2.set_ylabel("learning rate")
    ax.legend(handles=[loss_line, lr_line], loc="upper right", framealpha=0.8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- export

TRAIN_STATE_FILE = "train_state.json"
EXPORT_INFO_FILE = "finetune.json"


class ExportError(RuntimeError):
    """A fine-tuning checkpoint cannot be found or exported."""


def find_checkpoint(source: str) -> str:
    """The checkpoint folder to export: ``source`` itself when it holds ``train_state.json``, else the
    checkpoint with the highest step under a run folder (``<storage_path>/<name>``).

    Raises:
        ExportError: no fine-tuning checkpoint there.
    """

    source = source.rstrip("/")
    if storage.exists(storage.join(source, TRAIN_STATE_FILE)):
        return source
    best: tuple[int, str] | None = None
    try:
        uris = list(storage.list_uris(source, suffixes=TRAIN_STATE_FILE))
    except FileNotFoundError as exc:
        raise ExportError(f"{source}: no such run or checkpoint folder") from exc
    for uri in uris:
        folder = uri[: -len(TRAIN_STATE_FILE)].rstrip("/")
        if folder.rsplit("/", 1)[-1].startswith("checkpoint_"):
            step = int(json.loads(storage.read_text(uri)).get("step", -1))
            if best is None or step > best[0]:
                best = (step, folder)
    if best is None:
        raise ExportError(
            f"{source}: no fine-tuning checkpoint (a checkpoint_* folder with {TRAIN_STATE_FILE})"
        )
    return best[1]


def _fetch_checkpoint(checkpoint: str, dest: Path) -> dict[str, Any]:
    """Copy the exportable part of a checkpoint (adapter, full-rank weights, state) into ``dest``."""

    for uri in storage.list_uris(checkpoint):
        rel = uri[len(checkpoint) :].lstrip("/")
        if rel.startswith("adapter/") or rel in (NON_LORA_FILE, TRAIN_STATE_FILE):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(storage.read_bytes(uri))
    for need in ("adapter/adapter_config.json", NON_LORA_FILE, TRAIN_STATE_FILE):
        if not (dest / need).is_file():
            raise ExportError(f"{checkpoint} lacks {need}")
    return json.loads((dest / TRAIN_STATE_FILE).read_text(encoding="utf-8"))


def _absolute_source(source: str) -> str:
    """A base-model reference that still resolves from elsewhere: local paths made absolute."""
    if storage.is_remote(source) or not Path(source).expanduser().exists():
        return source
    return str(Path(source).expanduser().resolve())


def export_checkpoint(
    source: str, out_dir: str | os.PathLike, *, base: str | None = None, merge: bool = False
) -> dict[str, Any]:
    """Write a fine-tuning checkpoint in a format the captioner loads.

    Args:
        source: a run folder (the latest checkpoint is taken) or one checkpoint folder; local or s3://.
        out_dir: a new local folder.
        base: the base model (default: the one the run trained from).
        merge: merge the adapter into the weights and write a standalone FaceTrack-MM checkpoint.
            Otherwise write the adapter: for a VideoLLaMA2 base, a VideoLLaMA2 LoRA folder
            (``adapter_config.json``, adapter weights, ``non_lora_trainables.bin``, ``config.json`` whose
            ``_name_or_path`` names the base); for a FaceTrack-MM base, the base weights with the trained
            projectors plus the adapter in ``adapter/``.

    Returns:
        What was written: ``checkpoint``, ``step``, ``base``, ``format``, ``out``.

    Raises:
        ExportError: no checkpoint, or it lacks a part.
        facetrack.model.loading.CheckpointError: the base model cannot be loaded.
    """
    import tempfile

    from facetrack.model import loading

    checkpoint = find_checkpoint(source)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty")
    with tempfile.TemporaryDirectory(prefix="facetrack-export-") as tmp:
        local = Path(tmp)
        state = _fetch_checkpoint(checkpoint, local)
        base_source = _absolute_source(base or str(state.get("model") or ""))
        if not base_source:
            raise ExportError(f"{checkpoint}: the base model is unknown; pass base=")
        base_folder = loading.resolve_source(base_source)
        kind = loading.detect_format(base_folder)
        non_lora = loading.load_torch_file(local / NON_LORA_FILE)
        info = {"checkpoint": checkpoint, "step": state.get("step"), "base": base_source, "out": str(out)}
        out.mkdir(parents=True, exist_ok=True)
        face = state.get("face_encoder", "none")
        if face not in ("none", "vision_tower") and kind == "videollama2":
            base_face = json.loads((base_folder / "config.json").read_text()).get("face_encoder", "none")
            if base_face != face:
                raise ExportError(f"the run trained a {face} face branch that the base {base_source} lacks")
        if not merge and kind == "videollama2":
            _write_videollama2_lora(base_folder, base_source, local, out, state)
            info["format"] = "videollama2-lora"
        else:
            loaded = loading.load_model(base_source, merge_lora=True)
            model = loaded.model
            if face == "vision_tower":
                add_face_branch(model, int(state.get("face_tokens_per_frame", 4)))
            _load_non_lora(model, non_lora)
            from peft import PeftModel

            peft_model = PeftModel.from_pretrained(model.llm, str(local / "adapter"), is_trainable=False)
            model.llm = peft_model.merge_and_unload() if merge else peft_model
            loading.save_checkpoint(model, loaded.tokenizer, out)
            info["format"] = "facetrack-merged" if merge else "facetrack-adapter"
        shutil.copyfile(local / TRAIN_STATE_FILE, out / TRAIN_STATE_FILE)
    write_json(out / EXPORT_INFO_FILE, info)
    return info


def _load_non_lora(model: FaceTrackMM, state: dict[str, torch.Tensor]) -> None:
    from facetrack.model.modeling import module_key

    params = dict(model.named_parameters())
    missing = []
    for key, value in state.items():
        name = module_key(key, model.nested_vision)
        if name not in params:
            missing.append(key)
            continue
        with torch.no_grad():
            params[name].copy_(value.to(params[name].dtype))
    if missing:
        raise ExportError(
            f"the base model has no parameter for {len(missing)} trained tensors: {missing[:3]}"
        )


def _write_videollama2_lora(
    base_folder: Path, base_source: str, ckpt: Path, out: Path, state: dict[str, Any]
) -> None:
    from facetrack.model import loading

    config = json.loads((base_folder / "config.json").read_text(encoding="utf-8"))
    config["_name_or_path"] = base_source
    if state.get("face_encoder", "none") != "none":  # a face branch the run may have added to the base
        config["face_encoder"] = state["face_encoder"]
        config["face_tokens_per_frame"] = int(state.get("face_tokens_per_frame", 4))
    tower = str(config.get("mm_vision_tower") or "")
    if tower and (base_folder / tower).is_dir() and not Path(tower).is_absolute():
        shutil.copytree(base_folder / tower, out / tower)
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    for item in (ckpt / "adapter").iterdir():
        if item.is_file():
            shutil.copyfile(item, out / item.name)
    shutil.copyfile(ckpt / NON_LORA_FILE, out / NON_LORA_FILE)
    for name in (*loading.TOKENIZER_FILES, "special_tokens_map.json"):
        if (base_folder / name).is_file():
            shutil.copyfile(base_folder / name, out / name)
