"""The weights in weights/ load offline as timm models, match what visattn's own loader rebuilds from the same file,
and carry their record; benchmarks/cifar10_accuracy.py scores them on image files and on CIFAR's lossless pickles."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors import safe_open

from tests.conftest import fake_cifar
from visattn.data.cifar import load_cifar
from visattn.models.pretrained import SHIPPED, WEIGHTS_DIR
from visattn.pipelines.trained import load_trained

CIFAR10 = [name for name in SHIPPED if name.endswith("_cifar10")]
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _accuracy_script():
    spec = importlib.util.spec_from_file_location("cifar10_accuracy", BENCHMARKS / "cifar10_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metadata_text(name):
    with safe_open(str(WEIGHTS_DIR / SHIPPED[name].file), framework="pt") as f:
        return f.metadata() or {}


def _metadata(name):
    return {k: json.loads(v) for k, v in _metadata_text(name).items()}


def test_cifar10_models_are_registered():
    assert CIFAR10 and set(CIFAR10) <= set(timm.list_models("*_cifar10"))


@pytest.mark.parametrize("name", list(SHIPPED))
def test_timm_and_visattn_load_the_same_network(name):
    model = timm.create_model(name, pretrained=True).eval()  # offline: the file in weights/
    trained = load_trained(WEIGHTS_DIR / SHIPPED[name].file)  # rebuilt from the config in the file's metadata
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained.model.eval()(x), rtol=0, atol=0)
    data = trained.config.data
    assert model.pretrained_cfg["mean"] == pytest.approx(tuple(data.mean), abs=1e-6)
    assert model.pretrained_cfg["std"] == pytest.approx(tuple(data.std), abs=1e-6)
    assert model.pretrained_cfg["input_size"] == (3, data.image_size, data.image_size)
    assert len(trained.classes) == model.num_classes


@pytest.mark.parametrize("name", CIFAR10)
def test_cifar10_files_record_classes_in_cifar_order_and_their_test_accuracy(name):
    meta = _metadata(name)
    assert tuple(meta["classes"]) == _accuracy_script().CIFAR10_CLASSES
    assert 0.8 < meta["test_acc"] < 1.0 and meta["variant"] and meta["seed"] is not None
    assert meta["config"]["loop"]["amp"] == "none"  # float32 runs of the study, as the model cards say
    assert _accuracy_script().training_precision(_metadata_text(name)) == "float32"


def test_accuracy_script_names_the_precision_a_file_was_trained_in():
    precision = _accuracy_script().training_precision
    assert precision({"config": '{"loop": {"amp": "bf16"}}'}) == "bf16"
    assert precision({"config": '{"loop": {"amp": "auto"}}'}) == "amp auto"
    assert precision({}) == "unknown"


def test_accuracy_script_reads_cifar_pickles_and_image_folders_alike(tmp_path):
    script = _accuracy_script()
    pickles = fake_cifar(tmp_path, n_per_batch=20)
    pixels, labels, _ = load_cifar("cifar10", tmp_path, "test")  # (20, 32, 32, 3) uint8
    folder = tmp_path / "test"  # the same images as lossless PNG files
    for name in script.CIFAR10_CLASSES:
        (folder / name).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        Image.fromarray(image).save(folder / script.CIFAR10_CLASSES[label] / f"{i:04d}.png")
    name = CIFAR10[0]
    from_pickle = script.main([name, "--data", str(pickles)])[name]
    from_files = script.main([name, "--data", str(folder)])[name]
    expected = _reference_accuracy(name, pixels, labels)
    assert from_pickle == pytest.approx(expected) and from_files == pytest.approx(expected)


def _reference_accuracy(name, pixels, labels):
    """visattn's loader and a hand-written normalisation of the pixels: the script's figure computed another way."""
    trained = load_trained(WEIGHTS_DIR / SHIPPED[name].file)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (trained.config.data.mean, trained.config.data.std))
    with torch.no_grad():
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
        predicted = trained.model.eval()((images - mean) / std).argmax(1)
    return float((predicted.numpy() == np.asarray(labels)).mean())


def _samples_and_copies(tmp_path, script):
    """The first 20 test images as foolbox ships them (cifar10_<index>_<label>.png), and an ImageFolder copy that
    numbers each class's files in test order (PNG here, so both score alike)."""
    fake_cifar(tmp_path, n_per_batch=20)
    pixels, labels, _ = load_cifar("cifar10", tmp_path, "test")
    samples, copies = tmp_path / "samples", tmp_path / "copies"
    samples.mkdir()
    for name in script.CIFAR10_CLASSES:
        (copies / name).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        Image.fromarray(image).save(samples / f"cifar10_{i:02d}_{label}.png")
        in_class = sum(1 for other in labels[:i] if other == label)
        Image.fromarray(image).save(copies / script.CIFAR10_CLASSES[label] / f"{in_class:04d}.png")
    return pixels, labels, samples, copies


def test_accuracy_script_scores_test_set_samples_beside_their_copies(tmp_path, capsys):
    script = _accuracy_script()
    pixels, labels, samples, copies = _samples_and_copies(tmp_path, script)
    name = CIFAR10[0]
    accuracy = script.main([name, "--data", str(samples), "--same-images-from", str(copies)])[name]
    assert accuracy == pytest.approx(_reference_accuracy(name, pixels, labels))
    out = capsys.readouterr().out
    right = round(20 * accuracy)
    low, high = script.wilson_interval(right, 20)
    assert f"top-1 {100 * accuracy:.2f} % (95 % CI {100 * low:.1f}-{100 * high:.1f})" in out
    assert f"the same 20 images from {copies}: top-1 {100 * accuracy:.2f} %" in out
    assert "20 of 20 predictions agree" in out


def test_accuracy_script_refuses_copies_out_of_test_order_and_samples_with_gaps(tmp_path):
    script = _accuracy_script()
    _, labels, samples, copies = _samples_and_copies(tmp_path, script)
    folder = copies / script.CIFAR10_CLASSES[int(np.bincount(labels).argmax())]  # a class with several images
    first, second = sorted(folder.iterdir())[:2]
    first.rename(folder / "swap.png")
    second.rename(first)
    (folder / "swap.png").rename(second)
    with pytest.raises(SystemExit, match="does not number each class's files in test order"):
        script.main([CIFAR10[0], "--data", str(samples), "--same-images-from", str(copies)])
    next(samples.glob("cifar10_00_*.png")).unlink()
    with pytest.raises(SystemExit, match="must be the first test images, indices 0-18"):
        script.main([CIFAR10[0], "--data", str(samples)])


def test_accuracy_script_names_a_wrong_folder(tmp_path):
    (tmp_path / "cats").mkdir()
    with pytest.raises(SystemExit, match="expected CIFAR-10's python folder"):
        _accuracy_script().main([CIFAR10[0], "--data", str(tmp_path)])
