"""Deletion and insertion (RISE) on a toy model whose evidence lies in a known region."""

import pytest
import torch
from torch import nn

from tests.faithfulness.test_toys import H, RegionNet, W, input_gradient, mask_maps, random_maps, region_images
from visattn.faithfulness import deletion, gaussian_blur, insertion
from visattn.faithfulness.perturbation import saliency_rank

N = 4
CLASSES = torch.ones(N, dtype=torch.long)


def _prob(model, x):
    with torch.no_grad():
        return model.eval()(x).softmax(-1)[:, 1]


def test_mask_map_beats_random_and_inverted_map():
    model, x = RegionNet(), region_images(N)
    maps = {"mask": mask_maps(N), "random": random_maps(N), "inverted": 1 - mask_maps(N)}
    dele = {k: deletion(model, x, CLASSES, m, steps=11).mean_auc for k, m in maps.items()}
    ins = {k: insertion(model, x, CLASSES, m, steps=11).mean_auc for k, m in maps.items()}
    assert dele["mask"] < dele["random"] - 0.1 and dele["random"] < dele["inverted"] - 0.1
    assert ins["mask"] > ins["random"] + 0.1 and ins["random"] > ins["inverted"] + 0.1


def test_constant_curve_auc_equals_the_constant():
    class Constant(nn.Module):
        def forward(self, x):
            return torch.tensor([[0.3, -0.4, 1.1]]).expand(len(x), 3)

    p = torch.tensor([0.3, -0.4, 1.1]).softmax(0)[2]
    result = deletion(Constant(), region_images(N), torch.full((N,), 2), random_maps(N), steps=7)
    torch.testing.assert_close(result.curves, p.expand(N, 7))
    torch.testing.assert_close(result.auc, p.expand(N))


@pytest.mark.parametrize("baseline", ["zero", "mean", "blur", "tensor"])
def test_deletion_curve_runs_from_the_image_to_the_baseline(baseline):
    model, x = RegionNet(scale=2.0), region_images(N)
    fill = {"zero": torch.zeros_like(x), "mean": x.mean((2, 3), keepdim=True).expand_as(x),
            "blur": gaussian_blur(x, 5.0), "tensor": torch.full((3, 1, 1), -0.25).expand_as(x)}[baseline]
    arg = torch.full((3, 1, 1), -0.25) if baseline == "tensor" else baseline
    result = deletion(model, x, CLASSES, random_maps(N), steps=5, baseline=arg)
    torch.testing.assert_close(result.fractions, torch.linspace(0, 1, 5))
    torch.testing.assert_close(result.curves[:, 0], _prob(model, x))
    torch.testing.assert_close(result.curves[:, -1], _prob(model, fill))


def test_insertion_curve_runs_from_the_blur_to_the_image():
    model, x = RegionNet(scale=2.0), region_images(N)
    result = insertion(model, x, CLASSES, random_maps(N), steps=5, blur_sigma=2.0)
    torch.testing.assert_close(result.curves[:, 0], _prob(model, gaussian_blur(x, 2.0)))
    torch.testing.assert_close(result.curves[:, -1], _prob(model, x))
    torch.testing.assert_close(result.mean_curve, result.curves.mean(0))


def test_deletion_step_removes_exactly_the_top_pixels():
    model, x = RegionNet(scale=2.0), region_images(1)
    maps = random_maps(1)
    result = deletion(model, x, CLASSES[:1], maps, steps=5)
    top = saliency_rank(maps).view(1, 1, H, W) < round(0.25 * H * W)
    torch.testing.assert_close(result.curves[0, 1], _prob(model, torch.where(top, 0.0, x))[0])


def test_ties_follow_row_major_order():
    # A constant map and a map decreasing in row-major order give the same order, hence the same curve.
    ranks = saliency_rank(torch.ones(2, 3, 4))
    assert torch.equal(ranks, torch.arange(12).expand(2, 12))
    model, x = RegionNet(), region_images(2)
    decreasing = -torch.arange(H * W, dtype=torch.float32).view(1, H, W).expand(2, H, W)
    a = deletion(model, x, CLASSES[:2], torch.ones(2, H, W), steps=9)
    b = deletion(model, x, CLASSES[:2], decreasing, steps=9)
    assert torch.equal(a.curves, b.curves)


def test_batch_size_and_explain_callable_do_not_change_results():
    model, x = RegionNet(), region_images(N)
    maps = input_gradient(model.eval())(x, CLASSES)
    a = insertion(model, x, CLASSES, maps, steps=6, batch_size=64)
    b = insertion(model, x, CLASSES, input_gradient(model), steps=6, batch_size=5)
    torch.testing.assert_close(a.curves, b.curves)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_gets_images_in_its_dtype(dtype):
    model, x = RegionNet(scale=2.0), region_images(N)  # float32 images, as a data loader gives them
    reference = deletion(model, x, CLASSES, mask_maps(N), steps=5)
    half = RegionNet(scale=2.0).to(dtype)
    seen = []
    half.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    for saliency in (mask_maps(N), input_gradient(half)):  # precomputed maps, and an explain callable
        result = deletion(half, x, CLASSES, saliency, steps=5, baseline="blur")
        assert result.curves.dtype == torch.float32 and bool(torch.isfinite(result.curves).all())
        result = deletion(half, x, CLASSES, saliency, steps=5)
        torch.testing.assert_close(result.curves, reference.curves, atol=2e-2, rtol=0)
    assert seen and set(seen) == {dtype}
    assert x.dtype == torch.float32  # the caller's tensor is not changed


def test_model_flags_restored_even_when_explain_raises():
    model = RegionNet().train()
    model.bn1.eval()  # a mixed state must come back as it was
    x = region_images(2)
    deletion(model, x, CLASSES[:2], random_maps(2), steps=3)
    assert model.training and model.fc.training and not model.bn1.training

    def broken(images, classes):
        assert not model.training  # explained in eval mode
        raise RuntimeError("explain failed")

    with pytest.raises(RuntimeError, match="explain failed"):
        insertion(model, x, CLASSES[:2], broken, steps=3)
    assert model.training and model.fc.training and not model.bn1.training


def test_invalid_arguments_raise():
    model, x, maps = RegionNet(), region_images(2), random_maps(2)
    c = CLASSES[:2]
    with pytest.raises(ValueError, match="steps must be an int >= 2"):
        deletion(model, x, c, maps, steps=1)
    with pytest.raises(ValueError, match="baseline must be one of"):
        deletion(model, x, c, maps, baseline="black")
    with pytest.raises(ValueError, match="does not broadcast"):
        deletion(model, x, c, maps, baseline=torch.zeros(5, 1, 1))
    with pytest.raises(ValueError, match=r"saliency must be a tensor of shape \(2, 16, 16\)"):
        deletion(model, x, c, maps[:, :8])
    with pytest.raises(ValueError, match="saliency must be finite"):
        insertion(model, x, c, torch.full_like(maps, float("nan")))
    with pytest.raises(ValueError, match="classes must be < the model's 2 outputs"):
        deletion(model, x, torch.tensor([1, 2]), maps, steps=2)
    with pytest.raises(ValueError, match="classes must be an integer tensor of shape"):
        deletion(model, x, torch.tensor([1.0, 0.0]), maps)
    with pytest.raises(ValueError, match="images must be a float tensor"):
        deletion(model, x[0], c, maps)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        insertion(model, x, c, maps, batch_size=0)
    with pytest.raises(ValueError, match="blur_sigma must be a positive"):
        insertion(model, x, c, maps, blur_sigma=0)
    with pytest.raises(TypeError, match="saliency must be a"):
        insertion(model, x, c, "gradcam")
