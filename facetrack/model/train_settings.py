"""Fine-tuning settings: optimisation, schedule, precision, checkpointing; the DeepSpeed config they fill."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


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
