"""Main-character selection (K-means on area and similarity), boxes at model frames, and crops."""

from __future__ import annotations

import numpy as np
import pytest

from facetrack.faces.select import (
    SelectConfig,
    _kmeans2,
    boxes_at,
    boxes_within,
    crop_square,
    select_main,
    track_features,
)
from facetrack.types import Track


def track(track_id: int, area: float, similarity: float, n: int = 10) -> Track:
    frames = list(range(n))
    return Track(track_id, frames, [(0.0, 0.0, 10.0, 10.0)] * n, [0.9] * n, area=area, similarity=similarity)


def test_no_track_no_main() -> None:
    assert select_main([]) is None


def test_one_track_is_the_main_one() -> None:
    assert select_main([track(4, 0.1, 0.5)]) == 4


def test_larger_cluster_by_area_wins_over_a_more_coherent_small_one() -> None:
    tracks = [
        track(1, 8.0, 0.90),
        track(2, 7.5, 0.92),
        track(3, 1.0, 0.99),
        track(4, 0.8, 0.995),
        track(5, 1.2, 0.99),
    ]
    assert select_main(tracks) == 1


def test_within_the_main_cluster_the_largest_area_wins() -> None:
    tracks = [track(1, 7.0, 0.95), track(2, 9.0, 0.94), track(3, 0.5, 0.95)]
    assert select_main(tracks) == 2


def test_features_are_standardised_before_clustering() -> None:
    # Two coherent and two incoherent trajectories of about the same size: standardised, the clusters
    # follow similarity whatever unit the area is in. Unscaled, multiplying the areas by 1000 would
    # make K-means split on area alone.
    tracks = [track(1, 1.0, 0.2), track(2, 1.1, 0.9), track(3, 1.2, 0.21), track(4, 1.3, 0.91)]
    feats = track_features(tracks)
    assert feats.shape == (4, 2)
    for scale in (1.0, 1000.0):
        labels = _kmeans2(feats * [scale, 1.0], seed=0)
        assert labels is not None
        assert labels[0] == labels[2] != labels[1] == labels[3]
    # The main cluster is the one with the larger mean area: {2, 4}; its largest trajectory is 4.
    assert select_main(tracks) == 4


def test_tracks_all_alike_pick_the_largest_area_then_the_lowest_id() -> None:
    assert select_main([track(3, 2.0, 0.9), track(1, 2.0, 0.9), track(2, 2.0, 0.9)]) == 1
    assert select_main([track(3, 2.0, 0.9), track(1, 2.0, 0.9), track(2, 2.1, 0.9)]) == 2


def test_short_tracks_are_not_candidates_unless_alone() -> None:
    flicker = track(9, 50.0, 1.0, n=2)
    steady = track(1, 5.0, 0.95, n=40)
    assert select_main([flicker, steady], SelectConfig(min_track_frames=3)) == 1
    assert select_main([flicker], SelectConfig(min_track_frames=3)) == 9


def test_boxes_are_interpolated_inside_and_held_outside() -> None:
    t = Track(1, [0, 2, 4], [(0, 0, 10, 10), (20, 0, 30, 10), (40, 0, 50, 10)], [1.0] * 3)
    times = [0.0, 0.1, 0.2, 0.3, 0.4]  # tracking frame k at 0.1 k seconds
    out = boxes_at(t, times, [0.05, 0.1, 0.25, 0.4, 0.45, -1.0])
    assert out[0] == pytest.approx((5, 0, 15, 10))
    assert out[1] == pytest.approx((10, 0, 20, 10))
    assert out[2] == pytest.approx((25, 0, 35, 10))
    assert out[4] == pytest.approx((40, 0, 50, 10))  # after the last observation: held
    assert out[5] == pytest.approx((0, 0, 10, 10))  # before the first: held
    within = boxes_within(t, times, [0.0, 0.45, 0.55], slack=0.1)
    assert within[0] is not None and within[1] is not None and within[2] is None


def test_crop_is_square_with_margin_and_black_outside() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[40:60, 90:110] = (255, 0, 0)  # a 20x20 red box
    crop = crop_square(image, (90, 40, 110, 60), margin=0.5, size=60)
    assert crop.shape == (60, 60, 3)
    red = (crop[..., 0] > 128) & (crop[..., 1] < 60)
    ys, xs = np.nonzero(red)
    # The box covers 1 / 1.5 of the crop's side, centred.
    assert ys.min() == pytest.approx(10, abs=1) and ys.max() == pytest.approx(49, abs=1)
    assert xs.min() == pytest.approx(10, abs=1) and xs.max() == pytest.approx(49, abs=1)
    corner = crop_square(image, (0, 0, 20, 20), margin=0.5, size=30)
    assert corner[:4, :4].max() == 0  # outside the frame: black padding


def test_mode_all_takes_the_main_characters_equals_whatever_their_cluster() -> None:
    from facetrack.faces.select import select_characters

    dialogue = [track(0, 2.05, 0.999), track(1, 2.27, 0.994)]  # K-means always splits two trajectories
    both = select_characters(dialogue, SelectConfig(mode="all"))
    assert both.main_track_id == 1 and both.characters == [1, 0]
    extras = select_characters([*dialogue, track(2, 0.3, 0.99)], SelectConfig(mode="all"))
    assert extras.characters == [1, 0]  # a small extra is not a character
    assert both.margin is not None and abs(both.margin - (1 - 2.05 / 2.27)) < 1e-9
    assert select_characters(dialogue, SelectConfig(mode="main")).characters == [1]
    assert select_characters(dialogue, SelectConfig(mode="all", tie=0.05)).characters == [1]
    with pytest.raises(ValueError, match="tie"):
        SelectConfig(tie=1.0)
