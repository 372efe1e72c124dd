"""Typed config loading for any nested-dataclass schema: defaults, then YAML (with ``extends``), then overrides.

The schema is plain dataclasses; this module knows nothing about training. Precedence follows nanoGPT's configurator
and timm's train.py: the schema's defaults, then the YAML file (after the files it ``extends``), then ``key=value``
overrides. Everything is validated before anything runs: unknown keys get the closest valid key suggested, wrong
types name the dotted key, the bad value and what is valid (``config_schema.py`` holds that validation).

Merging: YAML layers and overrides deep-merge as mappings; the result fills dataclass sections over their defaults,
while any other value (lists, tuples, ``dict``-typed fields) replaces the default whole, which keeps
``save_config`` -> ``load_config`` an exact round trip.

YAML is read with ``yaml.SafeLoader`` plus two fixes: ``1e-3`` is a float (PyYAML follows YAML 1.1 and would give the
string ``'1e-3'``, https://github.com/yaml/pyyaml/issues/173) and a key repeated in one mapping is an error instead of
silently keeping the last one. The dumper shares the float rule, so a string ``'1e-3'`` is written quoted.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..files import atomic_write_text
from .schema import ConfigError, build_dataclass, closest_key, describe_value, schema_fields, to_plain

__all__ = [
    "ConfigError",
    "load_config",
    "parse_overrides",
    "merge_overrides",
    "format_override",
    "config_from_dict",
    "config_to_dict",
    "save_config",
    "closest_key",
    "read_yaml",
]

T = TypeVar("T")


# --- YAML dialect -------------------------------------------------------------------------------------------------

# YAML 1.2 floats without a dot ('1e-3', '2E+5') or with an unsigned exponent ('1.0e3'); PyYAML reads them as str.
_FLOAT_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_FLOAT_FIRST = list("-+0123456789.")
_INT_RE = re.compile(r"^(?:[-+]?[0-9](?:_?[0-9])*|0o[0-7]+|0x[0-9a-fA-F]+)$")


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                            f"found duplicate key {key_node.value!r}",
                                                            key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # a config file is read by people: no &id001 anchors

    def represent_str(self, data: str) -> yaml.ScalarNode:
        # PyYAML (allow_unicode) writes NEL (U+0085) raw in a single-quoted scalar and reads it back as a line
        # break; a double-quoted scalar escapes it as \N.
        return self.represent_scalar("tag:yaml.org,2002:str", data, style='"' if "\x85" in data else None)


_Dumper.add_representer(str, _Dumper.represent_str)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if not _INT_RE.match(text):  # only reachable through an explicit !!int tag
        raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not a YAML 1.2 integer", node.start_mark)
    if text.startswith("0o"):
        return int(text[2:], 8)
    return int(text, 16 if text.startswith("0x") else 10)  # '010' is ten, as YAML 1.2 and a person read it


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, _FLOAT_FIRST)
# YAML 1.2 ints instead of PyYAML's 1.1 rules, which read 'seed=010' as 8 (octal) and 'epochs=1:30' as 90 (base 60).
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()}
# The dumper quotes a string that either rule set reads as a number ('010', '1:30'), so a config.yaml reads back the
# same through this loader and through plain yaml.safe_load.
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:int", _INT_RE, list("-+0123456789"))


def read_yaml(text: str) -> Any:
    """Parse YAML the way config files and overrides are read: safe, YAML 1.2 numbers, duplicate keys refused."""
    return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader: no arbitrary objects


# --- public API ---------------------------------------------------------------------------------------------------


def load_config(schema: type[T], path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> T:
    """Build a validated config: defaults of ``schema``, then the YAML file (and the files it extends), then overrides.

    A top-level ``_meta`` key in the file (written by ``save_config``) is ignored. A top-level ``extends`` key (a path
    or a list of paths, relative to the file naming them) loads those files first; the file deep-merges over them.

    Args:
        schema: dataclass type whose fields (nested dataclasses allowed) define the valid keys and types.
        path: YAML file; ``None`` means defaults and overrides only.
        overrides: ``'dotted.key=value'`` strings, values parsed as YAML, applied after the file in order.

    Returns:
        An instance of ``schema``.

    Raises:
        ConfigError: missing/unreadable file, bad YAML, ``extends`` cycle, malformed override, unknown key, wrong
            type, missing required key, or a ``__post_init__`` that raised ``ValueError``.
        TypeError: if ``schema`` is not a dataclass or uses an unsupported field type.

    Example:
        >>> cfg = load_config(TrainConfig, 'configs/cifar10.yaml', ['optim.lr=0.05', 'model.attn.stages=[3,4]'])
    """
    schema_fields(schema)  # schema mistakes surface before any file is read
    data: dict[str, Any] = {} if path is None else _load_file(Path(path), chain=())
    data.pop("_meta", None)
    if overrides:
        data = _deep_merge(data, parse_overrides(overrides), empty_replaces=True)
    return config_from_dict(schema, data)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``['optim.lr=0.1', 'model.attn.stages=[3,4]']`` into a nested dict; later items win.

    Values are parsed as YAML: ``0.1`` is a float, ``true`` a bool, ``[3,4]`` a list, ``null`` None, ``abc`` a str
    (quote it, ``"'true'"``, to force a string). An empty value is ``None``, as in YAML.

    Args:
        overrides: ``'dotted.key=value'`` strings.

    Returns:
        Nested dict, e.g. ``{'optim': {'lr': 0.1}, 'model': {'attn': {'stages': [3, 4]}}}``.

    Raises:
        ConfigError: an item without ``=``, an empty key segment, or a value that is not valid YAML.
        TypeError: if ``overrides`` is a single string or holds non-strings.
    """
    if isinstance(overrides, (str, bytes)):
        raise TypeError(f"overrides must be a list of 'key=value' strings, got a single string {overrides!r}; "
                        "wrap it in a list")
    result: dict[str, Any] = {}
    for item in overrides:
        if not isinstance(item, str):
            raise TypeError(f"each override must be a 'key=value' string, got {describe_value(item)}")
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"override {item!r} has no '='; write it as '{key or 'optim.lr'}=<value>', "
                              "e.g. 'optim.lr=0.1' or 'model.attn.stages=[3,4]'")
        parts = key.split(".")
        if not all(p and p == p.strip() for p in parts):
            raise ConfigError(f"override {item!r} has a malformed key {key!r}; use dotted field names like 'optim.lr'")
        try:
            value = read_yaml(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value {text!r} is not valid YAML: {exc}") from None
        for part in reversed(parts):
            value = {part: value}
        result = _deep_merge(result, value, empty_replaces=True)
    return result


def merge_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``data`` (a nested config mapping) with ``key=value`` overrides deep-merged over it."""
    return _deep_merge(data, parse_overrides(overrides), empty_replaces=True) if overrides else dict(data)


def format_override(key: str, value: Any) -> str:
    """The ``'key=value'`` string that ``parse_overrides`` reads back as ``{key: value}`` (for sweeps and logs).

    Args:
        key: dotted key, e.g. ``'optim.lr'``.
        value: bool, int, float, str, None, or lists/tuples/mappings of these.

    Returns:
        e.g. ``'optim.lr=0.1'``, ``"model.name='1e-3'"``, ``'model.attn.stages=[3, 4]'``.

    Raises:
        TypeError: if ``value`` cannot be written as YAML.
    """
    text = yaml.dump(to_plain(value, key), Dumper=_Dumper, default_flow_style=True, width=float("inf"),
                     allow_unicode=True)
    # A plain top-level scalar is followed by an explicit document end ('0.1\n...\n'); drop it and the newline.
    text = text.removesuffix("...\n").removesuffix("\n")
    return f"{key}={text}"


def config_from_dict(schema: type[T], data: Mapping[str, Any]) -> T:
    """Validate ``data`` against ``schema`` and build it; keys not in ``data`` keep the schema's defaults.

    Args:
        schema: dataclass type.
        data: nested mapping, e.g. from YAML.

    Returns:
        An instance of ``schema``.

    Raises:
        ConfigError: unknown key, wrong type, missing required key, or ``__post_init__`` raised ``ValueError``.
        TypeError: if ``schema`` is not a dataclass or uses an unsupported field type.
    """
    schema_fields(schema)
    if not isinstance(data, Mapping):
        raise ConfigError(f"config must be a mapping of keys to values at the top level, got {describe_value(data)}")
    return build_dataclass(schema, data, "", base=None)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain, YAML-safe dicts and lists of a config (tuples become lists; ``init=False`` fields are left out).

    Args:
        config: dataclass instance.

    Returns:
        Nested dict of bool/int/float/str/None, lists and dicts.

    Raises:
        TypeError: if ``config`` is not a dataclass instance or holds a value YAML cannot represent.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config_to_dict expects a dataclass instance, got {type(config).__name__}")
    return to_plain(config, "")


def save_config(config: Any, path: str | os.PathLike[str], *, extra: Mapping[str, Any] | None = None) -> None:
    """Write ``config`` as YAML atomically (temp file in the same folder, then ``os.replace``).

    ``load_config`` reads the file back to an equal config; ``extra`` goes under a top-level ``_meta`` key, which
    ``load_config`` ignores. Missing parent folders are created; an existing file keeps its permissions.

    Args:
        config: dataclass instance.
        path: destination, e.g. ``run_dir / 'config.yaml'``.
        extra: provenance such as ``{'visattn_version': ..., 'git_hash': ...}``.

    Raises:
        TypeError: if ``config`` or ``extra`` holds a value YAML cannot represent (nothing is written).
        OSError: if the file cannot be written (an existing file is left as it was).

    Example:
        >>> save_config(cfg, run_dir / 'config.yaml', extra={'visattn_version': visattn.__version__})
    """
    data = config_to_dict(config)
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise TypeError(f"extra must be a mapping, got {type(extra).__name__}")
        data = {"_meta": to_plain(extra, "_meta"), **data}
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
    atomic_write_text(path, text)


# --- files --------------------------------------------------------------------------------------------------------


def _load_file(path: Path, chain: tuple[Path, ...], parent: Path | None = None) -> dict[str, Any]:
    resolved = path.expanduser().resolve()
    if resolved in chain:
        raise ConfigError("config 'extends' cycle: " + " -> ".join(str(p) for p in (*chain, resolved)))
    try:
        text = resolved.read_text(encoding="utf-8")
    except FileNotFoundError:
        named_in = f" (named in 'extends' of {parent})" if parent is not None else ""
        raise ConfigError(f"config file not found: {resolved}{named_in}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {resolved}: {exc}") from exc
    try:
        data = read_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in config file {resolved}: {exc}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"config file {resolved} must hold a mapping of config keys at the top level, "
                          f"got {describe_value(data)}")
    extends = data.pop("extends", None)
    if extends is None:
        return data
    bases = [extends] if isinstance(extends, str) else extends
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"'extends' in {resolved} must be a path or a list of paths, got {describe_value(extends)}")
    merged: dict[str, Any] = {}
    for base in bases:  # later bases win over earlier ones, the file itself over all of them
        merged = _deep_merge(merged, _load_file(resolved.parent / Path(base).expanduser(), (*chain, resolved),
                                                parent=resolved))
    return _deep_merge(merged, data)


def _deep_merge(base: Mapping[str, Any], update: Mapping[str, Any], *, empty_replaces: bool = False
                ) -> dict[str, Any]:
    """``update`` over ``base``, mappings merged key by key. With ``empty_replaces`` (command-line overrides) an empty
    mapping replaces instead, so ``model.kwargs={}`` clears; in files ``optim: {}`` changes nothing, as YAML readers
    expect."""
    out = dict(base)
    for k, v in update.items():
        merge = isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and (bool(v) or not empty_replaces)
        out[k] = _deep_merge(out[k], v, empty_replaces=empty_replaces) if merge else v
    return out


