"""visattn.utils: the helpers other modules lean on."""

import timm
import torch
from torch import nn

import visattn
from visattn.utils import input_channels


class HeadFirst(nn.Module):
    """Registers its classifier conv before the stem that runs first."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(8, 4, 1)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)).mean((2, 3))


def test_input_channels_reads_timms_stem():
    kw = dict(layers=[1, 1, 1, 1], channels=[8, 8, 8, 8])
    assert input_channels(timm.create_model("resnet18", **kw)) == 3
    grey = timm.create_model("resnet18", in_chans=1, **kw)
    assert grey.pretrained_cfg["input_size"][0] == 3  # why the cfg's input_size cannot be trusted for channels
    assert input_channels(grey) == 1
    # inject probes with the stem's channels when no input_size is given.
    _, report = visattn.inject(grey, "se", stages=[4])
    assert report.input_size[0] == 1 and len(report.sites) == 1


def test_input_channels_does_not_guess_unless_asked():
    assert input_channels(HeadFirst()) is None
    assert input_channels(HeadFirst(), guess=True) == 8  # registration order: a guess, not an answer
    assert input_channels(nn.Linear(3, 3), guess=True) is None


def test_atomic_write_json_is_strict_json(tmp_path):
    import json
    import math

    from visattn.files import atomic_write_json

    path = tmp_path / "summary.json"
    atomic_write_json(path, {"std": math.nan, "ci": [-math.inf, math.inf, 0.5], "nested": {"x": (1.0, math.nan)}})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"std": None, "ci": [None, None, 0.5], "nested": {"x": [1.0, None]}}
