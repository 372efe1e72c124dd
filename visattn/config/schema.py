"""Validation of nested-dataclass configs: the schema's types, conversion of plain data, and error messages.

Used by ``config_loader``; knows nothing about YAML or files. Every error names the dotted key, the bad value and what
is valid, and unknown keys get the closest valid key suggested.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import reprlib
import types
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

__all__ = ["ConfigError", "closest_key", "build_dataclass", "describe_value", "field_default", "schema_fields",
           "to_plain"]

T = TypeVar("T")

_MISSING = dataclasses.MISSING
_NONE_TYPE = type(None)
_SCALARS = (bool, int, float, str)
_SUPPORTED = "bool, int, float, str, None, Any, Literal[...], list[X], tuple[X, ...], tuple[X, Y], dict[K, V], " \
             "nested dataclasses and unions of these"


class ConfigError(ValueError):
    """Bad config: the message names the dotted key, the bad value and what is valid."""


class _TypeMismatch(ConfigError):
    """The value's own type does not fit (as opposed to an error deeper inside it); a union tries its next arm."""


def closest_key(key: str, valid: Iterable[str]) -> str | None:
    """The valid name most like ``key`` (for "did you mean" hints), or ``None`` when nothing is close.

    Tries, in order: a case/dash-insensitive match, a valid name that is a whole ``_``-separated prefix of ``key`` or
    the reverse (``'lr_rate'`` -> ``'lr'``, ``'min_lr'`` -> ``'min_lr_ratio'``), then ``difflib``'s closest match.

    Args:
        key: the unknown name.
        valid: candidate names.

    Returns:
        One of ``valid``, or ``None``.
    """
    candidates = [v for v in valid if isinstance(v, str)]
    norm = key.lower().replace("-", "_")
    by_norm = {v.lower().replace("-", "_"): v for v in candidates}
    if norm in by_norm:
        return by_norm[norm]
    # A known name plus or minus whole '_' words is a stronger signal than overall similarity: 'lr_rate' means 'lr',
    # though difflib scores 'min_lr_ratio' higher.
    prefixed = [v for n, v in by_norm.items() if norm.startswith(n + "_") or n.startswith(norm + "_")]
    if prefixed:
        return max(prefixed, key=len)
    close = difflib.get_close_matches(norm, list(by_norm), n=1, cutoff=0.6)
    return by_norm[close[0]] if close else None


# --- schema and validation ----------------------------------------------------------------------------------------

_FIELDS: dict[type, tuple[tuple[dataclasses.Field[Any], Any], ...]] = {}


def schema_fields(cls: type) -> tuple[tuple[dataclasses.Field[Any], Any], ...]:
    """``(field, resolved type)`` for the init fields of ``cls``; checks every type once, nested classes included."""
    if cls in _FIELDS:
        return _FIELDS[cls]
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"config schema must be a dataclass type, got {cls!r}")
    try:
        hints = get_type_hints(cls)
    except Exception as exc:  # NameError etc. from evaluating string annotations
        raise TypeError(f"cannot resolve the type hints of config schema {cls.__qualname__}: {exc!r}; "
                        "schema classes must be importable from their module") from exc
    fields = tuple((f, hints[f.name]) for f in dataclasses.fields(cls) if f.init)
    _FIELDS[cls] = fields  # before recursing, so a self-referencing schema terminates
    try:
        for f, tp in fields:
            _check_type(tp, f"{cls.__qualname__}.{f.name}")
    except TypeError:
        del _FIELDS[cls]
        raise
    return fields


def _check_type(tp: Any, where: str) -> None:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any or tp in (_NONE_TYPE, *_SCALARS, list, tuple, dict) or origin is Literal:
        return
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        schema_fields(tp)
        return
    if origin in (Union, types.UnionType, list, tuple, dict):
        for arg in args:
            if arg is not Ellipsis:
                _check_type(arg, where)
        return
    raise TypeError(f"config schema field {where} has unsupported type {tp!r}; supported: {_SUPPORTED}")


def build_dataclass(cls: type[T], data: Mapping[str, Any], path: str, base: Any) -> T:
    fields = schema_fields(cls)
    names = [f.name for f, _ in fields]
    data = _renamed(cls, data, path)
    for k in data:
        if k not in names:
            hint = closest_key(str(k), names)
            where = f"in {path!r}" if path else "at the top level"
            did_you_mean = f"; did you mean {_join(path, hint)!r}?" if hint else ";"
            raise ConfigError(f"unknown config key {_join(path, k)!r}{did_you_mean} valid keys {where}: "
                              + ", ".join(names))
    kwargs: dict[str, Any] = {}
    missing: list[str] = []
    for f, tp in fields:
        key = _join(path, f.name)
        fallback = getattr(base, f.name) if base is not None else field_default(f)
        if f.name in data:  # a dataclass section given as a mapping fills in over `fallback`
            kwargs[f.name] = _convert_child(data[f.name], tp, key, base=fallback)
        elif fallback is _MISSING:
            missing.append(key)
        else:  # defaults go through the same checks, e.g. `lr: float = 1` becomes 1.0
            kwargs[f.name] = _convert_child(fallback, tp, key, base=None)
    if missing:
        raise ConfigError(f"missing required config key{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(repr(m) for m in missing)} ({cls.__name__} has no default for it)")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # __post_init__ checks that span several fields
        section = f"config section {path!r}" if path else "config"
        raise ConfigError(f"invalid {section} ({cls.__name__}): {exc}") from exc


def _renamed(cls: type, data: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """``data`` with the keys a section renamed (its ``RENAMED_KEYS``, old -> new) under their new names."""
    renamed = getattr(cls, "RENAMED_KEYS", {})
    if not any(k in renamed for k in data):
        return data
    data = dict(data)
    for old, new in renamed.items():
        if old in data:
            if data.get(new) is not None:
                raise ConfigError(f"{_join(path, old)!r} is the old name of {_join(path, new)!r}; give only "
                                  f"{_join(path, new)!r}")
            data[new] = data.pop(old)
    return data


def field_default(f: dataclasses.Field[Any]) -> Any:
    """A dataclass field's default (its factory called), or ``dataclasses.MISSING`` where it has none."""
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return _MISSING


def _convert_child(value: Any, tp: Any, key: str, *, strict: bool = False, base: Any = None) -> Any:
    try:
        return _convert(value, tp, key, strict=strict, base=base)
    except _TypeMismatch as exc:  # inside a container the mismatch is deep: a union around it must not hide it
        raise ConfigError(str(exc)) from None


def _convert(value: Any, tp: Any, key: str, *, strict: bool, base: Any) -> Any:
    """Check ``value`` against ``tp`` and return the typed value; ``strict`` turns off the int -> float coercion."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return copy.deepcopy(value)
    if origin in (Union, types.UnionType):
        return _convert_union(value, tp, key, strict=strict, base=base)
    if tp is _NONE_TYPE or origin is Literal:
        allowed = (None,) if tp is _NONE_TYPE else args
        if any(value == a and type(value) is type(a) for a in allowed):  # type check: True is not Literal[1]
            return value
    elif tp is float and isinstance(value, int) and not isinstance(value, bool) and not strict:
        try:
            return float(value)
        except OverflowError:
            raise _TypeMismatch(f"{_label(key)} must be float, got int {value} which is too large") from None
    elif tp in _SCALARS:
        if type(value) is tp or (isinstance(value, tp) and not isinstance(value, bool)):
            return value
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return build_dataclass(tp, {}, key, base=value)
        if isinstance(value, Mapping):
            return build_dataclass(tp, value, key, base=base if isinstance(base, tp) else None)
    elif tp in (list, tuple) or origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            return _convert_sequence(value, tp, key, strict=strict)
    elif tp is dict or origin is dict:
        if isinstance(value, Mapping):
            key_tp, value_tp = args or (Any, Any)
            return {_convert_child(k, key_tp, f"key {k!r} of {_label(key)}", strict=strict):
                    _convert_child(v, value_tp, _join(key, k), strict=strict) for k, v in value.items()}
    else:
        raise TypeError(f"unsupported config type {tp!r} for {_label(key)}; supported: {_SUPPORTED}")
    raise _mismatch(value, tp, key)


def _convert_union(value: Any, tp: Any, key: str, *, strict: bool, base: Any) -> Any:
    # Exact matches first, so `int | float` keeps an int; then with coercion. When every arm fails, an error from
    # inside a value (an unknown key in a section, a bad list item) says more than "must be X or Y".
    for pass_strict in (True,) if strict else (True, False):
        deep: ConfigError | None = None
        for arm in get_args(tp):
            try:
                return _convert(value, arm, key, strict=pass_strict, base=base)
            except _TypeMismatch:
                continue
            except ConfigError as exc:
                deep = deep or exc
    if deep is not None:
        raise deep
    raise _mismatch(value, tp, key)


def _convert_sequence(value: list[Any] | tuple[Any, ...], tp: Any, key: str, *, strict: bool) -> Any:
    args = get_args(tp)
    if get_origin(tp) is list or tp is list:
        item_tp = args[0] if args else Any
        return [_convert_child(v, item_tp, f"{key}[{i}]", strict=strict) for i, v in enumerate(value)]
    if tp is tuple or (len(args) == 2 and args[1] is Ellipsis):
        item_tps = [args[0] if args else Any] * len(value)
    else:
        item_tps = list(args)
        if len(value) != len(item_tps):
            raise _TypeMismatch(f"{_label(key)} must be {_type_name(tp)} ({len(item_tps)} items), "
                                f"got {len(value)} items: {_short(value)}")
    pairs = enumerate(zip(value, item_tps, strict=True))
    return tuple(_convert_child(v, t, f"{key}[{i}]", strict=strict) for i, (v, t) in pairs)


# --- messages -----------------------------------------------------------------------------------------------------

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 80, 80, 8, 8


def _short(value: Any) -> str:
    return _REPR.repr(value)


def describe_value(value: Any) -> str:
    return "None" if value is None else f"{type(value).__name__} {_short(value)}"


def _join(path: str, name: Any) -> str:
    return f"{path}.{name}" if path else str(name)


def _label(key: str) -> str:
    return key or "config"


def _arms(tp: Any) -> tuple[Any, ...]:
    return get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)


def _mismatch(value: Any, tp: Any, key: str) -> _TypeMismatch:
    literals = [a for arm in _arms(tp) if get_origin(arm) is Literal for a in get_args(arm)]
    got = _short(value) if literals and isinstance(value, str) else describe_value(value)
    message = f"{_label(key)} must be {_expected(tp)}, got {got}"
    if isinstance(value, str):
        hint = closest_key(value, [a for a in literals if isinstance(a, str)])
        message += f"; did you mean {hint!r}?" if hint else ""
    elif str in _arms(tp) and isinstance(value, (bool, int, float)):
        message += "; quote the value in YAML to keep it a string"
    return _TypeMismatch(message)


def _expected(tp: Any) -> str:
    arms = _arms(tp)
    if len(arms) > 1:  # 'None' last reads best: "float or None"
        return " or ".join([_expected(a) for a in arms if a is not _NONE_TYPE] + ["None"] * (_NONE_TYPE in arms))
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__} section)"
    return _type_name(tp)


def _type_name(tp: Any) -> str:
    if tp is _NONE_TYPE:
        return "None"
    if tp is Any:
        return "Any"
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args) if args else "()"
        return f"{getattr(origin, '__name__', origin)}[{inner}]"
    return getattr(tp, "__name__", repr(tp))


def to_plain(value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name), _join(key, f.name))
                for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Mapping):
        for k in value:
            if k is not None and type(k) not in _SCALARS:
                raise TypeError(f"cannot write config key {k!r} of {_label(key)} as YAML: keys must be "
                                f"str, int, float, bool or None, got {type(k).__name__}")
        return {k: to_plain(v, _join(key, k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if value is None or type(value) in _SCALARS:
        return value
    raise TypeError(f"cannot write config value {_label(key)}={_short(value)} ({type(value).__name__}) as YAML; "
                    "use bool, int, float, str, None, lists and mappings")
