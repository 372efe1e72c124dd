"""`visattn config schema`: every shipped config validates against it, and it refuses what the loader refuses."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from visattn.cli import main
from visattn.config import ConfigError, load_train_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def schemas(tmp_path_factory):
    out = {}
    for kind in ("train", "study"):
        path = tmp_path_factory.mktemp("schema") / f"{kind}.json"
        assert main(["config", "schema", kind, "--out", str(path)]) == 0
        out[kind] = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(out[kind])
    return out


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_shipped_config_validates(schemas, path):
    kind = "study" if path.parent.name == "study" else "train"
    jsonschema.validate(yaml.safe_load(path.read_text()), schemas[kind])


@pytest.mark.parametrize(("override", "data"), [
    ("optim.lr_rate=0.1", {"optim": {"lr_rate": 0.1}}),          # an unknown key
    ("loop.amp=bf17", {"loop": {"amp": "bf17"}}),                 # a value outside a Literal
    ("data.batch_size=big", {"data": {"batch_size": "big"}}),     # a wrong type
    ("loop.epochs=true", {"loop": {"epochs": True}}),             # a bool is not an int, in either
    ("data.mean=[0.5, 0.5]", {"data": {"mean": [0.5, 0.5]}}),     # a tuple of the wrong length
])
def test_the_schema_refuses_what_the_loader_refuses(schemas, override, data):
    with pytest.raises(ConfigError):
        load_train_config(None, [override])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schemas["train"])


def test_descriptions_come_from_the_source_comments(schemas):
    loop = schemas["train"]["properties"]["loop"]["properties"]
    assert loop["compile"]["description"] == "torch.compile the model"
    assert loop["amp"]["enum"] == ["auto", "none", "bf16", "fp16"] and loop["amp"]["default"] == "none"
    assert "bf16 on CUDA" in loop["amp"]["description"]  # the comment line above the field
    assert schemas["train"]["properties"]["data"]["properties"]["mean"]["default"] == [0.485, 0.456, 0.406]
