"""Pointing game and energy-based pointing game against hand-computed answers."""

import pytest
import torch

from visattn.faithfulness import pointing_game
from visattn.faithfulness.pointing import centre_baseline


def _case():
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 2] = 4.0  # the maximum, on the object
    maps[0, 3, 0] = 1.0
    maps[0, 0, 0] = 1.0
    maps[1, 0, 0] = 2.0  # the maximum, far from the object at (3, 3): distance sqrt(18) ~ 4.24
    maps[1, 3, 3] = 1.0
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, 1:3, 1:3] = True
    masks[0, 0, 0] = True
    masks[1, 3, 3] = True
    return maps, masks


def test_hand_computed_hits_and_energies():
    result = pointing_game(*_case())
    assert result.hits.tolist() == [True, False]
    torch.testing.assert_close(result.energy, torch.tensor([5 / 6, 1 / 3]))
    assert result.hit_rate == 0.5
    assert result.energy_mean == pytest.approx((5 / 6 + 1 / 3) / 2)
    assert result.n_excluded == 0


@pytest.mark.parametrize(("tolerance", "hit"), [(0, False), (4, False), (4.25, True), (15, True)])
def test_tolerance_is_a_euclidean_distance_in_pixels(tolerance, hit):
    assert pointing_game(*_case(), tolerance=tolerance).hits[1].item() is hit


def test_ties_point_at_the_first_maximum_in_row_major_order():
    maps = torch.ones(2, 3, 3)
    maps[1, 2, 1] = maps[1, 1, 2] = 5.0  # (1, 2) comes first in row-major order
    masks = torch.zeros(2, 3, 3, dtype=torch.bool)
    masks[0, 0, 0] = True
    masks[1, 1, 2] = True
    assert pointing_game(maps, masks).hits.tolist() == [True, True]
    masks[0, 0, 0], masks[0, 0, 1] = False, True
    masks[1, 1, 2], masks[1, 2, 1] = False, True
    assert pointing_game(maps, masks).hits.tolist() == [False, False]


def test_all_zero_map_has_zero_energy():
    masks = torch.zeros(1, 3, 3, dtype=torch.bool)
    masks[0, 1, 1] = True
    assert pointing_game(torch.zeros(1, 3, 3), masks).energy.tolist() == [0.0]


def test_empty_masks_raise_or_are_excluded():
    maps, masks = _case()
    masks[1] = False
    with pytest.raises(ValueError, match=r"masks of images \[1\] are empty"):
        pointing_game(maps, masks)
    result = pointing_game(maps, masks, on_empty="exclude")
    assert result.valid.tolist() == [True, False] and result.n_excluded == 1
    assert result.hit_rate == 1.0
    assert result.energy_mean == pytest.approx(5 / 6)
    assert torch.isnan(result.energy[1])
    masks[0] = False
    assert torch.isnan(torch.tensor(pointing_game(maps, masks, on_empty="exclude").hit_rate))


def test_invalid_inputs_raise():
    maps, masks = _case()
    with pytest.raises(ValueError, match=r"masks must have the saliency maps' shape \(2, 4, 4\)"):
        pointing_game(maps, masks[:, :3])
    with pytest.raises(ValueError, match=r"saliency must be a tensor of shape \(B, H, W\)"):
        pointing_game(maps[0], masks[0])
    with pytest.raises(TypeError, match="masks must be a bool tensor"):
        pointing_game(maps, masks.float())
    with pytest.raises(ValueError, match="tolerance must be a non-negative"):
        pointing_game(maps, masks, tolerance=-1)
    with pytest.raises(ValueError, match="on_empty must be"):
        pointing_game(maps, masks, on_empty="skip")
    with pytest.raises(ValueError, match="finite and non-negative"):
        pointing_game(-maps, masks)


def test_centre_baseline_points_at_the_centre_and_spreads_evenly():
    masks = torch.zeros(3, 5, 4, dtype=torch.bool)
    masks[0, 2, 1] = True  # the centre: (2, 1.5) -> first central pixel in row-major order is (2, 1)
    masks[1, 0, 3] = True  # a corner: a miss, except with a tolerance that reaches it
    masks[1, 4, :] = True
    result = centre_baseline(masks, on_empty="exclude")
    assert result.hits.tolist() == [True, False, False] and result.valid.tolist() == [True, True, False]
    torch.testing.assert_close(result.energy[:2], torch.tensor([1 / 20, 5 / 20]))
    assert torch.isnan(result.energy[2])
    assert centre_baseline(masks[1:2], tolerance=2).hits.tolist() == [True]  # (2, 1) to (4, 1) is 2 px
    with pytest.raises(TypeError, match="masks must be a bool tensor"):
        centre_baseline(masks.float())
    with pytest.raises(ValueError, match=r"masks must have shape \(B, H, W\) with B >= 1, got \(0, 5, 4\)"):
        centre_baseline(masks[:0])
    with pytest.raises(ValueError, match=r"masks must have shape .* got \(5, 4\)"):
        centre_baseline(masks[0])
