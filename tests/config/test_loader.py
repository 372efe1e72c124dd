"""Config loader: defaults -> YAML (extends) -> overrides, every rejection path, and the save/load round trip."""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.config import loader as config_loader
from visattn.config.loader import (
    ConfigError,
    closest_key,
    config_from_dict,
    config_to_dict,
    format_override,
    load_config,
    parse_overrides,
    read_yaml,
    save_config,
)

# --- a small schema, at module level so get_type_hints can resolve its string annotations --------------------------


@dataclass
class InjectCfg:
    block: Literal["se", "cbam"] = "se"
    stages: tuple[int, ...] = (3, 4)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataCfg:
    root: str  # required
    name: Literal["cifar10", "shapes"] = "cifar10"
    batch_size: int = 128
    mean: Optional[float] = None  # noqa: UP045 - typing.Optional must work too


@dataclass
class ModelCfg:
    name: str = "resnet18"
    input_size: tuple[int, int] = (32, 32)
    tags: list[str] = field(default_factory=list)
    inject: InjectCfg | None = None


@dataclass
class OptimCfg:
    lr: float = 0.1
    momentum: float = 0.9
    milestones: list[int] = field(default_factory=lambda: [30, 60])

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class Cfg:
    data: DataCfg = field(default_factory=lambda: DataCfg(root="data"))
    model: ModelCfg = field(default_factory=ModelCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    epochs: int = 10
    seed: int | None = 0
    notes: dict[str, str] = field(default_factory=dict)
    extra: Any = None


@dataclass
class NeedsData:
    data: DataCfg


@dataclass
class BadSchema:
    when: complex = 0j


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- defaults, files, extends ---------------------------------------------------------------------------------------


def test_defaults():
    cfg = load_config(Cfg)
    assert cfg == Cfg()
    assert isinstance(cfg.model.input_size, tuple) and cfg.model.inject is None


def test_yaml_overrides_defaults_and_keeps_the_rest(tmp_path):
    path = write(tmp_path / "c.yaml", "optim:\n  lr: 1e-3\ndata:\n  name: shapes\nmodel:\n  inject: {stages: [2]}\n")
    cfg = load_config(Cfg, path)
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float)  # 1e-3 is a float, not PyYAML's str
    assert cfg.optim.momentum == 0.9 and cfg.optim.milestones == [30, 60]
    assert cfg.data == DataCfg(root="data", name="shapes")  # root from the section's default instance
    assert cfg.model.inject == InjectCfg(stages=(2,))  # None default: built from the class defaults


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(Cfg, write(tmp_path / "c.yaml", "")) == Cfg()


def test_extends_relative_paths_deep_merge_and_list_replace(tmp_path):
    write(tmp_path / "base" / "base.yaml", "optim: {lr: 0.5, momentum: 0.5, milestones: [1, 2, 3]}\nepochs: 3\n")
    child = write(tmp_path / "exp" / "child.yaml", "extends: ../base/base.yaml\noptim: {lr: 0.2, milestones: [5]}\n")
    cfg = load_config(Cfg, child)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.milestones, cfg.epochs) == (0.2, 0.5, [5], 3)


def test_extends_chain_of_three_and_list_of_bases(tmp_path):
    write(tmp_path / "c.yaml", "epochs: 1\nseed: 1\nmodel: {name: c}\n")
    write(tmp_path / "b.yaml", "extends: c.yaml\nepochs: 2\nmodel: {tags: [b]}\n")
    a = write(tmp_path / "a.yaml", "extends: b.yaml\nepochs: 3\n")
    cfg = load_config(Cfg, a)
    assert (cfg.epochs, cfg.seed, cfg.model.name, cfg.model.tags) == (3, 1, "c", ["b"])
    write(tmp_path / "x.yaml", "epochs: 7\nseed: 7\n")
    both = write(tmp_path / "both.yaml", "extends: [c.yaml, x.yaml]\nseed: 9\n")
    cfg = load_config(Cfg, both)
    assert (cfg.epochs, cfg.seed, cfg.model.name) == (7, 9, "c")  # later base wins, the file wins over all


def test_extends_cycle_detected(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match=r"cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(Cfg, tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(Cfg, write(tmp_path / "self.yaml", "extends: self.yaml\n"))


def test_missing_files(tmp_path):
    with pytest.raises(ConfigError, match=r"not found: .*nope\.yaml"):
        load_config(Cfg, tmp_path / "nope.yaml")
    child = write(tmp_path / "child.yaml", "extends: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"not found: .*gone\.yaml \(named in 'extends' of .*child\.yaml\)"):
        load_config(Cfg, child)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("- 1\n- 2\n", "must hold a mapping .* got list"),
        ("extends: 3\n", "'extends' in .* must be a path or a list of paths, got int 3"),
        ("optim: {lr: [\n", "invalid YAML"),
        ("optim:\n  lr: 0.1\n  lr: 0.2\n", "duplicate key 'lr'"),
    ],
)
def test_bad_files(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Cfg, write(tmp_path / "c.yaml", text))


# --- overrides ------------------------------------------------------------------------------------------------------


def test_parse_overrides():
    got = parse_overrides(["optim.lr=0.1", "model.inject.stages=[3,4]", "seed=null", "model.name=abc", "x=true",
                           "optim.momentum=0.5"])
    assert got == {"optim": {"lr": 0.1, "momentum": 0.5}, "model": {"inject": {"stages": [3, 4]}, "name": "abc"},
                   "seed": None, "x": True}
    assert parse_overrides(["a.b=1", "a.b=2"]) == {"a": {"b": 2}}  # later wins


def test_overrides_apply_after_file(tmp_path):
    path = write(tmp_path / "c.yaml", "optim: {lr: 0.5, momentum: 0.5}\nmodel: {inject: {block: cbam}}\n")
    cfg = load_config(Cfg, path, ["optim={lr: 0.2}", "model.tags=[a, b]", "seed=null", "data.mean=1"])
    assert (cfg.optim.lr, cfg.optim.momentum) == (0.2, 0.5)  # a mapping override merges with the file
    assert (cfg.model.tags, cfg.seed, cfg.data.mean) == (["a", "b"], None, 1.0)
    assert load_config(Cfg, path, ["model.inject.stages=[1]"]).model.inject == InjectCfg(block="cbam", stages=(1,))
    assert load_config(Cfg, path, ["model.inject=null"]).model.inject is None


def test_yaml_1_2_integers():
    # PyYAML's YAML 1.1 reads '010' as 8 (octal) and '1:30' as 90 (base 60); a person means ten and a typo.
    assert parse_overrides(["a=010", "b=0o17", "c=0x1F", "d=-7", "e=1_000", "f=1:30", "g=1e-3"]) == {
        "a": 10, "b": 15, "c": 31, "d": -7, "e": 1000, "f": "1:30", "g": 0.001}


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (["optim.lr"], ConfigError, r"no '='; write it as 'optim.lr=<value>'"),
        (["optim..lr=1"], ConfigError, "malformed key 'optim..lr'"),
        (["optim.lr=[1"], ConfigError, "not valid YAML"),
        ("optim.lr=1", TypeError, "single string"),
        ([3], TypeError, "got int 3"),
    ],
)
def test_bad_overrides(overrides, error, match):
    with pytest.raises(error, match=match):
        parse_overrides(overrides)


@pytest.mark.parametrize("value", ["1e-3", "yes", "null", "", "a=b", "[1, 2]", "x\ny", " pad ", "a\x85b", "é\u2028",
                                   "010", "0o7", "1:30", 0.1, 1e-300, -3, True, None, [1, "2", None], {"a": [1.5]}])
def test_format_override_reads_back(value):
    assert parse_overrides([format_override("a.b", value)]) == {"a": {"b": value}}


# --- validation -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["optim.lr_rate=1"], r"unknown config key 'optim.lr_rate'; did you mean 'optim.lr'\? "
                              r"valid keys in 'optim': lr, momentum, milestones"),
        (["epoch=1"], r"unknown config key 'epoch'; did you mean 'epochs'\? valid keys at the top level: data,"),
        (["model.inject.blok=se"], r"'model.inject.blok'; did you mean 'model.inject.block'\?"),
        (["optim.zzz=1"], r"unknown config key 'optim.zzz'; valid keys in 'optim'"),
        (["optim.lr=fast"], r"^optim.lr must be float, got str 'fast'$"),
        (["optim.lr='0.1'"], r"^optim.lr must be float, got str '0.1'$"),
        (["data.name=cifar"], r"^data.name must be one of 'cifar10', 'shapes', got 'cifar'; did you mean 'cifar10'\?$"),
        (["data.name=zzz"], r"^data.name must be one of 'cifar10', 'shapes', got 'zzz'$"),
        (["epochs=true"], r"^epochs must be int, got bool True$"),
        (["optim.lr=true"], r"^optim.lr must be float, got bool True$"),
        (["epochs=1.5"], r"^epochs must be int, got float 1.5$"),
        (["data.batch_size=null"], r"^data.batch_size must be int, got None$"),
        (["data.mean=x"], r"^data.mean must be float or None, got str 'x'$"),
        (["seed=[1]"], r"^seed must be int or None, got list \[1\]$"),
        (["model.name=1"], r"^model.name must be str, got int 1; quote the value"),
        (["optim.milestones=[1, x]"], r"^optim.milestones\[1\] must be int, got str 'x'$"),
        (["optim.milestones=3"], r"^optim.milestones must be list\[int\], got int 3$"),
        (["model.input_size=[1, 2, 3]"], r"^model.input_size must be tuple\[int, int\] \(2 items\), got 3 items"),
        (["model.input_size=[1, x]"], r"^model.input_size\[1\] must be int, got str 'x'$"),
        (["model.inject.stages=[3, x]"], r"^model.inject.stages\[1\] must be int, got str 'x'$"),
        (["notes={a: 1}"], r"^notes.a must be str, got int 1"),
        (["notes={1: a}"], r"^key 1 of notes must be str, got int 1"),
        (["optim=3"], r"^optim must be a mapping \(OptimCfg section\), got int 3$"),
        (["model.inject=3"], r"^model.inject must be a mapping \(InjectCfg section\) or None, got int 3$"),
        (["model.inject.block=sse"], r"^model.inject.block must be one of 'se', 'cbam', got 'sse'; did you mean 'se'"),
        (["optim.lr=-1"], r"invalid config section 'optim' \(OptimCfg\): lr must be > 0, got -1.0"),
    ],
)
def test_rejections(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Cfg, overrides=overrides)


def test_int_accepted_for_float_and_nothing_else_coerced():
    cfg = load_config(Cfg, overrides=["optim.lr=1", "data.mean=2"])
    assert cfg.optim.lr == 1.0 and type(cfg.optim.lr) is float and type(cfg.data.mean) is float
    assert type(load_config(Cfg, overrides=["epochs=3"]).epochs) is int


def test_missing_required_key():
    with pytest.raises(ConfigError, match=r"missing required config key 'data'"):
        config_from_dict(NeedsData, {})
    with pytest.raises(ConfigError, match=r"missing required config key 'data.root' \(DataCfg"):
        config_from_dict(NeedsData, {"data": {"name": "shapes"}})
    assert config_from_dict(NeedsData, {"data": {"root": "r"}}).data == DataCfg(root="r")


def test_config_from_dict_top_level_and_schema_errors():
    with pytest.raises(ConfigError, match="top level, got list"):
        config_from_dict(Cfg, [1])
    with pytest.raises(TypeError, match=r"BadSchema.when has unsupported type"):
        config_from_dict(BadSchema, {})
    with pytest.raises(TypeError, match="must be a dataclass type"):
        load_config(dict)


def test_closest_key():
    valid = ["lr", "momentum", "min_lr_ratio", "weight_decay"]
    assert closest_key("lr_rate", valid) == "lr"
    assert closest_key("LR", valid) == "lr"
    assert closest_key("momentun", valid) == "momentum"
    assert closest_key("min_lr", valid) == "min_lr_ratio"
    assert closest_key("weight-decay", valid) == "weight_decay"
    assert closest_key("xyz", valid) is None


# --- to dict, save, round trip --------------------------------------------------------------------------------------


def test_config_to_dict_is_plain():
    cfg = load_config(Cfg, overrides=["model.inject.kwargs={a: [1, 2]}", "extra=[1, {b: 2}]"])
    d = config_to_dict(cfg)
    assert d["model"]["input_size"] == [32, 32] and d["model"]["inject"]["stages"] == [3, 4]
    assert yaml.safe_load(yaml.safe_dump(d)) == d
    with pytest.raises(TypeError, match=r"cannot write config value extra=.*object"):
        config_to_dict(Cfg(extra=object()))
    with pytest.raises(TypeError, match="dataclass instance"):
        config_to_dict({"a": 1})


def test_saved_number_like_strings_read_back_as_strings_by_any_yaml_reader(tmp_path):
    # The loader reads YAML 1.2 numbers, plain yaml.safe_load YAML 1.1 ones ('1:30' is 90 there): a saved string
    # must survive both, or a run named 12:30 would not find its own folders on resume.
    names = ["1:30", "12:30:00", "0b101", "+0x1F", "010", "0o7", "1_000", "+5", "-0"]
    path = tmp_path / "config.yaml"
    save_config(load_config(Cfg), path, extra={"names": names})
    assert yaml.safe_load(path.read_text())["_meta"]["names"] == names
    assert read_yaml(path.read_text())["_meta"]["names"] == names


def test_explicit_int_tag_with_a_yaml_1_1_form_is_a_config_error():
    with pytest.raises(ConfigError, match="'0b11' is not a YAML 1.2 integer"):
        parse_overrides(["a=!!int 0b11"])


def test_save_load_round_trip_with_meta(tmp_path):
    cfg = load_config(Cfg, overrides=["model.inject.stages=[2, 3]", "model.name='1e-3'", "data.mean=.inf",
                                      "notes={k: 'yes', nel: \"a\\Nb\"}", "extra={x: [1, 2]}"])
    assert cfg.notes == {"k": "yes", "nel": "a\x85b"}
    path = tmp_path / "run" / "config.yaml"
    meta = {"visattn_version": "0.1.0", "git_hash": "abc123"}
    save_config(cfg, path, extra=meta)
    assert yaml.safe_load(path.read_text())["_meta"] == meta
    back = load_config(Cfg, path)
    assert config_to_dict(back) == config_to_dict(cfg) and back.model.name == "1e-3"
    assert config_to_dict(load_config(Cfg, path, ["epochs=2"])) == {**config_to_dict(cfg), "epochs": 2}


def test_save_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("old\n")
    save_config(Cfg(epochs=3), path)
    assert load_config(Cfg, path).epochs == 3
    assert os.listdir(tmp_path) == ["config.yaml"]  # no temp file left behind


def test_failed_save_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    save_config(Cfg(epochs=3), path)
    before = path.read_text()
    with pytest.raises(TypeError):  # unwritable value: fails before any file is opened
        save_config(Cfg(extra=object()), path)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(config_loader.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_config(Cfg(epochs=5), path)
    assert path.read_text() == before and os.listdir(tmp_path) == ["config.yaml"]


# --- property: any valid override value round-trips through overrides, save and load -------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_finite = st.floats(min_value=1e-12, max_value=1e12, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(
    lr=st.one_of(_finite, st.integers(1, 10**6)),
    mean=st.one_of(st.none(), st.floats(allow_nan=False)),
    epochs=st.integers(-(2**40), 2**40),
    name=_text,
    tags=st.lists(_text, max_size=3),
    milestones=st.lists(st.integers(0, 500), max_size=4),
    data_name=st.sampled_from(["cifar10", "shapes"]),
    stages=st.one_of(st.none(), st.lists(st.integers(1, 4), max_size=4)),
    notes=st.dictionaries(st.text("abc_", min_size=1, max_size=4), _text, max_size=3),
)
def test_random_overrides_round_trip(lr, mean, epochs, name, tags, milestones, data_name, stages, notes):
    values = {"optim.lr": lr, "data.mean": mean, "epochs": epochs, "model.name": name, "model.tags": tags,
              "optim.milestones": milestones, "data.name": data_name, "notes": notes}
    if stages is not None:
        values["model.inject.stages"] = stages
    cfg = load_config(Cfg, overrides=[format_override(k, v) for k, v in values.items()])
    assert cfg.optim.lr == lr and type(cfg.optim.lr) is float
    assert cfg.data.mean == mean or (mean is not None and math.isnan(mean))
    assert (cfg.epochs, cfg.model.name, cfg.model.tags, cfg.optim.milestones) == (epochs, name, tags, milestones)
    assert (cfg.data.name, cfg.notes) == (data_name, notes)
    assert cfg.model.inject == (None if stages is None else InjectCfg(stages=tuple(stages)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        save_config(cfg, path, extra={"seed": 1})
        assert config_to_dict(load_config(Cfg, path)) == config_to_dict(cfg)
