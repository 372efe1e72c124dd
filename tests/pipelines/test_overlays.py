"""`visattn overlay` and the quickstart weights: from a weights file alone to a gallery, bad files included."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from visattn.cli import main
from visattn.data.synthetic import CLASSES, ShapesDataset
from visattn.data.transforms import build_transform
from visattn.pipelines.trained import load_trained
from visattn.training.checkpoint import save_weights

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "weights" / "quickstart_resnet18_cbam_shapes.safetensors"


def test_shipped_weights_rebuild_the_quickstart_model() -> None:
    trained = load_trained(WEIGHTS)
    assert trained.classes == list(CLASSES)
    assert trained.config.model.name == "resnet18_cbam" and not trained.model.training
    # It is the trained model: nearly every validation image right (the model card says 96.3 % of 2,000).
    data = ShapesDataset("val", num_samples=200, image_size=32, seed=0,
                         transform=build_transform(trained.config.data, train=False, native_size=32))
    x = torch.stack([data[i][0] for i in range(200)])
    y = torch.tensor([data[i][1] for i in range(200)])
    with torch.no_grad():
        accuracy = (trained.model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9


def test_weights_without_config_need_one(tmp_path: Path) -> None:
    bare = tmp_path / "bare.safetensors"
    save_weights(bare, load_file(str(WEIGHTS)))
    with pytest.raises(ValueError, match="carries no training config.*--config"):
        load_trained(bare)
    trained = load_trained(bare, config=ROOT / "configs" / "quickstart.yaml")
    assert trained.classes == [f"class_{i}" for i in range(10)]  # names live in the metadata only
    with pytest.raises(FileNotFoundError, match="neither a run folder nor a weights file"):
        load_trained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="has no best.safetensors"):
        load_trained(tmp_path)


def _write_inputs(folder: Path) -> list[str]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(folder / "photo.jpg")
    Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 255, (33, 31, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.webp")
    Image.fromarray(rng.integers(0, 65535, (20, 24), dtype=np.uint16)).save(folder / "deep.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    return ["photo", "grey", "alpha", "deep"]


def test_overlay_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stems = _write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    code = main(["overlay", str(WEIGHTS), str(tmp_path / "in"), "--samples", "2", "--out", str(out),
                 "--methods", "gradcam,scorecam", "--batch-size", "3"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "6 images explained with gradcam, scorecam; 1 unreadable" in printed and "broken.jpg" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["images"]) == 6
    assert manifest["run"]["methods"] == ["gradcam", "scorecam"] and manifest["run"]["target_layers"] == ["layer3"]
    assert [e["source"].endswith("broken.jpg") for e in manifest["errors"]] == [True]
    sources = [Path(e["source"]).stem for e in manifest["images"]]
    assert sorted(sources[:4]) == sorted(stems) and sources[4:] == ["val_0000", "val_0001"]
    for entry in manifest["images"]:
        assert entry["label"] in CLASSES and 0 < entry["probability"] <= 1
        files = [entry["files"]["grid"], *entry["files"]["cams"].values(), *entry["files"]["block_maps"].values()]
        assert len(entry["files"]["block_maps"]) == 4  # one spatial gate per CBAM block
        for rel in files:
            with Image.open(out / rel) as im:
                assert im.size[0] > 0
        with Image.open(out / entry["files"]["original"]) as im:
            assert im.size == (32, 32)  # the eval transform's output, which the maps are drawn on
    assert (out / "index.html").read_text().count("<img") >= 6


def test_overlay_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["overlay", str(WEIGHTS)]) == 2
    assert "--samples N" in capsys.readouterr().err
    assert main(["overlay", str(WEIGHTS), "--samples", "1", "--methods", "gradcan"]) == 2
    assert "did you mean 'gradcam'" in capsys.readouterr().err
    assert main(["overlay", str(WEIGHTS), str(tmp_path / "nothing*.png")]) == 2
    assert "nothing*.png" in capsys.readouterr().err


def test_registered_variant_points_at_the_shipped_weights() -> None:
    import timm

    assert "resnet18_cbam_quickstart.shapes" in timm.list_pretrained("*quickstart*")
    model = timm.create_model("resnet18_cbam_quickstart", pretrained=True).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), load_trained(WEIGHTS).model(x), rtol=0, atol=0)
    missing = {"file": str(WEIGHTS.with_name("absent.safetensors"))}
    with pytest.raises(FileNotFoundError, match="absent.safetensors is missing"):
        timm.create_model("resnet18_cbam_quickstart", pretrained=True, pretrained_cfg_overlay=missing)


def test_options_between_paths_and_the_configs_overlay_layers(tmp_path: Path) -> None:
    _write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    code = main(["overlay", str(WEIGHTS), str(tmp_path / "in" / "photo.jpg"), "--methods", "gradcam", "--blocks",
                 "layer4", str(tmp_path / "in" / "grey.png"), "--out", str(out)])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [Path(e["source"]).name for e in manifest["images"]] == ["photo.jpg", "grey.png"]
    # The weights' config sets eval.overlay_layers=[layer3]; --layers overrides it.
    assert manifest["run"]["target_layers"] == ["layer3"]
    assert list(manifest["images"][0]["files"]["block_maps"]) == ["layer4.0.se.spatial"]
    main(["overlay", str(WEIGHTS), "--samples", "1", "--layers", "layer2,layer3", "--out", str(out)])
    assert json.loads((out / "manifest.json").read_text())["run"]["target_layers"] == ["layer2", "layer3"]


def test_plain_state_dict_with_a_timm_name_and_training_checkpoints(tmp_path: Path) -> None:
    import timm

    model = timm.create_model("resnet18", num_classes=3, layers=[1, 1, 1, 1])
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    trained = load_trained(tmp_path / "plain.pth", model_name="resnet18",
                           overrides=["model.kwargs={layers: [1, 1, 1, 1]}"])
    assert trained.classes == ["class_0", "class_1", "class_2"] and trained.config.data.image_size == 224
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(trained.model(x), model.eval()(x))
    with pytest.raises(ValueError, match="--config.*or its timm model name"):
        load_trained(tmp_path / "plain.pth")


def test_images_the_eval_transform_rejects_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((1, 1, 3), dtype=np.uint8)).save(tmp_path / "in" / "tiny.png")
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(tmp_path / "in" / "fine.png")
    crop = "data.eval_transforms=[{name: CenterCrop, height: 32, width: 32}]"
    assert main(["overlay", str(WEIGHTS), str(tmp_path / "in"), "--set", crop, "--out", str(tmp_path / "o")]) == 0
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert [Path(e["source"]).name for e in manifest["images"]] == ["fine.png"]
    assert "eval transform failed" in manifest["errors"][0]["error"]


def test_overlaying_a_folder_twice_skips_the_first_runs_output(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((20, 24, 3), 60 * i, np.uint8)).save(folder / f"p{i}.png")
    for _ in range(2):  # the output folder sits inside the explained folder
        assert main(["overlay", str(WEIGHTS), str(folder), "--out", str(folder / "overlays"), "--methods", "gradcam",
                     "--blocks", "none"]) == 0
        manifest = json.loads((folder / "overlays" / "manifest.json").read_text())
        assert sorted(Path(e["source"]).name for e in manifest["images"]) == ["p0.png", "p1.png"]


@pytest.mark.parametrize("name", ["resnet50", "vit_base_patch16_224", "efficientnet_b0"])
def test_a_timm_name_gets_timms_own_eval_preprocessing(name: str) -> None:
    import timm
    import timm.data

    from visattn.pipelines.trained import timm_eval_config

    reference = timm.data.create_transform(
        **timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict()))
    resize, crop = reference.transforms[:2]  # torchvision Resize(short side) and CenterCrop
    ours = timm_eval_config(name, []).data.eval_transforms
    assert [step["name"] for step in ours] == ["SmallestMaxSize", "CenterCrop"]
    assert ours[0]["max_size"] == resize.size and (ours[1]["height"], ours[1]["width"]) == tuple(crop.size)
    cv2_flags = {"bicubic": 2, "bilinear": 1}  # cv2.INTER_CUBIC, cv2.INTER_LINEAR
    assert ours[0]["interpolation"] == cv2_flags[resize.interpolation.value]


def test_overlay_output_in_the_explained_folder_or_above_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(folder / "p.png")
    monkeypatch.chdir(tmp_path)
    for out in (".", "photos"):  # the output folder holds the inputs: they are still explained
        assert main(["overlay", str(WEIGHTS), "photos", "--out", out, "--methods", "gradcam", "--blocks", "none"]) == 0
        manifest = json.loads((Path(out) / "manifest.json").read_text())
        assert [Path(e["source"]).name for e in manifest["images"]] == ["p.png"]


def test_timm_preprocessing_follows_an_image_size_override_and_squash_crops() -> None:
    from visattn.pipelines.trained import timm_eval_config

    steps = timm_eval_config("resnet50", ["data.image_size=288"]).data.eval_transforms
    assert steps[0]["max_size"] == 303 and (steps[1]["height"], steps[1]["width"]) == (288, 288)  # floor(288 / 0.95)
    assert timm.models.get_pretrained_cfg("coat_lite_medium_384").crop_mode == "squash"  # timm resizes both sides
    first = timm_eval_config("coat_lite_medium_384", []).data.eval_transforms[0]
    assert first["name"] == "Resize" and first["height"] == first["width"] == 384


def test_the_gallery_shows_relative_position_attention_per_head(tmp_path: Path) -> None:
    # A non-local model with 2-D relative positions, trained for one epoch, explained with --heads: the gallery holds
    # the mean map and each head's map of the query pixel, as files that decode.
    from visattn.config import load_train_config
    from visattn.pipelines.train import train

    cfg = load_train_config(None, [
        "data.num_train=64", "data.num_val=16", "data.batch_size=16", "loop.epochs=1", "loop.progress=false",
        "model.name=resnet18_nonlocal", "model.small_input=true",
        "model.kwargs={layers: [1, 1, 1, 1], channels: [16, 16, 16, 16], stem_width: 16, "
        "attn_kwargs: {num_heads: 2, position: relative, rd_channels: 8}}"])
    run = train(cfg, run_dir=tmp_path / "run").run_dir
    out = tmp_path / "gallery"
    assert main(["overlay", str(run), "--samples", "2", "--out", str(out), "--methods", "gradcam",
                 "--blocks", "layer3.*", "--query", "0.5,0.5", "--heads"]) == 0
    entry = json.loads((out / "manifest.json").read_text())["images"][0]
    maps = entry["files"]["block_maps"]
    assert set(maps) == {"layer3.0.se@0.5,0.5", "layer3.0.se@0.5,0.5#h0", "layer3.0.se@0.5,0.5#h1"}
    for rel in maps.values():
        with Image.open(out / rel) as im:
            im.load()
    assert (out / "index.html").read_text().count("<img") >= 2  # one grid per image, with every map in it


def test_a_killed_overlay_run_resumes_and_skips_its_own_output(tmp_path: Path) -> None:
    from visattn.export import writer

    stems = _write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    args = ["overlay", str(WEIGHTS), str(tmp_path / "in"), "--out", str(out), "--methods", "gradcam",
            "--format", "jpeg"]
    real = writer._write_item
    calls = []

    def dies_at_the_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    old_every, old_share = writer._SAVE_EVERY, writer._SAVE_SHARE
    writer._SAVE_EVERY, writer._SAVE_SHARE = (1, 0.0), math.inf  # save after every image: the kill leaves two
    try:
        writer._write_item = dies_at_the_third
        with pytest.raises(KeyboardInterrupt):
            main(args)
        writer._write_item = real
        first = json.loads((out / "manifest.json").read_text())
        assert first["complete"] is False and len(first["images"]) == 2
        calls.clear()
        writer._write_item = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
        assert main(args) == 0
    finally:
        writer._write_item, writer._SAVE_EVERY, writer._SAVE_SHARE = real, old_every, old_share
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True and len(calls) == len(stems) - 2  # only the unfinished images again
    assert sorted(Path(e["source"]).stem for e in manifest["images"]) == sorted(stems)
    assert all(e["files"]["grid"].endswith(".jpg") for e in manifest["images"])


def test_manifest_saves_come_every_25_images_or_20_s_but_take_at_most_a_tenth_of_the_time():
    from visattn.export.writer import _save_due

    assert _save_due(25, 0.5, 0.001) and not _save_due(24, 0.5, 0.001)
    assert _save_due(1, 20.0, 0.001) and not _save_due(1, 19.0, 0.001)
    # A large gallery whose last save took 3 s waits 30 s, however many images came since.
    assert not _save_due(1000, 29.0, 3.0) and _save_due(1000, 30.0, 3.0)
