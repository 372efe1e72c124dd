"""timm's own pretrained models offline: from a file or the local hub caches, with ImageNet class names."""

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.conftest import make_trained_like
from visattn.cli import main
from visattn.pipelines.timm_weights import find_cached_weights, load_timm_pretrained
from visattn.pipelines.trained import class_names


def _weights(path, name="resnet18", seed=0):
    torch.manual_seed(seed)
    # Trained-like norms: timm's zero-initialised last BN of each branch would leave the residual convs unchecked.
    model = make_trained_like(timm.create_model(name, pretrained=False), seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


def test_imagenet_sized_classifiers_get_imagenet_names():
    names = class_names(1000)
    assert names[0] == "tench" and names[1] == "goldfish" and len(set(names)) > 990
    assert class_names(10) == [f"class_{i}" for i in range(10)]
    assert class_names(1000, imagenet=False)[0] == "class_0"
    assert len(class_names(21843)) == 21843  # timm's ImageNet-21k (Google) metadata too


def test_a_given_file_loads_with_timm_preprocessing(tmp_path):
    reference = _weights(tmp_path / "r18.safetensors").eval()
    trained = load_timm_pretrained("resnet18", file=tmp_path / "r18.safetensors")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(trained.model(x), reference(x))
    assert trained.classes[0] == "tench" and trained.config.data.image_size == 224
    with pytest.raises(ValueError, match="does not fit timm's 'resnet34'"):
        load_timm_pretrained("resnet34", file=tmp_path / "r18.safetensors")


def test_the_hugging_face_cache_is_read_and_nothing_downloaded(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError, match=r"never downloads, and it looked in: .*hub \(timm/resnet18.a1_in1k, "
                                                r"model.safetensors\).*resnet18_a1_0-d63eafa0.pth"):
        load_timm_pretrained("resnet18")
    repo = tmp_path / "hub" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    reference = _weights(repo / "snapshots" / "abc123" / "model.safetensors", seed=3).eval()
    path, _ = find_cached_weights("resnet18")
    assert path == repo / "snapshots" / "abc123" / "model.safetensors"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_timm_pretrained("resnet18").model(x), reference(x))


def test_overlay_with_timm_weights_labels_in_words(tmp_path):
    _weights(tmp_path / "r18.safetensors")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main(["overlay", "--model", "resnet18", "--pretrained-path", str(tmp_path / "r18.safetensors"),
                 str(tmp_path / "a.png"), "--out", str(out), "--methods", "gradcam"]) == 0
    entry = json.loads((out / "manifest.json").read_text())["images"][0]
    assert entry["label"] in class_names(1000) and not entry["label"].startswith("class_")
    plain = tmp_path / "plain.pth"
    torch.save(timm.create_model("resnet18").state_dict(), plain)  # plain weights + --model: the same names
    assert main(["overlay", str(plain), "--model", "resnet18", str(tmp_path / "a.png"), "--out",
                 str(tmp_path / "out2"), "--methods", "gradcam"]) == 0
    entry = json.loads((tmp_path / "out2" / "manifest.json").read_text())["images"][0]
    assert entry["label"] in class_names(1000)
    assert main(["overlay", "--pretrained", str(tmp_path / "a.png")]) == 2  # which model? --model is needed
