"""Contract tests run over every registered block (timm's attn_layer contract plus visattn's own)."""

import io

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import visattn
from tests.conftest import BLOCK_NAMES, randomize_parameters
from visattn.utils import count_params

# Odd spatial sizes, 1x1, and channel counts that no reduction ratio divides.
SHAPES = [(2, 24, 7, 5), (1, 13, 1, 1), (2, 37, 33, 31)]


def _assert_shape_kept_and_finite(name, shape):
    block = randomize_parameters(visattn.create_block(name, shape[1])).eval()
    x = torch.randn(shape)
    y = block(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", BLOCK_NAMES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_shape_kept_and_finite(name, shape):
    _assert_shape_kept_and_finite(name, shape)


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_empty_batch_runs_forward_and_backward(name):
    # A DataLoader's last batch, or a filtered one, can be empty; the fused CPU paths must not index into it.
    block = visattn.create_block(name, 16)
    block.fused_min_numel = 0  # CBAM: take the fused path (other blocks ignore the attribute)
    x = torch.randn(0, 16, 7, 5, requires_grad=True)
    out = block.train()(x)
    out.sum().backward()
    assert out.shape == x.shape and x.grad.shape == x.shape


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_compiles_without_graph_breaks_and_matches_eager(name):
    # fullgraph=True fails on any graph break (a generator in math.prod once broke every gated block's graph).
    torch.manual_seed(0)
    block = visattn.create_block(name, 16).train()
    x = torch.randn(2, 16, 6, 5, requires_grad=True)
    expected = block(x)
    expected_grad = torch.autograd.grad(expected.square().sum(), x)[0]
    out = torch.compile(block, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(torch.autograd.grad(out.square().sum(), x)[0], expected_grad)


@pytest.mark.parametrize("name", BLOCK_NAMES)
@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # SDPA has no vmap rule (fallback)
def test_per_sample_gradients_with_torch_func(name):
    # vmap(grad(...)) over functional_call: the custom autograd ops must support torch.func, and CBAM's fused node
    # (which cannot) must stand aside. Eval mode: BatchNorm's running-stat update is not functional.
    torch.manual_seed(0)
    block = visattn.create_block(name, 16).eval()
    block.fused_min_numel = 0
    x = torch.randn(3, 16, 5, 6)
    params = {k: v.detach() for k, v in block.named_parameters()}
    buffers = dict(block.named_buffers())

    def loss(p, sample):
        return torch.func.functional_call(block, (p, buffers), (sample[None],)).square().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x)
    for i in range(len(x)):
        block.zero_grad()
        block(x[i:i + 1]).square().sum().backward()
        for key, p in block.named_parameters():
            torch.testing.assert_close(per_sample[key][i], p.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_default_block_is_not_identity_after_training_moves_it(name):
    # Guards against a block whose forward ignores its own parameters.
    block = randomize_parameters(visattn.create_block(name, 16)).eval()
    x = torch.randn(2, 16, 6, 5)
    assert not torch.allclose(block(x), x)


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_gradients_reach_every_parameter(name):
    block = randomize_parameters(visattn.create_block(name, 20)).train()
    x = torch.randn(3, 20, 6, 7, requires_grad=True)
    (block(x) * torch.randn(3, 20, 6, 7)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in block.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_identity_init_is_exact_and_can_learn(name):
    block = visattn.create_block(name, 20, identity_init=True)
    x = torch.randn(3, 20, 6, 7)
    for mode in (block.train, block.eval):
        mode()
        assert torch.equal(block(x), x)
    # Not a dead identity: some parameter must receive a gradient so training can move away from it.
    block.train()
    (block(x) * torch.randn_like(x)).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_device_and_dtype_kwargs_honoured(name):
    block = visattn.create_block(name, 16, device="meta", dtype=torch.float64)
    tensors = list(block.parameters()) + list(block.buffers())
    assert tensors
    for t in tensors:
        assert t.device.type == "meta"
        if t.is_floating_point():
            assert t.dtype == torch.float64


@pytest.mark.parametrize("name", BLOCK_NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward(name, dtype):
    block = randomize_parameters(visattn.create_block(name, 16)).eval()
    x = torch.randn(2, 16, 9, 7)
    ref = block(x)
    out = block.to(dtype)(x.to(dtype))
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_state_dict_round_trip(name):
    src = randomize_parameters(visattn.create_block(name, 16), seed=1).eval()
    buffer = io.BytesIO()
    torch.save(src.state_dict(), buffer)
    buffer.seek(0)
    dst = visattn.create_block(name, 16).eval()
    dst.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(2, 16, 5, 5)
    assert torch.equal(dst(x), src(x))


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_unknown_kwarg_is_rejected_with_suggestion(name):
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) 'identity_int' \(did you mean 'identity_init'\?\)"):
        visattn.create_block(name, 16, identity_int=True)


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_works_as_timm_attn_layer(name):
    cls = visattn.get_block(name)
    model = timm.create_model("resnet18", pretrained=False, num_classes=5, block_args=dict(attn_layer=cls))
    assert isinstance(model.layer3[1].se, cls)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_param_count_matches_formula_for_channel_blocks(name):
    # Reference counts computed by hand from each paper's structure, at 64 channels.
    expected = {
        "se": 64 * 8 + 8 + 8 * 64 + 64,  # rd 64/16 -> rounded up to divisor 8; FC biases
        "cam": 64 * 4 + 4 * 64,  # rd 4, no biases
        "spatial": 2 * 7 * 7 + 2,  # 7x7 conv over [mean, max], BN affine
        "cbam": 64 * 4 + 4 * 64 + 2 * 7 * 7 + 2,
        "nonlocal": 3 * (64 * 8 + 8) + 8 * 64 + 64 + 2 * 64,  # theta/phi/g, W_z, BN
    }
    if name not in expected:
        pytest.skip(f"no hand-computed count for user block {name!r}")
    assert count_params(visattn.create_block(name, 64)) == expected[name]


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(BLOCK_NAMES),
    batch=st.integers(1, 3),
    channels=st.integers(1, 40),
    height=st.integers(1, 12),
    width=st.integers(1, 12),
)
def test_property_shape_and_finiteness(name, batch, channels, height, width):
    _assert_shape_kept_and_finite(name, (batch, channels, height, width))


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_backward_under_autocast(name):
    # Under autocast, sum() comes back float32 while max() stays half: the fused pooling must not mix them.
    block = randomize_parameters(visattn.create_block(name, 16)).train()
    x = torch.randn(2, 16, 6, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", ["se", "cam", "cbam"])
def test_float16_pooling_does_not_overflow(name):
    block = visattn.create_block(name, 8).half().eval()
    x = torch.full((1, 8, 64, 64), 30.0, dtype=torch.float16)  # sum 122,880 > float16 max 65,504
    assert torch.isfinite(block(x)).all()
