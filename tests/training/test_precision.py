"""loop.amp: 'auto' follows the device and, on a CPU, a timed step; an explicit bf16 that is slower says so."""

import pytest
import torch
from torch import nn

from visattn.training import precision
from visattn.training.precision import resolve_amp, time_train_step


def _model():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


def _fake_timings(monkeypatch, fp32, bf16):
    monkeypatch.setattr(precision, "time_train_step", lambda model, size, *, amp, channels_last, batch_size,
                        side_features: bf16 if amp == "bf16" else fp32)


def test_auto_on_cpu_takes_the_measured_faster_precision(monkeypatch):
    cpu = torch.device("cpu")
    _fake_timings(monkeypatch, fp32=0.30, bf16=0.10)
    choice = resolve_amp("auto", cpu, _model(), (3, 8, 8))
    assert choice.amp == "bf16" and "100 ms in bf16 and 300 ms in float32" in choice.reason
    _fake_timings(monkeypatch, fp32=0.30, bf16=0.29)  # under 1.1x faster: float32's exactness wins
    assert resolve_amp("auto", cpu, _model(), (3, 8, 8)).amp == "none"


def test_explicit_bf16_that_is_slower_warns_and_is_kept(monkeypatch):
    _fake_timings(monkeypatch, fp32=0.10, bf16=0.18)
    with pytest.warns(UserWarning, match=r"loop.amp='bf16' is slower than float32 here .*0.56x the speed"):
        assert resolve_amp("bf16", torch.device("cpu"), _model(), (3, 8, 8)).amp == "bf16"


def test_none_is_never_measured_and_fp16_needs_cuda(monkeypatch):
    monkeypatch.setattr(precision, "time_train_step", lambda *a, **k: pytest.fail("measured"))
    assert resolve_amp("none", torch.device("cpu"), _model(), (3, 8, 8)).amp == "none"
    with pytest.raises(ValueError, match="loop.amp='fp16' needs CUDA"):
        resolve_amp("fp16", torch.device("cpu"), _model(), (3, 8, 8))


def test_timing_leaves_the_model_and_the_random_stream_alone():
    model = _model().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    seconds = time_train_step(model, (3, 8, 8), amp="bf16", channels_last=True, batch_size=4, repeats=1)
    assert seconds > 0
    assert torch.equal(torch.rand(3), expected)  # the run's own random draws are unchanged
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_channels_last_is_refused_where_onednn_mishandles_1x1_strided_convs(tmp_path):
    # A narrow ResNet's 1x1 stride-2 downsample over 8 channels: oneDNN's channels_last weight gradient corrupts
    # memory there (it crashed a 64x64 run). The run warns, trains NCHW, and config.yaml still says what was asked.
    import timm

    from visattn.config import load_train_config
    from visattn.training.precision import channels_last_hazard
    from visattn.training.run import train

    narrow = timm.create_model("resnet18", layers=[1, 1, 1, 1], channels=[8, 8, 8, 8], stem_width=8)
    assert "layer2.0.downsample.0 is a 1x1 stride-2 convolution over 8 channels" in channels_last_hazard(narrow)
    assert channels_last_hazard(timm.create_model("resnet18", layers=[1, 1, 1, 1])) is None
    cfg = load_train_config(None, ["data.num_train=16", "data.num_val=8", "data.image_size=64", "data.batch_size=8",
                                   "loop.epochs=1", "loop.channels_last=true", "loop.progress=false",
                                   "model.small_input=true",
                                   "model.kwargs={layers: [1, 1, 1, 1], channels: [8, 8, 8, 8], stem_width: 8}"])
    with pytest.warns(UserWarning, match="loop.channels_last is off for this run: layer2.0.downsample.0"):
        result = train(cfg, run_dir=tmp_path / "run")
    assert result.epochs == 1 and "channels_last: true" in (tmp_path / "run" / "config.yaml").read_text()
