"""A two-input classifier from a config: fused, image-only and side-only, trained end to end on the built-in data."""

import pytest
import timm
import torch

from visattn.config import load_train_config
from visattn.data.datasets import build_datasets
from visattn.models.fusion import FusionClassifier
from visattn.pipelines.trained import load_trained
from visattn.training.run import train

BENCHMARKS = __import__("pathlib").Path(__file__).resolve().parents[2] / "benchmarks"
_TINY = ["data.num_train=96", "data.num_val=40", "data.val_split=16", "data.batch_size=16", "loop.epochs=2",
         "loop.progress=false", "data.side={features: 12}", "model.small_input=true",
         "model.kwargs={layers: [1, 1, 1, 1], channels: [16, 16, 16, 16], stem_width: 16}"]


def test_the_three_classifiers_share_their_parts():
    backbone = timm.create_model("resnet18", num_classes=0, layers=[1, 1, 1, 1])
    fused = FusionClassifier(backbone, 12, 10, out_channels=64)
    x, side = torch.randn(2, 3, 32, 32), torch.randn(2, 12)
    assert fused(x, side).shape == (2, 10) and fused.fuse.gate.shape == (2, 64)
    image_only = FusionClassifier(backbone, 12, 10, inputs="image")
    torch.testing.assert_close(image_only(x, side), image_only(x, torch.zeros_like(side)))  # ignores the side
    side_only = FusionClassifier(None, 12, 10, inputs="side")
    torch.testing.assert_close(side_only(x, side), side_only(torch.zeros_like(x), side))  # ignores the image
    with pytest.raises(ValueError, match="block 'cbam' takes one input"):
        FusionClassifier(backbone, 12, 10, block="cbam")


@pytest.mark.parametrize("inputs", ["both", "image", "side"])
def test_fusion_configs_train_and_load_back(tmp_path, inputs):
    cfg = load_train_config(None, [*_TINY, f"model.fusion={{inputs: {inputs}}}"])
    result = train(cfg, run_dir=tmp_path / "run")
    assert result.epochs == 2 and 0 <= result.test_accuracy <= 1
    trained = load_trained(tmp_path / "run" / "last.safetensors", config=tmp_path / "run" / "config.yaml")
    assert isinstance(trained.model, FusionClassifier) and trained.model.inputs == inputs
    # The reloaded model scores the test split (images with their side vectors) as the run did at its end.
    test = build_datasets(cfg.data).test
    items = [test[i] for i in range(len(test))]
    images = torch.stack([image for (image, _), _ in items])
    side = torch.stack([vector for (_, vector), _ in items])
    labels = torch.tensor([label for _, label in items])
    with torch.no_grad():
        logits = trained.model(images, side)
    assert logits.shape == (len(test), 10)
    assert (logits.argmax(1) == labels).float().mean().item() == pytest.approx(result.test_accuracy)


def test_gate_per_class_script_on_a_trained_fusion(tmp_path):
    import importlib.util

    cfg = load_train_config(None, [*_TINY, "model.fusion={inputs: both}"])
    train(cfg, run_dir=tmp_path / "run")
    spec = importlib.util.spec_from_file_location("fusion_gates", BENCHMARKS / "fusion_gates.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    gates = module.main([str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    assert len(gates) == 10 and all(0 < mean < 1 for mean, _ in gates.values())
    assert (tmp_path / "out" / "gates_per_class.png").stat().st_size > 1000
