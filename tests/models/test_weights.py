import pytest
import timm
import torch
from safetensors.torch import save_file

import visattn
from tests.conftest import make_trained_like
from visattn.models import read_state_dict


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "wrapped_pt"])
def test_original_checkpoint_into_injected_model(tmp_path, fmt):
    original = make_trained_like(timm.create_model("resnet18", num_classes=3)).eval()
    state = original.state_dict()
    path = tmp_path / f"ckpt.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "pt":
        torch.save(state, path)
    else:  # DDP-trained checkpoints: {'state_dict': {'module.conv1.weight': ...}}
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)

    model, report = visattn.inject(timm.create_model("resnet18", num_classes=3), "cbam", input_size=(3, 32, 32))
    with pytest.warns(UserWarning, match=r"keys \(attention blocks\) were not in the checkpoint"):
        kept = visattn.load_weights(model, path)
    assert sorted(kept) == [k for k in report.new_keys if not k.endswith("num_batches_tracked")]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), original(x), rtol=0, atol=1e-5)


def test_mismatched_checkpoint_is_refused():
    model = timm.create_model("resnet18", num_classes=3)
    state = timm.create_model("resnet18", num_classes=3).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["conv1.weight"]
    with pytest.raises(ValueError, match=r"1 missing keys \['conv1.weight'\], 1 unexpected keys \['extra.weight'\]"):
        visattn.load_weights(model, state)


def test_refused_checkpoint_leaves_model_unchanged():
    model = timm.create_model("resnet18", num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected keys"):
        visattn.load_weights(model, state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_shape_mismatch_is_refused_before_anything_loads_unless_allowed():
    kw = dict(layers=[1, 1, 1, 1], channels=[8, 8, 8, 8])
    model = timm.create_model("resnet18", num_classes=5, **kw)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ten = timm.create_model("resnet18", num_classes=10, **kw).state_dict()
    with pytest.raises(ValueError, match=r"2 tensors differ in shape \(fc.weight: checkpoint \(10, 8\) vs model "
                                         r"\(5, 8\); fc.bias.*allow_missing=\('fc.',\)"):
        visattn.load_weights(model, ten)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # A new head: the rest loads, fc keeps the model's own values.
    with pytest.warns(UserWarning, match="keep their initial values"):
        kept = visattn.load_weights(model, ten, allow_missing=("fc.",))
    assert kept == ["fc.weight", "fc.bias"]
    assert torch.equal(model.conv1.weight, ten["conv1.weight"]) and torch.equal(model.fc.weight, before["fc.weight"])


def test_a_wrapped_models_own_state_dict_loads():
    kw = dict(layers=[1, 1, 1, 1], channels=[8, 8, 8, 8])
    wrapped = torch.nn.DataParallel(timm.create_model("resnet18", num_classes=3, **kw))
    source = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in wrapped.state_dict().items()}
    visattn.load_weights(wrapped, source)  # keys 'module.conv1.weight', ... on both sides
    assert torch.equal(wrapped.module.conv1.weight, source["module.conv1.weight"])
    # allow_missing names the wrapped model's keys, as for the bare model.
    ten = timm.create_model("resnet18", num_classes=10, **kw).state_dict()
    for prefix in ("fc.", "module.fc."):  # the wrapped model's name, or the wrapper's
        with pytest.warns(UserWarning, match="keep their initial values"):
            kept = visattn.load_weights(wrapped, ten, allow_missing=(prefix,))
        assert kept == ["module.fc.weight", "module.fc.bias"]


def test_lazy_modules_are_materialised_by_the_checkpoint():
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.LazyLinear(2))
    source = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Linear(16, 2)).state_dict()
    visattn.load_weights(model, source)
    assert torch.equal(model[1].weight, source["1.weight"])


def test_missing_file_and_bad_source():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_state_dict("/nonexistent/weights.safetensors")
    with pytest.raises(TypeError, match="path or a state_dict"):
        read_state_dict(42)


def test_pickled_code_is_not_executed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": object()}, path)
    with pytest.raises(ValueError, match=r"evil.pt holds more than tensors, and visattn loads torch files with "
                                         r"weights_only=True, which never runs pickled code \(.*Unpickler error"):
        read_state_dict(path)
