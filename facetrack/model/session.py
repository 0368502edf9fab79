"""One fine-tuning worker without Ray: LoRA model under a DeepSpeed engine, its steps and checkpoints."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facetrack.model.examples import (
    Batch,
    ExampleBuilder,
    MicroBatches,
    TrainItem,
    longest_prompt,
    visual_token_count,
)
from facetrack.model.lora import LoraSettings, TrainableReport, add_face_branch, apply_lora, is_lora_name
from facetrack.model.modeling import FaceTrackMM
from facetrack.model.run_checkpoints import save_trainables
from facetrack.model.schedule import DataOrder, cosine_scheduler, step_seed
from facetrack.model.train_metrics import StepStats
from facetrack.model.train_settings import TrainSettings, resolve_deepspeed_config, zero_stage


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
