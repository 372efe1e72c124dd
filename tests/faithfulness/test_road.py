"""ROAD: noisy linear imputation solves its system, leaves kept pixels alone, and ranks maps correctly."""

import importlib.util

import pytest
import torch

from tests.faithfulness.test_toys import H, RegionNet, W, mask_maps, random_maps, region_images
from visattn.faithfulness import imputation_residual, linear_imputation, noisy_linear_imputation, road

N = 3
CLASSES = torch.ones(N, dtype=torch.long)


def _removed(n=2, h=12, w=14, seed=0):
    """Scattered pixels plus a solid block (a chain of removed pixels the fill must solve jointly), and the border."""
    g = torch.Generator().manual_seed(seed)
    removed = torch.rand(n, h, w, generator=g) < 0.4
    removed[:, 3:9, 4:11] = True
    removed[:, 0, :] = True
    return removed


def test_imputation_solves_the_system_and_keeps_kept_pixels():
    x = torch.randn(2, 3, 12, 14)
    removed = _removed()
    filled = linear_imputation(x, removed, tol=1e-6)
    assert imputation_residual(filled, removed).max() < 1e-4
    assert torch.equal(filled[~removed[:, None].expand_as(x)], x[~removed[:, None].expand_as(x)])
    assert imputation_residual(x, removed).max() > 0.1  # the residual does measure something


@pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="scipy not installed")
def test_imputation_matches_a_sparse_direct_solve():
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import spsolve

    x, removed = torch.randn(1, 2, 9, 11, dtype=torch.float64), _removed(1, 9, 11)[0]
    weights = {(dy, dx): (1 / 12 if dy and dx else 1 / 6) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx}
    unknown = {(int(y), int(x0)): i for i, (y, x0) in enumerate(removed.nonzero().tolist())}
    rows, cols, vals, rhs = [], [], [], torch.zeros(len(unknown), 2, dtype=torch.float64)
    for (y, x0), i in unknown.items():
        for (dy, dx), wt in weights.items():
            yy, xx = y + dy, x0 + dx
            if 0 <= yy < 9 and 0 <= xx < 11:
                rows.append(i), cols.append(i), vals.append(wt)  # diagonal: total in-image neighbour weight
                if removed[yy, xx]:
                    rows.append(i), cols.append(unknown[(yy, xx)]), vals.append(-wt)
                else:
                    rhs[i] += wt * x[0, :, yy, xx]
    solution = spsolve(csr_matrix((vals, (rows, cols)), shape=(len(unknown),) * 2), rhs.numpy())
    expected = x.clone()
    ys, xs = removed.nonzero(as_tuple=True)
    expected[0][:, ys, xs] = torch.from_numpy(solution).T
    torch.testing.assert_close(linear_imputation(x.float(), removed[None], tol=1e-7), expected.float(), atol=1e-5,
                               rtol=0)


def test_imputation_reproduces_constant_and_linear_images():
    # A harmonic fill of a constant is that constant; of a ramp, the ramp (the stencil is symmetric) away from borders.
    removed = torch.zeros(1, 12, 12, dtype=torch.bool)
    removed[0, 3:9, 2:10] = True
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
    ramp = (0.5 * xs - 0.2 * ys).expand(1, 3, 12, 12)
    torch.testing.assert_close(linear_imputation(ramp, removed), ramp, atol=1e-4, rtol=0)
    const = torch.full((1, 3, 12, 12), 0.7)
    torch.testing.assert_close(linear_imputation(const, _removed(1, 12, 12)), const)


def test_noise_only_on_removed_pixels_and_reproducible():
    x, removed = torch.randn(2, 3, 12, 14), _removed()
    a = noisy_linear_imputation(x, removed, noise=0.05, generator=torch.Generator().manual_seed(3))
    b = noisy_linear_imputation(x, removed, noise=0.05, generator=torch.Generator().manual_seed(3))
    clean = linear_imputation(x, removed)
    assert torch.equal(a, b)
    keep = ~removed[:, None].expand_as(x)
    assert torch.equal(a[keep], x[keep])
    noise = (a - clean)[~keep]
    assert 0.03 < float(noise.std()) < 0.07


def test_morf_below_lerf_for_the_true_map():
    model, x = RegionNet(), region_images(N)
    true = road(model, x, CLASSES, mask_maps(N))
    rand = road(model, x, CLASSES, random_maps(N))
    assert true.morf.shape == true.lerf.shape == (N, 9)
    torch.testing.assert_close(true.percentiles, torch.arange(10.0, 100, 10))
    assert true.morf_mean < 0.3 < 0.8 < true.lerf_mean
    assert true.gap > rand.gap + 0.5
    assert true.morf_curve.shape == (9,) and true.lerf_curve.shape == (9,)


def test_results_do_not_depend_on_batch_size():
    model, x = RegionNet(scale=2.0), region_images(N)
    a = road(model, x, CLASSES, random_maps(N), percentiles=(25, 75), batch_size=64)
    b = road(model, x, CLASSES, random_maps(N), percentiles=(25, 75), batch_size=1)
    torch.testing.assert_close(a.morf, b.morf)
    torch.testing.assert_close(a.lerf, b.lerf)


def test_nearly_all_removed_still_keeps_one_pixel():
    model, x = RegionNet(), region_images(1)
    result = road(model, x, CLASSES[:1], random_maps(1), percentiles=(99.9,), noise=0.0)
    assert torch.isfinite(result.morf).all() and torch.isfinite(result.lerf).all()


def test_invalid_arguments_raise():
    model, x, maps = RegionNet(), region_images(2), random_maps(2)
    with pytest.raises(ValueError, match="percentiles must be a non-empty sequence"):
        road(model, x, CLASSES[:2], maps, percentiles=(0, 50))
    with pytest.raises(ValueError, match="percentiles must be"):
        road(model, x, CLASSES[:2], maps, percentiles=())
    with pytest.raises(ValueError, match="noise must be a non-negative"):
        road(model, x, CLASSES[:2], maps, noise=-1)
    with pytest.raises(ValueError, match="keep at least one pixel"):
        linear_imputation(x, torch.ones(2, H, W, dtype=torch.bool))
    with pytest.raises(ValueError, match="removed must be a bool tensor of shape"):
        linear_imputation(x, torch.ones(2, H, W))
    with pytest.raises(ValueError, match="max_iter must be"):
        linear_imputation(x, maps > 0.5, max_iter=0)


def test_warns_when_the_solve_does_not_converge():
    removed = torch.zeros(1, 20, 20, dtype=torch.bool)
    removed[0, 1:19, 1:19] = True
    with pytest.warns(RuntimeWarning, match="relative residual"):
        linear_imputation(torch.randn(1, 1, 20, 20), removed, max_iter=2)
