"""Vision-language connectors of VideoLLaMA2: the spatial-temporal convolution (STC) connector and MLPs.

Parameter names follow VideoLLaMA2 (``s1``, ``sampler``, ``s2``, ``readout``) so that the weights stored under
``model.mm_projector.*`` in its checkpoints load unchanged.
"""

from __future__ import annotations

import re

import torch
from torch import nn


def _require_timm():
    try:
        from timm.layers import LayerNorm2d
        from timm.models.regnet import RegStage
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the STC connector needs timm: pip install 'facetrack[model]'") from exc
    return RegStage, LayerNorm2d


def mlp(depth: int, in_features: int, out_features: int) -> nn.Sequential:
    """``depth`` linear layers with GELU between them: in -> out -> ... -> out."""
    layers: list[nn.Module] = [nn.Linear(in_features, out_features)]
    for _ in range(1, depth):
        layers += [nn.GELU(), nn.Linear(out_features, out_features)]
    return nn.Sequential(*layers)


class STCConnector(nn.Module):
    """RegStage -> Conv3d downsampler + SiLU -> RegStage -> MLP readout.

    Input ``(B, T, N, D)`` frame features with ``N`` a square number of patch tokens (or ``(B, T, H, W, D)``);
    output ``(B, T' * H' * W', hidden)``. With the default (2, 2, 2) kernel, stride 2 and padding 1,
    ``T' = T // 2 + 1`` and ``H' = H // 2 + 1``: 8 frames of 24 x 24 patches give 845 tokens, 16 give 1521.

    Args:
        in_features: width of the frame features (the vision tower's hidden size).
        hidden: width of the connector and of its output (the LLM's hidden size).
        depth: blocks in each RegStage (0 replaces both stages by identity).
        mlp_depth: linear layers in the readout.
        downsample: (temporal, height, width) kernel and stride of the downsampler.
        padding: padding of the Conv3d downsampler (1 for ``stc_connector``, 0 for ``stc_connector_v35``).
        pool: replace the Conv3d with average pooling (``stp_connector``).
    """

    def __init__(
        self,
        in_features: int,
        hidden: int,
        depth: int = 4,
        mlp_depth: int = 2,
        downsample: tuple[int, int, int] = (2, 2, 2),
        padding: int = 1,
        pool: bool = False,
    ) -> None:
        super().__init__()
        self.downsample = tuple(downsample)
        self.padding = padding
        self.pool = pool
        if depth > 0:
            reg_stage, layer_norm_2d = _require_timm()
            stage = dict(stride=1, dilation=1, act_layer=nn.SiLU, norm_layer=layer_norm_2d)
            self.s1: nn.Module = reg_stage(depth=depth, in_chs=in_features, out_chs=hidden, **stage)
            self.s2: nn.Module = reg_stage(depth=depth, in_chs=hidden, out_chs=hidden, **stage)
        else:
            self.s1 = nn.Identity()
            self.s2 = nn.Identity()
        if pool:
            self.sampler = nn.Sequential(nn.AvgPool3d(self.downsample), nn.SiLU())
        else:
            conv = nn.Conv3d(
                hidden, hidden, kernel_size=self.downsample, stride=self.downsample, padding=padding
            )
            self.sampler = nn.Sequential(conv, nn.SiLU())
        self.readout = mlp(mlp_depth, hidden, hidden)

    def output_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """``(T', H', W')`` of the output for an input of ``frames`` frames of ``height x width`` patches."""
        pad = 0 if self.pool else self.padding
        return tuple(
            (size + 2 * pad - k) // k + 1 for size, k in zip((frames, height, width), self.downsample)
        )

    def num_tokens(self, frames: int, height: int, width: int) -> int:
        t, h, w = self.output_grid(frames, height, width)
        return t * h * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            b, t, n, d = x.shape
            side = int(round(n**0.5))
            if side * side != n:
                raise ValueError(f"STC connector needs a square number of patch tokens per frame, got {n}")
            x = x.reshape(b, t, side, side, d)
        if x.ndim != 5:
            raise ValueError(
                f"STC connector input must be (B, T, N, D) or (B, T, H, W, D), got {tuple(x.shape)}"
            )
        b, t, h, w, d = x.shape
        x = x.permute(0, 1, 4, 2, 3).reshape(b * t, d, h, w)
        x = self.s1(x)
        c = x.shape[1]
        x = x.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)  # (B, C, T, H, W)
        x = self.sampler(x)
        _, _, t2, h2, w2 = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * t2, c, h2, w2)
        x = self.s2(x)
        x = x.reshape(b, t2, c, h2, w2).permute(0, 1, 3, 4, 2).reshape(b, t2 * h2 * w2, c)
        return self.readout(x)


def _mean_over_time(x: torch.Tensor) -> torch.Tensor:
    return (x.flatten(2, 3) if x.ndim == 5 else x).mean(1)


class MeanPoolMLP(nn.Sequential):
    """``mlpNx_gelu`` projector: frame features averaged over time, then an MLP (keys ``0.*``, ``2.*``)."""

    def __init__(self, in_features: int, hidden: int, depth: int) -> None:
        super().__init__(*mlp(depth, in_features, hidden))

    def num_tokens(self, frames: int, height: int, width: int) -> int:
        return height * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_mean_over_time(x))


class MeanPoolLinear(nn.Linear):
    """``linear`` projector: frame features averaged over time, then one linear layer."""

    def num_tokens(self, frames: int, height: int, width: int) -> int:
        return height * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_mean_over_time(x))


PROJECTOR_TYPES = ("stc_connector", "stc_connector_v35", "stp_connector", "linear", "mlp<N>x_gelu")


def build_projector(projector_type: str, in_features: int, hidden: int) -> nn.Module:
    """The connector named by a VideoLLaMA2 ``mm_projector_type``.

    Raises:
        ValueError: for a type this package does not implement (the message lists the known ones).
    """
    if projector_type == "stc_connector":
        return STCConnector(in_features, hidden)
    if projector_type == "stc_connector_v35":
        return STCConnector(in_features, hidden, padding=0)
    if projector_type == "stp_connector":
        return STCConnector(in_features, hidden, pool=True)
    if projector_type == "linear":
        return MeanPoolLinear(in_features, hidden)
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if match:
        return MeanPoolMLP(in_features, hidden, depth=int(match.group(1)))
    raise ValueError(f"unknown mm_projector_type {projector_type!r}; known: {', '.join(PROJECTOR_TYPES)}")
