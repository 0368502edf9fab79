"""The vision tower (CLIP or SigLIP, features of one hidden layer) and the frame preprocessing it expects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ImagePreprocessor:
    """Turns ``(N, H, W, 3)`` uint8 RGB frames into normalised ``(N, 3, size, size)`` float tensors.

    With ``pad_to_square`` (VideoLLaMA2's ``image_aspect_ratio: pad``) a frame is first padded to a square
    with the mean colour, centred, so that nothing is cropped away; it is then resized with bicubic
    interpolation and normalised with ``mean``/``std``.
    """

    size: int = 336
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    pad_to_square: bool = True
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], pad_to_square: bool = True) -> ImagePreprocessor:
        """From a ``preprocessor_config.json`` mapping (CLIP/SigLIP image processor keys)."""
        size = data.get("crop_size") or data.get("size") or 336
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge") or size.get("width")
        mean = tuple(float(x) for x in data.get("image_mean", CLIP_MEAN))
        std = tuple(float(x) for x in data.get("image_std", CLIP_STD))
        return cls(size=int(size), mean=mean, std=std, pad_to_square=pad_to_square)

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
        """The padding colour: the normalisation mean in 0-255."""
        return tuple(int(x * 255) for x in self.mean)

    def resize(self, images: np.ndarray) -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 frames -> ``(N, 3, size, size)`` uint8, padded (if set) and resized.

        One torch call for all frames (bicubic with antialiasing on uint8, Pillow's kernel): within 2 grey
        levels of Pillow's ``Image.resize(..., BICUBIC)``, which CLIP's image processor uses, and several
        times faster.
        """
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        n, _, h, w = x.shape
        if self.pad_to_square and h != w:
            side = max(h, w)
            canvas = torch.tensor(self.fill, dtype=torch.uint8).view(1, 3, 1, 1).repeat(n, 1, side, side)
            top, left = (side - h) // 2, (side - w) // 2
            canvas[:, :, top : top + h, left : left + w] = x
            x = canvas
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
        x = self.resize(images).float()
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std]).view(1, 3, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std)]).view(1, 3, 1, 1)
        return x.mul_(scale).add_(shift)


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
