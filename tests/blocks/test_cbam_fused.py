"""The fused channel-first CBAM equals CBAM's equations computed naively, forward and backward, in float64."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from visattn.blocks import CBAM
from visattn.blocks.cbam_fused import fused_cbam_supported


def _naive(block: CBAM, x: torch.Tensor) -> torch.Tensor:
    """Eq. 2-3 of the paper with plain torch ops (no fused pooling, float64 throughout)."""
    ca, sa = block.channel, block.spatial
    mlp = lambda v: ca.fc2(ca.act(ca.fc1(v)))  # noqa: E731
    channel = ca.gate(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))
    x1 = x * channel[:, :, None, None]
    z = sa.conv(torch.cat((x1.mean(1, keepdim=True), x1.amax(1, keepdim=True)), 1))
    norm = sa.norm
    if isinstance(norm, torch.nn.BatchNorm2d):
        z = F.batch_norm(z, None, None, norm.weight, norm.bias, training=True, eps=norm.eps)
    return x1 * sa.gate(z)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("norm_layer", ["batchnorm", None])
@pytest.mark.parametrize("identity_init", [False, True])
def test_fused_matches_the_equations(channels_last: bool, norm_layer: str | None, identity_init: bool) -> None:
    block = CBAM(16, rd_channels=4, norm_layer=norm_layer, identity_init=identity_init, mlp_bias=True).double().train()
    block.fused_min_numel = 0  # fuse even this small test input
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    reference = copy.deepcopy(block)
    composed = copy.deepcopy(block)
    composed.fused = False
    x = torch.randn(3, 16, 7, 5, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert fused_cbam_supported(block, x)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = block(xa), _naive(reference, xb)
    grad = torch.randn_like(ya)
    ya.backward(grad)
    yb.backward(grad)
    torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-12)
    for (name, pa), pb in zip(block.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-10, atol=1e-12, msg=name)
    composed(x)  # BatchNorm running statistics: updated once per forward, as by the composed modules
    for a, b in zip(block.buffers(), composed.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)  # the composed pooling accumulates in float32


def test_fused_is_used_only_where_it_applies() -> None:
    block = CBAM(8)
    x = torch.randn(2, 8, 4, 4)
    assert not fused_cbam_supported(block, x)  # small maps: the composed modules are faster
    block.fused_min_numel = 0
    assert fused_cbam_supported(block, x)
    with torch.no_grad():
        assert not fused_cbam_supported(block, x)  # inference: the composed path is as cheap
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused_cbam_supported(block, x)
    for order in ("parallel", "spatial_first"):
        other = CBAM(8, order=order)
        other.fused_min_numel = 0
        assert not fused_cbam_supported(other, x)


def test_fused_and_composed_train_alike_in_float32() -> None:
    torch.manual_seed(0)
    fused = CBAM(32).train()
    fused.fused_min_numel = 0
    composed = copy.deepcopy(fused)
    composed.fused = False
    x = torch.randn(4, 32, 9, 9)
    for model in (fused, composed):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(fused.state_dict().values(), composed.state_dict().values(), strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-5)


def test_fused_backward_twice_and_with_frozen_gates() -> None:
    torch.manual_seed(0)
    block = CBAM(16, rd_channels=4).double().train()
    block.fused_min_numel = 0
    for p in block.channel.parameters():
        p.requires_grad_(False)  # a frozen channel gate: its MLP gets no gradient, the rest still does
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64, requires_grad=True)
    y = block(x)
    grad = torch.randn_like(y)
    y.backward(grad, retain_graph=True)
    first = [x.grad.clone()] + [p.grad.clone() for p in block.spatial.parameters()]
    y.backward(grad)  # the gates' small graphs are kept for a second backward
    second = [x.grad] + [p.grad for p in block.spatial.parameters()]
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(2 * a, b)
    assert all(p.grad is None for p in block.channel.parameters())
    reference = copy.deepcopy(block)
    xb = x.detach().clone().requires_grad_()
    _naive(reference, xb).backward(grad)
    torch.testing.assert_close(first[0], xb.grad)


def test_fused_differentiates_the_parameters_functional_call_passed() -> None:
    # torch.func.functional_call swaps the parameters in only for the forward call: backward must still give the
    # gradients of the tensors that were passed, not of the module's own.
    torch.manual_seed(0)
    block = CBAM(8, rd_channels=4).double().train()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    grads = []
    for fused_min_numel in (0, 10**9):  # fused, then composed
        block.fused_min_numel = fused_min_numel
        params = {n: (p.detach() * 1.5).requires_grad_() for n, p in block.named_parameters()}
        out = torch.func.functional_call(block, params, (x,))
        grads.append(torch.autograd.grad(out.square().sum(), list(params.values())))
        assert all(p.grad is None for p in block.parameters())
    for fused, composed in zip(*grads, strict=True):
        torch.testing.assert_close(fused, composed)


def test_compiled_cbam_trains_through_the_composed_path() -> None:
    # The fused node's backward differentiates graphs kept from forward (retain_graph=True), which AOTAutograd's
    # compiled graphs refuse; under torch.compile the block must fall back to the composed modules.
    torch.manual_seed(0)
    block = CBAM(8, rd_channels=4).train()
    block.fused_min_numel = 0
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    ref_out = block(x)
    ref_grad = torch.autograd.grad(ref_out.square().sum(), x)[0]
    compiled = torch.compile(block, backend="aot_eager", fullgraph=False)
    out = compiled(x)
    grad = torch.autograd.grad(out.square().sum(), x)[0]
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)
