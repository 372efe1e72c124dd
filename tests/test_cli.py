import subprocess
import sys

import pytest

from visattn.cli import main


def test_blocks_lists_every_registered_block(capsys):
    import visattn

    assert main(["blocks"]) == 0
    out = capsys.readouterr().out
    for name in visattn.list_blocks():
        assert f"\n{name} " in out
    assert "PixelSelfAttention" in out and "resnet{18,34,50}_cbam" in out


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "visattn", "blocks", "--channels", "64"], capture_output=True,
                            text=True, check=True)
    assert "SqueezeExcite" in result.stdout


@pytest.mark.parametrize(("argv", "resume", "epochs"), [
    (["--resume", "loop.epochs=3"], True, 3),  # argparse gives the override to --resume's optional PATH
    (["loop.epochs=3", "--resume"], True, 3),
    (["--resume", "runs/some-run", "loop.epochs=3"], "runs/some-run", 3),
    (["loop.epochs=3"], False, 3),
    (["optim.lr=0.1", "--resume", "runs/x", "loop.epochs=3"], "runs/x", 3),  # overrides on both sides of an option
    (["--resume", "runs/lr=0.1/last.safetensors"], "runs/lr=0.1/last.safetensors", 34),  # a path, not an override
])
def test_train_resume_flag_and_overrides(monkeypatch, argv, resume, epochs):
    from visattn.pipelines import train as train_module

    seen = {}
    monkeypatch.setattr(train_module, "train", lambda cfg, config_path, resume: seen.update(cfg=cfg, resume=resume))
    assert main(["train", "--config", "configs/quickstart.yaml", *argv]) == 0  # quickstart: 34 epochs
    assert seen["resume"] == resume and seen["cfg"].loop.epochs == epochs


def test_train_resume_of_a_missing_checkpoint_is_a_message(tmp_path, capsys):
    code = main(["train", "--config", "configs/quickstart.yaml", f"checkpoint.output_dir={tmp_path}",
                 "--resume", str(tmp_path / "none" / "last.safetensors"), "loop.progress=false"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow  # several seconds: ROAD's imputation solves dominate
def test_evaluate_cams_on_the_shipped_weights_with_two_tolerances(tmp_path, capsys):
    import json
    from pathlib import Path

    weights = Path(__file__).resolve().parents[1] / "weights" / "quickstart_resnet18_cbam_shapes.safetensors"
    # --tolerance before the source: a comma list, so it cannot swallow the positional argument.
    argv = ["evaluate-cams", "--tolerance", "0,2", str(weights), "--methods", "gradcam", "--num-images", "12",
            "--no-sanity", "--out", str(tmp_path), "--markdown"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| pointing (0 px) ↑ | pointing (2 px) ↑ |" in out
    data = json.loads((tmp_path / "faithfulness.json").read_text())
    scores = data["methods"]["gradcam"]["scores"]
    assert scores["pointing_game@2px"] >= scores["pointing_game"]  # a tolerance only adds hits
    assert data["pointing_baseline"]["pointing_game@2px"] >= data["pointing_baseline"]["pointing_game"]
    assert data["settings"]["tolerance"] == [0.0, 2.0] and data["better"]["pointing_game@2px"] == "higher"
    assert main(["evaluate-cams", str(weights), "--methods", "gradcam", "--tolerance", "1,1.0000001"]) == 2
    assert "different ones" in capsys.readouterr().err  # both would be the column "1 px"


@pytest.mark.parametrize(("argv", "message"), [
    (["blocks", "--channels", "0"], "channels must be a positive int"),
    (["bench", "blocks", "--quick", "--only", "cbma"], "only names unknown rows ['cbma']; valid: se, cam"),
    (["bench", "train", "--steps", "0"], "steps must be an int >= 1, got 0"),
    (["bench", "cams", "--quick", "--methods", "gradcm"], "gradcm"),
    (["overlay", "weights/quickstart_resnet18_cbam_shapes.safetensors", "--samples", "-3"],
     "--samples must be >= 0, got -3"),
])
def test_user_mistakes_are_messages_with_status_2(capsys, argv, message):
    # Status 1 stays free for a command's own failure (bench cams: maps that differ from pytorch-grad-cam's).
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
