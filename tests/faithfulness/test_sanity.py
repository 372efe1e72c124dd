"""Cascading randomisation: rank correlation, the user's model left alone, and a gradient map that decorrelates."""

import importlib.util

import pytest
import torch
from torch import nn

from tests.faithfulness.test_toys import RegionNet, input_gradient, mask_maps, region_images
from visattn.faithfulness import cascading_randomization, default_sanity_layers, spearman
from visattn.faithfulness.sanity import _reinitialize, average_ranks

N = 3
CLASSES = torch.ones(N, dtype=torch.long)


def test_spearman_of_identical_and_reversed_maps():
    a = torch.rand(4, 5, 6)
    torch.testing.assert_close(spearman(a, a), torch.ones(4))
    torch.testing.assert_close(spearman(a, a * 3 + 1), torch.ones(4))  # only the order matters
    torch.testing.assert_close(spearman(a, -a), -torch.ones(4))


def test_ties_get_their_average_rank():
    assert average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0]])).tolist() == [[3.0, 0.0, 3.0, 1.0, 3.0]]
    assert average_ranks(torch.tensor([[1.0, 1.0], [2.0, 1.0]])).tolist() == [[0.5, 0.5], [1.0, 0.0]]
    # By hand: ranks [0.5, 0.5, 2, 3] and [0, 1, 2.5, 2.5], centred [-1, -1, .5, 1.5] and [-1.5, -.5, 1, 1]:
    # dot 4, squared norms 4.5 and 4.5, so rho = 4 / 4.5.
    a, b = torch.tensor([[1.0, 1.0, 2.0, 5.0]]), torch.tensor([[0.0, 1.0, 4.0, 4.0]])
    torch.testing.assert_close(spearman(a, b), torch.tensor([4 / 4.5]))


@pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="scipy not installed")
def test_spearman_matches_scipy_with_many_ties():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 4, (3, 50), generator=g).float(), torch.randint(0, 6, (3, 50), generator=g).float()
    expected = torch.tensor([spearmanr(a[i], b[i]).statistic for i in range(3)], dtype=torch.float32)
    torch.testing.assert_close(spearman(a, b), expected)


def test_constant_map_has_no_rank_correlation():
    # As scipy.stats.spearmanr: a constant map has no ranking, so the correlation is undefined.
    assert spearman(torch.zeros(2, 3, 3), torch.rand(2, 3, 3)).isnan().all()
    assert spearman(torch.rand(2, 3, 3), torch.ones(2, 3, 3)).isnan().all()
    with pytest.raises(ValueError, match="same shape"):
        spearman(torch.rand(2, 3, 3), torch.rand(2, 3, 4))


def test_user_model_left_unchanged_and_flags_restored():
    model = RegionNet().train()
    model.bn1.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    result = cascading_randomization(model, region_images(N), CLASSES, input_gradient)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and model.fc.training and not model.bn1.training
    assert torch.equal(torch.get_rng_state(), rng)  # the re-initialisation forks the global RNG
    assert result.layers == ["fc", "bn1", "conv1"] == default_sanity_layers(model)
    assert result.spearman.shape == (3, N)


def test_flags_restored_when_explain_raises():
    model = RegionNet().train()

    def make(m):
        def explain(images, classes):
            raise RuntimeError("explain failed")
        return explain

    with pytest.raises(RuntimeError, match="explain failed"):
        cascading_randomization(model, region_images(N), CLASSES, make)
    assert model.training and model.bn1.training


def test_gradient_map_decorrelates_and_model_free_map_does_not():
    model, x = RegionNet(), region_images(N)
    grad = cascading_randomization(model, x, CLASSES, input_gradient)
    assert (grad.mean_spearman < 0.5).all()
    # A map that ignores the model is the failure the test exists to catch: it keeps correlation 1.
    fixed = cascading_randomization(model, x, CLASSES, lambda m: lambda images, classes: mask_maps(len(images)))
    torch.testing.assert_close(fixed.mean_spearman, torch.ones(3))


def test_constant_original_maps_are_excluded_not_rewarded():
    # An all-zero map ignores the model too; it must not score the best possible correlation (0).
    model, x = RegionNet(), region_images(N)
    zeros = cascading_randomization(model, x, CLASSES, lambda m: lambda images, classes: torch.zeros(
        len(images), *images.shape[2:]))
    assert zeros.spearman.isnan().all() and zeros.n_excluded == N and zeros.mean_spearman.isnan().all()

    # One image's original map is constant: it is left out, the others average as usual.
    def partly_constant(m):
        explain = input_gradient(m)
        return lambda images, classes: explain(images, classes) * (classes != 0).view(-1, 1, 1)

    classes = torch.tensor([0, 1, 1])
    part = cascading_randomization(model, x, classes, partly_constant)
    full = cascading_randomization(model, x, classes, input_gradient)
    assert part.n_excluded == 1 and part.spearman[:, 0].isnan().all()
    torch.testing.assert_close(part.mean_spearman, full.spearman[:, 1:].mean(1))


def test_randomised_map_collapsing_to_a_constant_counts_as_decorrelated():
    model, x = RegionNet(), region_images(N)

    def collapses_when_randomised(m):
        explain = input_gradient(m)
        return lambda images, classes: explain(images, classes) * float(m is model)

    result = cascading_randomization(model, x, CLASSES, collapses_when_randomised)
    assert result.n_excluded == 0 and torch.equal(result.spearman, torch.zeros(3, N))


def test_reproducible_for_a_seed():
    model, x = RegionNet(), region_images(N)
    a = cascading_randomization(model, x, CLASSES, input_gradient, layers=["fc"], seed=1)
    b = cascading_randomization(model, x, CLASSES, input_gradient, layers=["fc"], seed=1)
    c = cascading_randomization(model, x, CLASSES, input_gradient, layers=["fc"], seed=2)
    assert torch.equal(a.spearman, b.spearman) and not torch.equal(a.spearman, c.spearman)


def test_parameters_without_reset_are_reinitialised_reproducibly():
    class Gate(nn.Module):  # a bare parameter: no reset_parameters() to call
        def __init__(self):
            super().__init__()
            self.gate = nn.Parameter(torch.ones(3, 1, 1))

    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Gate()
            self.head = RegionNet()

        def forward(self, x):
            return self.head(x * self.attn.gate)

    model, x = Gated(), region_images(N)
    assert default_sanity_layers(model) == ["head", "attn"]
    a, b = Gate(), Gate()
    _reinitialize(a, seed=5)
    _reinitialize(b, seed=5)
    assert torch.equal(a.gate, b.gate) and not torch.equal(a.gate, torch.ones(3, 1, 1))
    assert float(a.gate.detach().abs().max()) < 0.1  # N(0, 0.02^2)
    result = cascading_randomization(model, x, CLASSES, input_gradient, layers=["head.fc", "attn"])
    assert result.layers == ["head.fc", "attn"] and torch.equal(model.attn.gate, torch.ones(3, 1, 1))


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
def test_reset_that_misses_parameters_is_completed():
    # Legacy weight_norm: conv.reset_parameters() redraws the derived `weight`, which the next forward recomputes
    # from weight_g / weight_v; those must be re-initialised too, or the layer keeps what it learned.
    torch.manual_seed(0)
    conv = nn.utils.weight_norm(nn.Conv2d(3, 4, 3))
    g, v = conv.weight_g.detach().clone(), conv.weight_v.detach().clone()
    x = torch.randn(1, 3, 8, 8)
    before = conv(x)
    _reinitialize(conv, seed=1)
    assert not torch.equal(conv.weight_g, g) and not torch.equal(conv.weight_v, v)
    assert not torch.allclose(conv(x), before)
    # A reset that writes every parameter is left as it is: Linear keeps PyTorch's uniform init, not N(0, 0.02^2).
    linear = nn.Linear(4, 3)
    _reinitialize(linear, seed=1)
    assert float(linear.weight.detach().abs().max()) > 0.1


    class DataReset(nn.Module):  # writes through .data, which leaves the version counter alone
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(4))

        def reset_parameters(self):
            self.weight.data.fill_(1.0)

    data_reset = DataReset()
    _reinitialize(data_reset, seed=1)
    assert torch.equal(data_reset.weight.detach(), torch.ones(4))


def test_the_models_own_parameters_are_a_last_step():
    class TokenNet(nn.Module):  # like a ViT: a parameter owned by the model itself, not by a child
        def __init__(self):
            super().__init__()
            self.net = RegionNet()
            self.offset = nn.Parameter(torch.full((1, 3, 1, 1), 0.5))

        def forward(self, x):
            return self.net(x + self.offset)

    model, x = TokenNet(), region_images(N)
    assert default_sanity_layers(model) == ["net", ""]
    result = cascading_randomization(model, x, CLASSES, input_gradient)
    assert result.layers == ["net", ""] and result.spearman.shape == (2, N)
    assert torch.equal(model.offset, torch.full((1, 3, 1, 1), 0.5))  # the user's model is untouched
    copy = TokenNet()
    state = {k: v.clone() for k, v in copy.net.state_dict().items()}
    _reinitialize(copy, seed=3, recurse=False)
    assert not torch.equal(copy.offset, torch.full((1, 3, 1, 1), 0.5))
    assert all(torch.equal(state[k], v) for k, v in copy.net.state_dict().items())  # children are not touched
    with pytest.raises(ValueError, match="'' has no parameters"):
        cascading_randomization(RegionNet(), x, CLASSES, input_gradient, layers=["fc", ""])


def test_invalid_layers_raise():
    model, x = RegionNet(), region_images(N)
    with pytest.raises(ValueError, match=r"'layer9' is not a submodule of the model; did you mean"):
        cascading_randomization(model, x, CLASSES, input_gradient, layers=["fc", "layer9"])
    with pytest.raises(ValueError, match="non-empty sequence"):
        cascading_randomization(model, x, CLASSES, input_gradient, layers=[])
    model.add_module("act", nn.ReLU())
    with pytest.raises(ValueError, match="'act' has no parameters"):
        cascading_randomization(model, x, CLASSES, input_gradient, layers=["act"])
