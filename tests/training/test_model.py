"""build_model: model.attn on any timm CNN, and weights files that say which attention they were saved with."""

import pytest
import torch

from visattn.bench.inject import trained_like
from visattn.config import load_train_config
from visattn.training.checkpoint import save_weights, weights_metadata
from visattn.training.model import build_model, recorded_attn

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _cfg(*overrides):
    return load_train_config(None, ["model.name=mobilenetv3_small_100", "model.small_input=true", *overrides])


def _save(path, model, cfg):
    save_weights(path, model.state_dict(), weights_metadata(cfg, [str(i) for i in range(10)]))


def test_attn_goes_into_any_timm_cnn_after_plain_weights_load(tmp_path):
    plain_cfg = _cfg()
    plain, report = build_model(plain_cfg.model, 10)
    assert report is None
    trained_like(plain).eval()
    _save(tmp_path / "plain.safetensors", plain, plain_cfg)
    cfg = _cfg(f"model.pretrained={tmp_path / 'plain.safetensors'}", "model.attn={block: cbam, stages: [3, 4]}")
    model, report = build_model(cfg.model, 10)
    assert {s.stage for s in report.sites} == {3, 4} and report.max_abs_diff == 0
    with torch.no_grad():  # the trained weights loaded first: the injected model computes what they compute
        torch.testing.assert_close(model.eval()(X), plain(X), rtol=0, atol=1e-5)


def test_weights_saved_with_attention_rebuild_it_from_their_record(tmp_path):
    cfg = _cfg("model.attn={block: se, stages: [4], replace: true}")
    model, _ = build_model(cfg.model, 10)
    trained_like(model).eval()
    _save(tmp_path / "se.safetensors", model, cfg)
    assert recorded_attn(str(tmp_path / "se.safetensors")) == cfg.model.attn
    again, _ = build_model(_cfg("model.attn={block: se, stages: [4], replace: true}",
                                f"model.pretrained={tmp_path / 'se.safetensors'}").model, 10)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(X), model(X), rtol=0, atol=0)


@pytest.mark.parametrize(("attn", "match"), [
    ("model.attn={block: cbam, stages: [4], replace: true}", r"holds a model with attention \{block: se.*but "
                                                             r"model.attn is \{block: cbam"),
    ("model.attn=null", r"holds a model with attention \{block: se.*but model.attn is none"),
])
def test_weights_and_config_that_disagree_on_attention_are_refused(tmp_path, attn, match):
    cfg = _cfg("model.attn={block: se, stages: [4], replace: true}")
    model, _ = build_model(cfg.model, 10)
    _save(tmp_path / "se.safetensors", model, cfg)
    with pytest.raises(ValueError, match=match):
        build_model(_cfg(attn, f"model.pretrained={tmp_path / 'se.safetensors'}").model, 10)


def test_files_written_before_the_rename_record_model_inject(tmp_path):
    cfg = _cfg("model.attn={block: se, stages: [4]}")
    model, _ = build_model(cfg.model, 10)
    meta = weights_metadata(cfg, [str(i) for i in range(10)])
    meta["config"]["model"]["inject"] = meta["config"]["model"].pop("attn")
    meta["config"]["model"]["inject"].pop("replace")
    save_weights(tmp_path / "old.safetensors", model.state_dict(), meta)
    assert recorded_attn(str(tmp_path / "old.safetensors")) == cfg.model.attn
