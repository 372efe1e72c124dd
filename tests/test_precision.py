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
    monkeypatch.setattr(precision, "time_train_step", lambda model, size, *, amp, channels_last, batch_size:
                        bf16 if amp == "bf16" else fp32)


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
