import functools

import pytest
import torch
from torch import nn

from visattn.blocks.components import Gate, check_channels, reduced_channels, resolve_act, resolve_norm


def test_resolve_act_accepts_names_classes_and_partials():
    assert resolve_act("relu") is nn.ReLU
    assert resolve_act("Hard-Sigmoid") is nn.Hardsigmoid
    assert resolve_act(nn.GELU) is nn.GELU
    leaky = functools.partial(nn.LeakyReLU, 0.2)
    assert resolve_act(leaky) is leaky
    assert resolve_act(None) is nn.Identity


def test_resolve_act_unknown_name_suggests():
    with pytest.raises(ValueError, match=r"act_layer='rlu'.*Did you mean 'relu'"):
        resolve_act("rlu")


def test_resolve_wrong_type():
    with pytest.raises(TypeError, match="norm_layer must be"):
        resolve_norm(3)


def test_resolve_refuses_layer_instances():
    # An instance is callable, but calling it with the block's arguments runs its forward: refuse it up front.
    with pytest.raises(TypeError, match=r"act_layer must be .* not an instance: pass ReLU"):
        resolve_act(nn.ReLU(inplace=True))
    with pytest.raises(TypeError, match="norm_layer must be .* not an instance: pass BatchNorm2d"):
        resolve_norm(nn.BatchNorm2d(4))


def test_resolve_norm_none():
    assert resolve_norm(None) is None
    assert resolve_norm("batchnorm") is nn.BatchNorm2d


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_check_channels(bad):
    with pytest.raises(ValueError, match="channels must be a positive int"):
        check_channels(bad)


def test_reduced_channels_follows_timm_rounding():
    assert reduced_channels(256, 1 / 16, None, 8) == 16
    assert reduced_channels(3, 1 / 16, None, 8) == 8  # never below the divisor
    assert reduced_channels(100, 1 / 16, None, 1) == 6
    assert reduced_channels(100, 1 / 16, 7, 8) == 7  # explicit width wins


@pytest.mark.parametrize(("kw", "match"), [(dict(rd_ratio=0), "rd_ratio"), (dict(rd_channels=0), "rd_channels"),
                                           (dict(rd_divisor=0), "rd_divisor")])
def test_reduced_channels_rejects(kw, match):
    args = dict(rd_ratio=0.25, rd_channels=None, rd_divisor=8) | kw
    with pytest.raises(ValueError, match=match):
        reduced_channels(64, **args)


def test_identity_gate_is_exactly_one_and_learns():
    gate = Gate("sigmoid", identity_init=True)
    z = torch.randn(4, 7, requires_grad=True)
    g = gate(z)
    assert torch.equal(g, torch.ones_like(g))
    (g * torch.randn_like(g)).sum().backward()
    assert gate.blend.grad is not None and gate.blend.grad.abs() > 0


def test_plain_gate_is_the_activation():
    z = torch.randn(4, 7)
    assert torch.equal(Gate("sigmoid")(z), torch.sigmoid(z))
    assert Gate("sigmoid").blend is None
