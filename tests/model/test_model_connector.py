"""STC connector: token counts of VideoLLaMA2's geometry, parameter names, other projector types."""

from __future__ import annotations

import pytest
import torch

from facetrack.model.connector import STCConnector, build_projector


@pytest.mark.parametrize(("frames", "tokens"), [(8, 845), (16, 1521)])
def test_stc_token_counts_at_336px(frames: int, tokens: int) -> None:
    # 336 px frames with 14 px patches: a 24 x 24 grid of 576 tokens per frame (width kept tiny here).
    connector = build_projector("stc_connector", in_features=8, hidden=16).eval()
    assert connector.num_tokens(frames, 24, 24) == tokens
    with torch.no_grad():
        out = connector(torch.randn(1, frames, 576, 8))
    assert out.shape == (1, tokens, 16)


def test_stc_accepts_grid_input_and_batches_independently() -> None:
    connector = STCConnector(in_features=4, hidden=8, depth=1).eval()
    x = torch.randn(3, 4, 6, 6, 4)
    with torch.no_grad():
        together = connector(x)
        alone = connector(x[1:2])
    assert together.shape == (3, connector.num_tokens(4, 6, 6), 8)
    torch.testing.assert_close(together[1:2], alone, rtol=1e-4, atol=1e-5)


def test_stc_rejects_non_square_token_count() -> None:
    connector = STCConnector(in_features=4, hidden=8, depth=0)
    with pytest.raises(ValueError, match="square"):
        connector(torch.randn(1, 2, 10, 4))


def test_stc_parameter_names_match_videollama2() -> None:
    keys = set(build_projector("stc_connector", 8, 16).state_dict())
    for key in (
        "s1.b1.conv1.conv.weight",
        "s1.b1.conv1.bn.weight",
        "s1.b4.conv3.conv.weight",
        "s1.b1.se.fc1.weight",
        "s1.b1.downsample.conv.weight",
        "sampler.0.weight",
        "sampler.0.bias",
        "s2.b4.conv2.conv.weight",
        "readout.0.weight",
        "readout.2.weight",
    ):
        assert key in keys, key
    conv = build_projector("stc_connector", 8, 16).sampler[0]
    assert conv.kernel_size == (2, 2, 2) and conv.stride == (2, 2, 2) and conv.padding == (1, 1, 1)


def test_v35_and_pooling_variants_have_their_geometry() -> None:
    assert build_projector("stc_connector_v35", 8, 16).num_tokens(8, 24, 24) == 4 * 12 * 12
    stp = build_projector("stp_connector", 8, 16).eval()
    assert stp.num_tokens(8, 24, 24) == 4 * 12 * 12
    with torch.no_grad():
        assert stp(torch.randn(1, 8, 576, 8)).shape == (1, 576, 16)


def test_mean_pool_projectors() -> None:
    mlp = build_projector("mlp2x_gelu", 8, 16)
    assert set(mlp.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert mlp(torch.randn(2, 4, 9, 8)).shape == (2, 9, 16)
    linear = build_projector("linear", 8, 16)
    assert set(linear.state_dict()) == {"weight", "bias"}
    x = torch.randn(1, 3, 4, 8)
    torch.testing.assert_close(linear(x)[0], x.mean(1)[0] @ linear.weight.T + linear.bias)


def test_unknown_projector_type() -> None:
    with pytest.raises(ValueError, match="unknown mm_projector_type 'qformer'"):
        build_projector("qformer", 8, 16)


def test_stc_token_order_matches_videollama2s_rearrangements() -> None:
    # The same submodules driven by VideoLLaMA2's einops patterns must give the same tokens in the same order.
    einops = pytest.importorskip("einops")
    connector = STCConnector(in_features=6, hidden=8, depth=1).eval()
    x = torch.randn(2, 4, 36, 6)
    with torch.no_grad():
        y = einops.rearrange(x, "b t (h w) d -> b d t h w", h=6, w=6)
        y = einops.rearrange(y, "b d t h w -> (b t) d h w")
        y = einops.rearrange(connector.s1(y), "(b t) d h w -> b d t h w", t=4)
        y = connector.sampler(y)
        t2 = y.size(2)
        y = einops.rearrange(y, "b d t h w -> (b t) d h w")
        y = einops.rearrange(connector.s2(y), "(b t) d h w -> b (t h w) d", t=t2)
        expected = connector.readout(y)
        torch.testing.assert_close(connector(x), expected)
