"""LoRA for fine-tuning: what trains (LoRA on the LLM, full-rank projectors), what stays frozen.

What trains (FaceTrack-MM, as in the paper and VideoLLaMA2): LoRA adapters on every linear layer of the
language model (not its output head), the STC connector (``mm_projector``) and the face projector at full
rank; the vision tower, the face encoder and the language model's own weights stay frozen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from facetrack.model.modeling import FaceTrackMM

FULL_RANK_MODULES: tuple[str, ...] = ("mm_projector", "face_projector")
"""Modules trained at full rank by default: the STC connector and the face projector."""
FROZEN_MODULES: tuple[str, ...] = ("vision_tower", "face_encoder")
"""Modules that never train: the vision tower and the face encoder."""


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
