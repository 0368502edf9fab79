"""The vision tower (CLIP or SigLIP, features of one hidden layer) and the frame preprocessing it expects."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


PreprocessMode = Literal["crop", "pad", "squash"]
"""How a frame becomes a square: ``crop`` (shortest edge resized, centre crop: CLIP's image processor and
VideoLLaMA2's inference), ``pad`` (padded to a square with the mean colour first, then resized: VideoLLaMA2's
``image_aspect_ratio: pad``) or ``squash`` (resized to the square, aspect ratio not kept)."""
PREPROCESS_MODES: tuple[str, ...] = ("crop", "pad", "squash")


class ImagePreprocessor:
    """Turns ``(N, H, W, 3)`` uint8 RGB frames into normalised ``(N, 3, size, size)`` float32 tensors.

    ``crop`` and ``pad`` do what CLIP's image processor does (transformers' ``CLIPImageProcessor`` with
    Pillow, as VideoLLaMA2 ran it): Pillow bicubic resize of the shortest edge to ``size`` (the long edge
    ``int(size * long / short)``), centre crop (top ``(h - size) // 2``, left ``(w - size) // 2``), then
    ``x / 255`` in float64 cast to float32, minus ``mean``, divided by ``std`` in float32. ``pad`` first
    pastes the frame in the middle of a square of the mean colour (``int(m * 255)`` per channel), as
    VideoLLaMA2's ``expand2square``. ``squash`` (used for face crops) resizes straight to the square with
    torch's antialiased bicubic kernel.

    Args:
        size: output side in pixels.
        mean, std: normalisation (0-1 scale).
        mode: ``crop``, ``pad`` or ``squash`` (see :data:`PreprocessMode`).
        pad_to_square: older spelling: ``True`` is ``pad``, ``False`` is ``crop`` (ignored when ``mode`` is
            given).
    """

    def __init__(
        self,
        size: int = 336,
        mean: tuple[float, float, float] = CLIP_MEAN,
        std: tuple[float, float, float] = CLIP_STD,
        pad_to_square: bool | None = None,
        mode: PreprocessMode | None = None,
    ) -> None:
        if mode is None:
            mode = "crop" if pad_to_square is False else "pad"
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"preprocess mode must be one of {', '.join(PREPROCESS_MODES)}, got {mode!r}")
        if int(size) < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = int(size)
        self.mean = tuple(float(x) for x in mean)
        self.std = tuple(float(x) for x in std)
        self.mode: PreprocessMode = mode

    def __repr__(self) -> str:
        return f"ImagePreprocessor(size={self.size}, mode={self.mode!r}, mean={self.mean}, std={self.std})"

    @property
    def pad_to_square(self) -> bool:
        return self.mode == "pad"

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], pad_to_square: bool | None = None, mode: PreprocessMode | None = None
    ) -> ImagePreprocessor:
        """From a ``preprocessor_config.json`` mapping (CLIP/SigLIP image processor keys)."""
        size = data.get("crop_size") or data.get("size") or 336
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge") or size.get("width")
        mean = tuple(float(x) for x in data.get("image_mean", CLIP_MEAN))
        std = tuple(float(x) for x in data.get("image_std", CLIP_STD))
        return cls(size=int(size), mean=mean, std=std, pad_to_square=pad_to_square, mode=mode)

    def to_dict(self) -> dict[str, Any]:
        """A ``preprocessor_config.json`` mapping that :meth:`from_dict` and CLIPImageProcessor both read."""
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": self.size},
            "do_center_crop": True,
            "crop_size": {"height": self.size, "width": self.size},
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "resample": 3,
            "do_convert_rgb": True,
        }

    @property
    def fill(self) -> tuple[int, int, int]:
        """The padding colour: the normalisation mean in 0-255 (``int(m * 255)``, as VideoLLaMA2)."""
        return tuple(int(x * 255) for x in self.mean)

    def resize_one(self, image: np.ndarray) -> np.ndarray:
        """One ``(H, W, 3)`` uint8 frame -> ``(size, size, 3)`` uint8 in ``crop`` or ``pad`` mode (Pillow)."""
        from PIL import Image

        pil = Image.fromarray(np.ascontiguousarray(image))
        if self.mode == "pad":
            w, h = pil.size
            if w != h:
                side = max(w, h)
                canvas = Image.new(pil.mode, (side, side), self.fill)
                canvas.paste(pil, ((side - w) // 2, (side - h) // 2))
                pil = canvas
        w, h = pil.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.size, int(self.size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            pil = pil.resize((new_w, new_h), resample=Image.BICUBIC)
        out = np.asarray(pil)
        top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
        return out[top : top + self.size, left : left + self.size]

    def resize(self, images: np.ndarray) -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 frames -> ``(N, 3, size, size)`` uint8, made square by :attr:`mode`.

        ``squash`` is one torch call for all frames (bicubic with antialiasing on uint8: within 2 grey levels
        of Pillow's kernel and several times faster); ``crop`` and ``pad`` go through Pillow, frame by frame,
        so that they give CLIP's image processor's pixels exactly.
        """
        if self.mode != "squash":
            arr = np.stack([self.resize_one(img) for img in images])
            return torch.from_numpy(arr).permute(0, 3, 1, 2)
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        if x.shape[-2:] != (self.size, self.size):
            size = (self.size, self.size)
            x = F.interpolate(x.contiguous(), size=size, mode="bicubic", antialias=True, align_corners=False)
        return x

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        """Preprocess ``images``: ``(N, H, W, 3)`` uint8 RGB -> ``(N, 3, size, size)`` float32, normalised."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] == 0 or images.shape[2] == 0:
            raise ValueError(f"images must be (N, H, W, 3) RGB, got shape {images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        x = self.resize(images).permute(0, 2, 3, 1).numpy()
        # transformers' rescale (float64, then float32) and normalize (float32), channels last.
        x = (x.astype(np.float64) * (1 / 255)).astype(np.float32)
        x = (x - np.array(self.mean, dtype=np.float32)) / np.array(self.std, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


VISION_MODEL_TYPES = ("clip_vision_model", "siglip_vision_model")


def vision_config_from_dict(data: dict[str, Any]):
    """A transformers vision config from a ``config.json`` mapping (CLIP/SigLIP, full or vision part)."""
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    data = dict(data)
    if "vision_config" in data and data.get("model_type") in ("clip", "siglip"):
        kind = data["model_type"]
        data = dict(data["vision_config"])
        data.setdefault("model_type", f"{kind}_vision_model")
    model_type = data.get("model_type", "clip_vision_model")
    data.pop("model_type", None)
    for key in ("architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        data.pop(key, None)
    if model_type == "clip_vision_model":
        return CLIPVisionConfig(**data)
    if model_type == "siglip_vision_model":
        return SiglipVisionConfig(**data)
    raise ValueError(f"unsupported vision tower type {model_type!r}; known: {', '.join(VISION_MODEL_TYPES)}")


class VisionTower(nn.Module):
    """A CLIP (or SigLIP) vision transformer returning the hidden states of one layer.

    ``select_layer=-2`` is the penultimate layer; ``select_feature="patch"`` drops the CLIP class token so a
    336 px / 14 px-patch frame gives 576 tokens. The wrapped model lives in ``self.vision_tower`` so its
    parameters are named ``vision_tower.vision_model.*`` as in VideoLLaMA2.
    """

    def __init__(self, config, select_layer: int = -2, select_feature: str = "patch") -> None:
        super().__init__()
        from transformers import CLIPVisionModel, SiglipVisionModel

        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"select_feature must be 'patch' or 'cls_patch', got {select_feature!r}")
        self.is_clip = config.model_type == "clip_vision_model"
        model_cls = CLIPVisionModel if self.is_clip else SiglipVisionModel
        self.vision_tower = model_cls(config)
        self.select_layer = select_layer
        self.select_feature = select_feature

    @property
    def config(self):
        return self.vision_tower.config

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    @property
    def grid(self) -> int:
        """Patches per side of a frame."""
        return self.image_size // int(self.config.patch_size)

    @property
    def num_tokens(self) -> int:
        extra = 1 if (self.is_clip and self.select_feature == "cls_patch") else 0
        return self.grid * self.grid + extra

    @property
    def kept_layers(self) -> int:
        """Encoder layers needed to reach the selected layer (layers after it are never run)."""
        total = int(self.config.num_hidden_layers)
        n = total + 1 + self.select_layer if self.select_layer < 0 else self.select_layer
        if not 0 <= n <= total:
            raise ValueError(f"select_layer {self.select_layer} is outside a {total}-layer vision tower")
        return n

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` -> ``(N, tokens, hidden)`` features of the selected layer.

        Only the layers up to the selected one run (the last layer of CLIP-L is skipped for layer -2):
        the encoder's layer list is cut for the call and restored afterwards.
        """
        inner = getattr(self.vision_tower, "vision_model", self.vision_tower)
        encoder = inner.encoder
        layers = encoder.layers
        n = self.kept_layers
        if n < len(layers):
            encoder.layers = layers[:n]
        try:
            if self.is_clip:  # CLIP's last_hidden_state is the last run layer's output, before post_layernorm
                feats = self.vision_tower(pixel_values=pixel_values).last_hidden_state
            else:  # SigLIP normalises its last_hidden_state: take the encoder's output instead
                feats = encoder(inputs_embeds=inner.embeddings(pixel_values)).last_hidden_state
        finally:
            encoder.layers = layers
        if self.is_clip and self.select_feature == "patch":
            feats = feats[:, 1:]
        return feats

    def patch_grid(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` -> ``(N, hidden, g, g)`` patch features as a map (class token dropped)."""
        feats = self.forward(pixel_values)
        if self.is_clip and self.select_feature == "cls_patch":
            feats = feats[:, 1:]
        n, p, d = feats.shape
        g = int(round(p**0.5))
        return feats.transpose(1, 2).reshape(n, d, g, g)
