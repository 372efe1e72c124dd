"""The training schema and the shipped configs (the generic loader has its own tests)."""

from pathlib import Path

import pytest

from visattn.config import TrainConfig, load_train_config
from visattn.config.loader import ConfigError, config_to_dict

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if p.parent.name != "study")
STUDIES = sorted((CONFIG_DIR / "study").glob("*.yaml"))


def test_configs_cover_the_issue():
    names = {str(p.relative_to(CONFIG_DIR)) for p in CONFIGS}
    for dataset in ("cifar10", "cifar100"):
        for variant in ("baseline", "se", "cam", "spatial", "cbam", "nonlocal"):
            assert f"{dataset}/{variant}.yaml" in names
    assert "quickstart.yaml" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name if p.parent.name == "configs" else
                         f"{p.parent.name}/{p.name}")
def test_every_shipped_config_loads(path):
    cfg = load_train_config(path)
    assert isinstance(cfg, TrainConfig)


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_every_shipped_study_plans_valid_runs(path):
    from visattn.study import load_study_config, plan_runs

    study = load_study_config(path)
    runs = plan_runs(study)
    assert len(runs) == len(study.variants) * len(study.seeds) and len(study.seeds) >= 3
    assert all(isinstance(r.config, TrainConfig) and r.config.data.val_split for r in runs)


def test_block_variants_differ_only_in_model():
    base = config_to_dict(load_train_config(CONFIG_DIR / "cifar10" / "baseline.yaml"))
    cbam = config_to_dict(load_train_config(CONFIG_DIR / "cifar10" / "cbam.yaml"))
    assert cbam["model"]["name"] == "resnet18_cbam" and base["model"]["name"] == "resnet18"
    assert {k: v for k, v in base.items() if k != "model"} == {k: v for k, v in cbam.items() if k != "model"}


@pytest.mark.parametrize(("override", "match"), [
    ("optim.lr_rate=0.1", "did you mean 'optim.lr'"),
    ("optim.lr=fast", "optim.lr must be float"),
    ("optim.lr=-1", "lr must be a finite number > 0"),
    # NaN fails every range check: it would reach the optimiser or int(NaN) mid-run.
    ("optim.lr=.nan", "lr must be a finite number > 0, got nan"),
    ("optim.grad_clip=.nan", "grad_clip must be > 0"),
    ("optim.momentum=.nan", "momentum must be >= 0, got nan"),
    ("optim.warmup_epochs=.nan", "warmup_epochs must be >= 0, got nan"),
    ("optim.betas=[0.9, 1.5]", r"betas must each be in \[0, 1\)"),
    ("data.std=[0.2, 0, 0.2]", "std finite and > 0"),
    ("data.classes=[a, b, a]", r"classes lists \['a'\] more than once"),
    ("loop.epochs=1:30", "loop.epochs must be int, got str '1:30'"),  # YAML 1.1 would read 90 (base 60)
    ("data.name=cifar", "data.name must be one of"),
    ("loop.epochs=0", "epochs must be >= 1"),
    ("model.attn={block: se, stage: [3]}", "did you mean 'model.attn.stages'"),
    # Out-of-range values fail before anything is built, naming section and field (they used to fail mid-run).
    ("checkpoint.every=0", r"'checkpoint'.*every must be >= 1, got 0"),
    ("data.batch_size=0", r"'data'.*batch_size must be >= 1, got 0"),
    ("data.eval_batch_size=-2", "eval_batch_size must be >= 1, got -2"),
    ("data.num_workers=-1", "num_workers must be >= 0, got -1"),
    ("data.max_per_class=-1", "max_per_class must be >= 1, got -1"),
    ("data.image_size=0", "image_size must be >= 1, got 0"),
    ("data.classes=0", "classes must be >= 1 when it counts the first N classes"),
    ("optim.min_lr_ratio=2", r"min_lr_ratio must be in \[0, 1\], got 2.0"),
    ("optim.grad_clip=-1", "grad_clip must be > 0"),
    ("optim.weight_decay=-0.1", "weight_decay must be >= 0"),
    ("optim.warmup_epochs=-1", "warmup_epochs must be >= 0"),
])
def test_rejections_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_train_config(None, [override])


def test_model_inject_of_older_configs_reads_as_model_attn():
    # Configs and weights files written before the rename keep loading; giving both names is refused.
    cfg = load_train_config(None, ["model.inject={block: se, stages: [3, 4]}"])
    assert cfg.model.attn.block == "se" and cfg.model.attn.stages == [3, 4] and cfg.model.attn.replace is False
    with pytest.raises(ConfigError, match="'model.inject' is the old name of 'model.attn'; give only 'model.attn'"):
        load_train_config(None, ["model.inject={block: se}", "model.attn={block: cbam}"])


def test_study_records_keep_their_config_hash_across_the_rename():
    from visattn.study.config import config_hash

    old = load_train_config(None, ["model.inject={block: nonlocal, stages: [2, 3, 4]}"])
    new = load_train_config(None, ["model.attn={block: nonlocal, stages: [2, 3, 4]}"])
    assert config_hash(old) == config_hash(new)
    assert config_hash(new) != config_hash(load_train_config(None, ["model.attn={block: nonlocal, replace: true}"]))


def test_an_empty_mapping_override_clears_a_dict_field():
    cfg = load_train_config(CONFIG_DIR / "quickstart.yaml", ["model.kwargs={}"])
    assert cfg.model.kwargs == {}
    merged = load_train_config(CONFIG_DIR / "quickstart.yaml", ["model.kwargs={stem_width: 32}"])
    assert merged.model.kwargs["stem_width"] == 32 and merged.model.kwargs["layers"] == [1, 1, 1, 1]


def test_an_empty_section_in_a_file_changes_nothing(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {CONFIG_DIR / 'quickstart.yaml'}\noptim: {{}}\nmodel:\n  kwargs: {{}}\n")
    assert load_train_config(child) == load_train_config(CONFIG_DIR / "quickstart.yaml")
