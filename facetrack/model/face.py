"""The face branch of FaceTrack-MM: encode the main character's crops, pool each frame to a few tokens.

Two encoders:

- ``facexformer``: the encoder of FaceXFormer (a Swin transformer whose four stage outputs are projected
  to a common width, resized to the first stage's 56 x 56 grid and fused by a 1x1 convolution: a
  ``(256, 56, 56)`` map for a 224 x 224 crop). Its weights come from a FaceXFormer checkpoint
  (``state_dict_backbone`` with ``backbone.0.*``, ``linear_c.*``, ``linear_fuse.*``); its decoder is not used.
- ``vision_tower``: the model's own vision tower run on the crops (its patch-token grid).

Either map is average-pooled to ``tokens_per_frame`` tokens per frame and projected to the LLM width by a
two-layer MLP (``face_projector``).

FaceXFormer's crops are prepared as its inference does (:class:`FaceXFormerPreprocessor`): resized to
224 x 224 whatever their shape (Pillow bicubic, through torchvision's ``Resize``), ``ToTensor`` and ImageNet
mean/std, in float32.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FACE_ENCODERS = ("none", "vision_tower", "facexformer")


class FaceXFormerPreprocessor:
    """Crops -> FaceXFormer's input, as its inference transform makes it.

    FaceXFormer runs ``Resize((224, 224), BICUBIC)`` on a Pillow image (the crop is stretched to the square,
    not padded or cut), ``ToTensor`` (``uint8 / 255`` in float32) and ``Normalize`` (ImageNet mean/std,
    float32). The same arithmetic here gives the same tensor, bit for bit.
    """

    mode = "squash"
    """How a crop becomes a square (the name :class:`facetrack.model.vision.ImagePreprocessor` uses)."""

    def __init__(
        self,
        size: int = 224,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        if int(size) < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = int(size)
        self.mean = tuple(float(x) for x in mean)
        self.std = tuple(float(x) for x in std)

    def __repr__(self) -> str:
        return f"FaceXFormerPreprocessor(size={self.size}, mean={self.mean}, std={self.std})"

    def resize(self, crops: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """Crops (``(N, h, w, 3)`` or a list of ``(h_i, w_i, 3)``, uint8 RGB) -> ``(N, 3, size, size)``
        uint8."""
        from PIL import Image

        out = []
        for crop in crops:
            crop = np.asarray(crop)
            if crop.ndim != 3 or crop.shape[-1] != 3 or crop.shape[0] == 0 or crop.shape[1] == 0:
                raise ValueError(f"a crop must be (h, w, 3) RGB, got shape {crop.shape}")
            if crop.dtype != np.uint8:
                raise ValueError(f"crops must be uint8, got {crop.dtype}")
            img = Image.fromarray(np.ascontiguousarray(crop))
            if img.size != (self.size, self.size):
                img = img.resize((self.size, self.size), resample=Image.BICUBIC)
            out.append(np.asarray(img))
        if not out:
            raise ValueError("no crops given")
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)

    def __call__(self, crops: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """Crops -> ``(N, 3, size, size)`` float32, normalised."""
        x = self.resize(crops).float().div(255)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return x.sub(mean).div(std)


def facexformer_preprocess(crops: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """FaceXFormer's inference transform on crops: ``(N, 3, 224, 224)`` float32 (see
    :class:`FaceXFormerPreprocessor`)."""
    return FaceXFormerPreprocessor()(crops)


def pool_grid(tokens: int) -> tuple[int, int]:
    """The ``(rows, cols)`` pooling grid for ``tokens`` tokens per frame: as square as possible."""
    if tokens < 1:
        raise ValueError(f"face tokens per frame must be >= 1, got {tokens}")
    rows = max(d for d in range(1, int(math.isqrt(tokens)) + 1) if tokens % d == 0)
    return rows, tokens // rows


def pool_tokens(feature_map: torch.Tensor, tokens: int) -> torch.Tensor:
    """``(N, C, h, w)`` -> ``(N, tokens, C)`` by adaptive average pooling to :func:`pool_grid`."""
    pooled = F.adaptive_avg_pool2d(feature_map, pool_grid(tokens))
    return pooled.flatten(2).transpose(1, 2)


class _StageProjection(nn.Module):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, H, W, C) -> (N, out, H, W)
        return self.proj(x).permute(0, 3, 1, 2)


class FaceXFormerEncoder(nn.Module):
    """FaceXFormer's multi-scale Swin encoder and fusion layer: ``(N, 3, 224, 224)`` -> ``(N, C, 56, 56)``.

    Parameter names match FaceXFormer checkpoints: ``backbone.0.*`` (the Swin stages), ``linear_c.{i}.proj.*``
    and ``linear_fuse.weight``.
    """

    STAGES = (1, 3, 5, 7)

    def __init__(
        self,
        patch_size: int = 4,
        embed_dim: int = 128,
        depths: list[int] | tuple[int, ...] = (2, 2, 18, 2),
        num_heads: list[int] | tuple[int, ...] = (4, 8, 16, 32),
        window_size: int = 7,
        fused_dim: int = 256,
    ) -> None:
        super().__init__()
        try:
            from torchvision.models.swin_transformer import SwinTransformer
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the FaceXFormer encoder needs torchvision: pip install 'facetrack[model]'"
            ) from exc
        self.arch = {
            "patch_size": int(patch_size),
            "embed_dim": int(embed_dim),
            "depths": [int(d) for d in depths],
            "num_heads": [int(h) for h in num_heads],
            "window_size": int(window_size),
            "fused_dim": int(fused_dim),
        }
        swin = SwinTransformer(
            patch_size=[patch_size, patch_size],
            embed_dim=embed_dim,
            depths=list(depths),
            num_heads=list(num_heads),
            window_size=[window_size, window_size],
            stochastic_depth_prob=0.0,
        )
        self.backbone = nn.Sequential(swin.features)
        widths = [embed_dim * 2**i for i in range(4)]
        self.linear_c = nn.ModuleList(_StageProjection(w, fused_dim) for w in widths)
        self.linear_fuse = nn.Conv2d(4 * fused_dim, fused_dim, kernel_size=1, bias=False)

    @property
    def hidden_size(self) -> int:
        return self.arch["fused_dim"]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values
        maps = []
        for i, layer in enumerate(self.backbone[0]):
            x = layer(x)
            if i in self.STAGES:
                maps.append(x)
        size = maps[0].shape[1:3]
        projected = [
            F.interpolate(proj(m), size=size, mode="bilinear", align_corners=False)
            for proj, m in zip(self.linear_c, maps)
        ]
        return self.linear_fuse(torch.cat(projected[::-1], dim=1))

    @staticmethod
    def arch_from_state_dict(state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Read the Swin shape (width, depths, heads, window) and fused width from FaceXFormer weights."""
        try:
            patch = state["backbone.0.0.0.weight"]
            fuse = state["linear_fuse.weight"]
        except KeyError as exc:
            raise ValueError(f"not a FaceXFormer encoder state dict: no {exc.args[0]!r}") from exc
        depths, heads, window = [], [], None
        for stage in FaceXFormerEncoder.STAGES:
            pattern = re.compile(rf"^backbone\.0\.{stage}\.(\d+)\.attn\.relative_position_bias_table$")
            blocks = {int(m.group(1)): state[k] for k in state for m in [pattern.match(k)] if m}
            if not blocks:
                raise ValueError(f"FaceXFormer state dict has no blocks in Swin stage {stage}")
            depths.append(len(blocks))
            table = blocks[0]
            heads.append(int(table.shape[1]))
            window = (math.isqrt(int(table.shape[0])) + 1) // 2
        return {
            "patch_size": int(patch.shape[-1]),
            "embed_dim": int(patch.shape[0]),
            "depths": depths,
            "num_heads": heads,
            "window_size": int(window),
            "fused_dim": int(fuse.shape[0]),
        }


def facexformer_encoder_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The encoder part of a FaceXFormer checkpoint (``{"state_dict_backbone": ...}`` or a state dict)."""
    state = checkpoint.get("state_dict_backbone", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError(
            "a FaceXFormer checkpoint must be a state dict or hold one under 'state_dict_backbone'"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    keep = ("backbone.0.", "linear_c.", "linear_fuse.")
    return {k: v for k, v in state.items() if k.startswith(keep) and isinstance(v, torch.Tensor)}


def face_projector(in_features: int, hidden: int) -> nn.Sequential:
    """Two linear layers with GELU between them: face features -> LLM width (keys ``0.*`` and ``2.*``)."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, hidden))
