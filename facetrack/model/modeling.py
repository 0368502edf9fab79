"""FaceTrack-MM as one torch module: vision tower -> STC connector, face encoder -> projector, causal LM.

The video tokens of a clip and, when a main character was found, its face tokens are spliced, in that
order, where the prompt has its ``<video>`` placeholder. Every causal LM that transformers'
``AutoModelForCausalLM`` builds can serve as the language model (Mistral by default).

Checkpoint names follow VideoLLaMA2: the LM's own names (``model.layers.*``, ``lm_head.*``) plus
``model.vision_tower.*``, ``model.mm_projector.*`` and, for the face branch, ``model.face_projector.*`` and
``model.face_encoder.*``. :func:`checkpoint_state` and :func:`module_key` convert between these and the
module's attribute names.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from facetrack.model.connector import build_projector
from facetrack.model.face import (
    FACE_ENCODERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    FaceXFormerEncoder,
    FaceXFormerPreprocessor,
    face_projector,
    pool_tokens,
)
from facetrack.model.prompt import VIDEO_TOKEN_INDEX
from facetrack.model.vision import ImagePreprocessor, VisionTower, vision_config_from_dict

IGNORE_INDEX = -100

_PREFIXES = {
    "vision_tower.": "model.vision_tower.",
    "mm_projector.": "model.mm_projector.",
    "face_projector.": "model.face_projector.",
    "face_encoder.": "model.face_encoder.",
}


@dataclass
class ModelSpec:
    """Everything needed to build a FaceTrack-MM module (weights aside); JSON-able.

    ``llm`` and ``vision`` are transformers config mappings (``model_type`` included). ``image`` is the
    vision tower's preprocessor mapping (size, mean, std).
    """

    llm: dict[str, Any]
    vision: dict[str, Any]
    image: dict[str, Any] = field(default_factory=dict)
    vision_tower: str = ""
    """Where the vision tower came from (a hub id or path); informational."""
    select_layer: int = -2
    select_feature: str = "patch"
    projector_type: str = "stc_connector"
    num_frames: int = 8
    preprocess: str = "crop"
    """How frames become squares for the vision tower: ``crop`` (VideoLLaMA2's inference) or ``pad``
    (see :class:`facetrack.model.vision.ImagePreprocessor`); fine-tuning records the one it trained with."""
    face_encoder: str = "none"
    """``none`` (frames only), ``vision_tower`` (the vision tower on the crops) or ``facexformer``."""
    face_tokens_per_frame: int = 4
    face_encoder_arch: dict[str, Any] | None = None
    """FaceXFormer's Swin shape (see :class:`FaceXFormerEncoder`); ``None`` means Swin-B."""
    name: str = ""

    def __post_init__(self) -> None:
        if self.face_encoder not in FACE_ENCODERS:
            raise ValueError(f"face_encoder must be one of {FACE_ENCODERS}, got {self.face_encoder!r}")
        if self.face_tokens_per_frame < 1:
            raise ValueError(f"face_tokens_per_frame must be >= 1, got {self.face_tokens_per_frame}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.preprocess not in ("crop", "pad"):
            raise ValueError(f"preprocess must be 'crop' or 'pad', got {self.preprocess!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        data = dict(data)
        if "pad_to_square" in data:  # written before ``preprocess``: padded frames, or squashed (now cropped)
            legacy = data.pop("pad_to_square")
            data.setdefault("preprocess", "pad" if legacy else "crop")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model spec keys: {', '.join(unknown)}")
        return cls(**data)


def llm_config_from_dict(data: dict[str, Any]):
    """A transformers config for the language model from a ``config.json`` mapping."""
    from transformers import AutoConfig

    data = dict(data)
    model_type = data.pop("model_type", None)
    if not model_type:
        raise ValueError("the language model config has no model_type")
    for key in ("transformers_version", "_name_or_path", "architectures"):
        data.pop(key, None)
    return AutoConfig.for_model(model_type, **data)


_TOWER_CKPT = "model.vision_tower.vision_tower."
_TOWER_MODULE = "vision_tower.vision_tower."


def module_key(checkpoint_key: str, nested_vision: bool = False) -> str:
    """The module's parameter name for a checkpoint key (``model.mm_projector.x`` -> ``mm_projector.x``).

    Checkpoints name the vision transformer ``...vision_tower.vision_tower.vision_model.*``; newer
    transformers versions drop the inner ``vision_model`` level (``nested_vision=False``).
    """
    if checkpoint_key.startswith(_TOWER_CKPT):
        rest = checkpoint_key[len(_TOWER_CKPT) :]
        if not nested_vision:
            rest = rest.removeprefix("vision_model.")
        elif not rest.startswith("vision_model."):
            rest = "vision_model." + rest
        return _TOWER_MODULE + rest
    for ours, theirs in _PREFIXES.items():
        if checkpoint_key.startswith(theirs):
            return ours + checkpoint_key[len(theirs) :]
    return "llm." + checkpoint_key


def checkpoint_key(module_name: str, nested_vision: bool = False) -> str:
    """The checkpoint key for a parameter name of :class:`FaceTrackMM` (inverse of :func:`module_key`)."""
    if module_name.startswith(_TOWER_MODULE):
        rest = module_name[len(_TOWER_MODULE) :]
        return _TOWER_CKPT + (rest if nested_vision else "vision_model." + rest)
    for ours, theirs in _PREFIXES.items():
        if module_name.startswith(ours):
            return theirs + module_name[len(ours) :]
    if module_name.startswith("llm."):
        return module_name[len("llm.") :]
    raise ValueError(f"not a FaceTrack-MM parameter name: {module_name!r}")


class FaceTrackMM(nn.Module):
    """The model. Build with a spec (random weights) and load weights with :mod:`facetrack.model.loading`.

    Args:
        spec: architecture and preprocessing.
        llm: an existing causal LM to use (otherwise one is built from ``spec.llm`` with random weights).
    """

    def __init__(self, spec: ModelSpec, llm: nn.Module | None = None) -> None:
        super().__init__()
        self.spec = spec
        if llm is None:
            from transformers import AutoModelForCausalLM

            llm = AutoModelForCausalLM.from_config(llm_config_from_dict(spec.llm))
        self.llm = llm
        hidden = int(llm.config.hidden_size)
        self.vision_tower = VisionTower(
            vision_config_from_dict(spec.vision), spec.select_layer, spec.select_feature
        )
        self.mm_projector = build_projector(spec.projector_type, self.vision_tower.hidden_size, hidden)
        self.image_processor = ImagePreprocessor.from_dict(
            spec.image or {"crop_size": self.vision_tower.image_size}, mode=spec.preprocess
        )
        self.face_encoder: FaceXFormerEncoder | None = None
        self.face_projector: nn.Module | None = None
        self.face_processor: ImagePreprocessor | FaceXFormerPreprocessor | None = None
        if spec.face_encoder == "facexformer":
            arch = dict(spec.face_encoder_arch or {})
            self.face_encoder = FaceXFormerEncoder(**arch)
            self.face_projector = face_projector(self.face_encoder.hidden_size, hidden)
            # FaceXFormer's own transform: the crop resized (stretched) to 224 x 224, ImageNet mean/std.
            self.face_processor = FaceXFormerPreprocessor(size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        elif spec.face_encoder == "vision_tower":
            self.face_projector = face_projector(self.vision_tower.hidden_size, hidden)
            self.face_processor = self.image_processor
        self.face_tokens_per_frame = spec.face_tokens_per_frame
        self.encoder_chunk = 0
        """Images per vision-tower (and face-encoder) pass; ``0``: all images of a batch in one pass. On CPU,
        passes of about 16 images keep activations in cache and run faster than one large pass."""

    # -- shapes -------------------------------------------------------------------------------------

    @property
    def nested_vision(self) -> bool:
        """Whether the transformers vision model keeps an inner ``vision_model`` module (older versions)."""
        return hasattr(self.vision_tower.vision_tower, "vision_model")

    @property
    def has_face_branch(self) -> bool:
        return self.face_projector is not None

    @property
    def hidden_size(self) -> int:
        return int(self.llm.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.llm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.llm.parameters()).dtype

    def num_video_tokens(self, frames: int) -> int:
        """Visual tokens the connector gives for ``frames`` frames."""
        g = self.vision_tower.grid
        return int(self.mm_projector.num_tokens(frames, g, g))

    def num_face_tokens(self, frames: int) -> int:
        return frames * self.face_tokens_per_frame if self.has_face_branch else 0

    # -- preprocessing ------------------------------------------------------------------------------

    def preprocess_frames(self, frames: np.ndarray) -> torch.Tensor:
        """``(T, H, W, 3)`` uint8 -> ``(T, 3, S, S)`` float32 for the vision tower."""
        return self.image_processor(frames)

    def preprocess_faces(self, crops: np.ndarray) -> torch.Tensor:
        """``(T, h, w, 3)`` uint8 crops -> ``(T, 3, s, s)`` float32 for the face encoder."""
        if self.face_processor is None:
            raise RuntimeError("this model has no face branch")
        return self.face_processor(crops)

    # -- encoders -----------------------------------------------------------------------------------

    def encode_video(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, T, 3, S, S)`` -> ``(B, N, hidden)``: all frames of all clips in one vision-tower pass."""
        b, t = pixel_values.shape[:2]
        param = next(self.vision_tower.parameters())
        frames = pixel_values.reshape(b * t, *pixel_values.shape[2:]).to(param.device, param.dtype)
        feats = self._in_chunks(self.vision_tower, frames)
        feats = feats.reshape(b, t, *feats.shape[1:])
        if self.vision_tower.is_clip and self.vision_tower.select_feature == "cls_patch":
            feats = feats[:, :, 1:]
        return self.mm_projector(feats.to(next(self.mm_projector.parameters()).dtype))

    def encode_faces(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(M, T, 3, s, s)`` crops -> ``(M, T * tokens_per_frame, hidden)`` face tokens."""
        if not self.has_face_branch:
            raise RuntimeError("this model has no face branch")
        m, t = pixel_values.shape[:2]
        encoder = self.face_encoder if self.face_encoder is not None else self.vision_tower
        param = next(encoder.parameters())
        crops = pixel_values.reshape(m * t, *pixel_values.shape[2:]).to(param.device, param.dtype)
        if self.face_encoder is not None:
            fmap = self._in_chunks(self.face_encoder, crops)
        else:
            fmap = self._in_chunks(self.vision_tower.patch_grid, crops)
        tokens = pool_tokens(fmap, self.face_tokens_per_frame)  # (M*T, k, C)
        tokens = tokens.reshape(m, t * self.face_tokens_per_frame, tokens.shape[-1])
        return self.face_projector(tokens.to(next(self.face_projector.parameters()).dtype))

    def _in_chunks(self, fn: Any, images: torch.Tensor) -> torch.Tensor:
        """``fn(images)``, in passes of :attr:`encoder_chunk` images when it is set."""
        n = self.encoder_chunk
        if n <= 0 or images.shape[0] <= n:
            return fn(images)
        return torch.cat([fn(images[i : i + n]) for i in range(0, images.shape[0], n)])

    # -- splicing -----------------------------------------------------------------------------------

    def embed(
        self,
        sequences: Sequence[Sequence[int]],
        visual: Sequence[torch.Tensor],
        labels: Sequence[Sequence[int]] | None = None,
        padding_side: str = "left",
        pad_at: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Token embeddings with each sequence's ``<video>`` placeholder replaced by its visual tokens.

        Args:
            sequences: token ids, each with exactly one :data:`VIDEO_TOKEN_INDEX`.
            visual: per sequence, ``(n_i, hidden)`` visual tokens (video tokens, then face tokens).
            labels: optional per-sequence labels aligned with ``sequences``; visual positions get
                ``IGNORE_INDEX``.
            padding_side: ``left`` for generation, ``right`` for training.
            pad_at: with left padding, where the padding goes: ``0`` (before everything) or after the first
                ``pad_at`` positions, which every sequence must share (a prompt prefix whose attention
                cache is computed once for the batch; see :meth:`generate`).

        Returns:
            ``(inputs_embeds (B, L, hidden), attention_mask (B, L), labels (B, L) or None)``.
        """
        if len(sequences) != len(visual):
            raise ValueError(f"{len(sequences)} sequences but {len(visual)} visual token sets")
        embed_tokens = self.llm.get_input_embeddings()
        device, dtype = embed_tokens.weight.device, embed_tokens.weight.dtype
        rows, row_labels = [], []
        for i, (ids, vis) in enumerate(zip(sequences, visual)):
            ids = list(ids)
            where = [j for j, tok in enumerate(ids) if tok == VIDEO_TOKEN_INDEX]
            if len(where) != 1:
                raise ValueError(
                    f"sequence {i} must hold exactly one <video> placeholder, found {len(where)}"
                )
            p = where[0]
            text = torch.tensor(ids[:p] + ids[p + 1 :], dtype=torch.long, device=device)
            emb = embed_tokens(text)
            rows.append(torch.cat([emb[:p], vis.to(device, dtype), emb[p:]], dim=0))
            if labels is not None:
                lab = list(labels[i])
                if len(lab) != len(ids):
                    raise ValueError(f"labels of sequence {i} have length {len(lab)}, ids {len(ids)}")
                row_labels.append(lab[:p] + [IGNORE_INDEX] * vis.shape[0] + lab[p + 1 :])
        length = max(r.shape[0] for r in rows)
        embeds = torch.zeros(len(rows), length, rows[0].shape[-1], device=device, dtype=dtype)
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
        out_labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long, device=device)
        if pad_at and padding_side != "left":
            raise ValueError("pad_at needs left padding")
        if pad_at > min(r.shape[0] for r in rows):
            raise ValueError(f"pad_at={pad_at} is longer than the shortest sequence")
        for i, row in enumerate(rows):
            n = row.shape[0]
            if padding_side == "left":
                # Padding goes after the first pad_at positions (0: before everything).
                where = torch.cat([torch.arange(pad_at), torch.arange(length - n + pad_at, length)])
            else:
                where = torch.arange(n)
            where = where.to(device)
            embeds[i, where] = row
            mask[i, where] = 1
            if labels is not None:
                out_labels[i, where] = torch.tensor(row_labels[i], dtype=torch.long, device=device)
        return embeds, mask, (out_labels if labels is not None else None)

    def visual_tokens(
        self, pixel_values: torch.Tensor, face_pixels: Sequence[torch.Tensor | None] | None = None
    ) -> list[torch.Tensor]:
        """Per clip: video tokens, followed by its face tokens when it has crops and the model a face branch.

        Args:
            pixel_values: ``(B, T, 3, S, S)`` frames.
            face_pixels: per clip ``(T_f, 3, s, s)`` crops or ``None`` (frames alone).
        """
        video = self.encode_video(pixel_values)
        out = list(video.unbind(0))
        if face_pixels is None or not self.has_face_branch:
            return out
        with_faces = [i for i, f in enumerate(face_pixels) if f is not None]
        if with_faces:
            lengths = {face_pixels[i].shape[0] for i in with_faces}
            if len(lengths) == 1:
                faces = self.encode_faces(torch.stack([face_pixels[i] for i in with_faces]))
                per_clip = dict(zip(with_faces, faces.unbind(0)))
            else:
                per_clip = {i: self.encode_faces(face_pixels[i][None])[0] for i in with_faces}
            for i, tokens in per_clip.items():
                out[i] = torch.cat([out[i], tokens.to(out[i].dtype)], dim=0)
        return out

    def forward(
        self,
        sequences: Sequence[Sequence[int]],
        pixel_values: torch.Tensor,
        face_pixels: Sequence[torch.Tensor | None] | None = None,
        labels: Sequence[Sequence[int]] | None = None,
        padding_side: str = "right",
    ):
        """One training/scoring pass; returns the LM's output (with ``loss`` when ``labels`` are given)."""
        visual = self.visual_tokens(pixel_values, face_pixels)
        embeds, mask, lab = self.embed(sequences, visual, labels, padding_side=padding_side)
        return self.llm(inputs_embeds=embeds, attention_mask=mask, labels=lab)

    @torch.inference_mode()
    def generate(
        self,
        sequences: Sequence[Sequence[int]],
        pixel_values: torch.Tensor,
        face_pixels: Sequence[torch.Tensor | None] | None = None,
        share_prefix: bool = True,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Batched generation (left padding); returns ``(B, new_tokens)`` ids, padded after EOS.

        With ``share_prefix`` and more than one sequence, the text the sequences share before ``<video>``
        (the chat opening and system prompt, for captioning) goes through the language model once for the
        whole batch: its attention cache is copied to every row, and each row's padding sits after it.
        The output is the same as without sharing (the prefix's positions and attention are unchanged).
        """
        visual = self.visual_tokens(pixel_values, face_pixels)
        prefix = shared_prefix_length(sequences) if share_prefix and len(sequences) > 1 else 0
        shared = self._prefix_cache(list(sequences[0][:prefix]), len(sequences)) if prefix >= 2 else None
        if shared is None:
            embeds, mask, _ = self.embed(sequences, visual, padding_side="left")
            return self.llm.generate(inputs_embeds=embeds, attention_mask=mask, **generate_kwargs)
        embeds, mask, _ = self.embed(sequences, visual, padding_side="left", pad_at=prefix)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=mask, **shared, **generate_kwargs)

    def _prefix_cache(self, ids: list[int], batch: int) -> dict[str, Any] | None:
        """The language model's attention cache for ``ids`` (one pass), repeated for ``batch`` rows, keyed by
        the name ``generate`` takes it under (``cache``, or ``past_key_values`` in transformers before 5);
        ``None`` when the model returns no cache object that can be repeated (then nothing is shared).
        """
        base = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        params = inspect.signature(base.forward).parameters
        cache_arg = "cache" if "cache" in params else "past_key_values"
        kwargs: dict[str, Any] = {"use_cache": True}
        for name in ("logits_to_keep", "num_logits_to_keep"):  # skip the output layer on the prefix
            if name in params:
                kwargs[name] = 1
                break
        ids_t = torch.tensor([ids], dtype=torch.long, device=self.device)
        out = self.llm(input_ids=ids_t, attention_mask=torch.ones_like(ids_t), **kwargs)
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        if not hasattr(cache, "batch_repeat_interleave"):
            return None
        cache.batch_repeat_interleave(batch)
        return {cache_arg: cache}


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every sequence shares before its ``<video>`` placeholder."""
    first = list(sequences[0])
    n = first.index(VIDEO_TOKEN_INDEX) if VIDEO_TOKEN_INDEX in first else len(first)
    for seq in sequences[1:]:
        seq = list(seq)
        n = min(n, len(seq))
        n = next((j for j in range(n) if seq[j] != first[j]), n)
    return n


def checkpoint_state(model: FaceTrackMM) -> dict[str, torch.Tensor]:
    """The model's weights under checkpoint (VideoLLaMA2) names; tied LM weights appear once."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for name, tensor in model.state_dict().items():
        key = checkpoint_key(name, model.nested_vision)
        ptr = tensor.data_ptr()
        if ptr in seen and tensor.numel() > 0 and key.startswith("lm_head."):
            continue
        seen.setdefault(ptr, key)
        out[key] = tensor
    return out
