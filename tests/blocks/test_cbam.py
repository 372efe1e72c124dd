import pytest
import torch

from tests.conftest import randomize_parameters
from visattn import CBAM, ChannelAttention, SpatialAttention


def _pair(channels):
    cbam = randomize_parameters(CBAM(channels)).eval()
    return cbam, cbam.channel, cbam.spatial


def test_channel_first_is_sam_after_cam():
    cbam, cam, sam = _pair(16)
    x = torch.randn(2, 16, 6, 5)
    torch.testing.assert_close(cbam(x), sam(cam(x)))


@pytest.mark.parametrize("order", ["spatial_first", "parallel"])
def test_ablated_orders(order):
    cbam, cam, sam = _pair(16)
    cbam.order = order
    x = torch.randn(2, 16, 6, 5)
    expected = cam(sam(x)) if order == "spatial_first" else x * (cam(x) / x) * (sam(x) / x)
    torch.testing.assert_close(cbam(x), expected, rtol=1e-4, atol=1e-5)


def test_bad_order():
    with pytest.raises(ValueError, match="order must be one of"):
        CBAM(8, order="sideways")


def test_channel_attention_equals_paper_equation():
    cam = randomize_parameters(ChannelAttention(16, mlp_bias=True))
    x = torch.randn(2, 16, 5, 4)

    def mlp(v):
        return cam.fc2(torch.relu(cam.fc1(v)))

    weights = torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))  # Eq. 2, two separate MLP calls
    torch.testing.assert_close(cam(x), x * weights[:, :, None, None])


def test_spatial_attention_equals_paper_equation_without_norm():
    sam = randomize_parameters(SpatialAttention(16, norm_layer=None))
    x = torch.randn(2, 16, 5, 4)
    desc = torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True).values], 1)
    weights = torch.sigmoid(torch.nn.functional.conv2d(desc, sam.conv.weight, sam.conv.bias, padding=3))  # Eq. 3
    torch.testing.assert_close(sam(x), x * weights)


@pytest.mark.parametrize("k", [0, 4, -1, 2.0])
def test_spatial_kernel_must_be_odd(k):
    with pytest.raises(ValueError, match="^kernel_size must be a positive odd int"):
        SpatialAttention(8, kernel_size=k)
    with pytest.raises(ValueError, match="^spatial_kernel_size must be a positive odd int"):  # CBAM's own name
        CBAM(8, spatial_kernel_size=k)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_channel_attention_same_for_every_memory_layout(layout):
    cam = randomize_parameters(ChannelAttention(16)).double()
    ref_x = torch.randn(2, 16, 5, 4, dtype=torch.float64, requires_grad=True)
    x = ref_x.detach().clone()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(2, 16, 5, 8, dtype=torch.float64)[..., ::2].copy_(x)
    x.requires_grad_()
    g = torch.randn(2, 16, 5, 4, dtype=torch.float64)
    (grad_ref,) = torch.autograd.grad((cam(ref_x) * g).sum(), ref_x)
    (grad,) = torch.autograd.grad((cam(x) * g).sum(), x)
    torch.testing.assert_close(cam(x), cam(ref_x))
    torch.testing.assert_close(grad, grad_ref)
