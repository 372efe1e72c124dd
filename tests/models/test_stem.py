import pytest
import timm
import torch
import torchvision

from visattn import use_small_input_stem


@pytest.mark.parametrize("factory", [lambda: timm.create_model("resnet18", num_classes=10),
                                     lambda: torchvision.models.resnet18(num_classes=10)], ids=["timm", "torchvision"])
def test_small_stem_keeps_resolution(factory):
    model = use_small_input_stem(factory())
    assert model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3)
    assert isinstance(model.maxpool, torch.nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    layer1_out = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x))))) if hasattr(model, "relu") else \
        model.layer1(model.maxpool(model.act1(model.bn1(model.conv1(x)))))
    assert layer1_out.shape[-2:] == (32, 32)
    assert model(x).shape == (2, 10)


def test_timm_feature_info_updated():
    model = use_small_input_stem(timm.create_model("resnet50"))
    assert [f["reduction"] for f in model.feature_info] == [1, 1, 2, 4, 8]


@pytest.mark.parametrize("name", ["resnet18d", "mobilenetv3_small_100", "densenet121"])
def test_other_stems_lose_their_first_two_strides(name):
    # A deep ResNet-D stem, a MobileNet's stem conv and first depthwise conv, DenseNet's conv and pool: all keep their
    # weights and reach the last stage at 4x4 for 32x32 inputs, as the CIFAR ResNet does.
    model = timm.create_model(name, num_classes=10)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    use_small_input_stem(model)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert model.eval().forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)


@pytest.mark.parametrize(("name", "match"), [("regnetx_002", "sits in a residual block"),
                                            ("convnext_atto", "would not keep the size")])
def test_stems_that_cannot_lose_their_stride_are_refused(name, match):
    with pytest.raises(ValueError, match=match):
        use_small_input_stem(timm.create_model(name))


def test_even_kernel_rejected():
    with pytest.raises(ValueError, match="kernel_size"):
        use_small_input_stem(timm.create_model("resnet18"), kernel_size=4)


def test_stride_two_stem():
    model = use_small_input_stem(timm.create_model("resnet18"), stride=2)
    assert model.conv1.stride == (2, 2)
    assert [f["reduction"] for f in model.feature_info] == [2, 2, 4, 8, 16]
    feats = model.forward_intermediates(torch.randn(1, 3, 32, 32), intermediates_only=True)
    assert feats[-1].shape[-2:] == (2, 2)
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        use_small_input_stem(timm.create_model("resnet18"), stride=4)
