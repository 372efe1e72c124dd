"""JSON Schema (draft 2020-12) of a config dataclass, so that editors complete and check the YAML files.

The schema says what the loader accepts: every key, its type, its default, and the comment written next to the field
in the source as its description. Checks that span several fields (``__post_init__``) and value ranges stay with the
loader, which says more than a schema validator can ("did you mean ...", the dotted key, what is valid).

``visattn config schema > visattn-config.schema.json``, then in VS Code (YAML extension) a first line
``# yaml-language-server: $schema=visattn-config.schema.json`` in a config file turns on completion and checking.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import textwrap
import tokenize
import types
from typing import Any, Literal, Union, get_args, get_origin

from .schema import field_default, schema_fields

__all__ = ["json_schema"]

_DRAFT = "https://json-schema.org/draft/2020-12/schema"
_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}


def json_schema(cls: type, *, title: str | None = None, extra_keys: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON Schema of the config dataclass ``cls``, nested sections included.

    Args:
        cls: a config dataclass (e.g. :class:`~visattn.config.TrainConfig`).
        title: the schema's title; default the class name.
        extra_keys: more top-level keys the files may hold, with their schemas (``extends``, ``_meta``).

    Returns:
        A JSON-serialisable dict.
    """
    schema = _section(cls)
    schema["properties"].update(extra_keys or {})
    return {"$schema": _DRAFT, "title": title or cls.__name__, **schema}


def _section(cls: type) -> dict[str, Any]:
    comments = _field_comments(cls)
    properties: dict[str, Any] = {}
    for field, tp in schema_fields(cls):
        prop = _type(tp)
        default = field_default(field)
        if default is not dataclasses.MISSING and not dataclasses.is_dataclass(default):
            prop["default"] = list(default) if isinstance(default, tuple) else default
        if field.name in comments:
            prop["description"] = comments[field.name]
        properties[field.name] = prop
    doc = inspect.getdoc(cls) or ""
    return {"type": "object", "description": doc.split("\n\n")[0].replace("\n", " "), "properties": properties,
            "additionalProperties": False}


def _type(tp: Any) -> dict[str, Any]:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return {}
    if tp in _SCALARS:
        return {"type": _SCALARS[tp]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (Union, types.UnionType):
        return {"anyOf": [_type(a) for a in args]}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _section(tp)
    if tp is list or origin is list:
        return {"type": "array", **({"items": _type(args[0])} if args else {})}
    if tp is tuple or origin is tuple:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return {"type": "array", **({"items": _type(args[0])} if args else {})}
        return {"type": "array", "prefixItems": [_type(a) for a in args], "items": False,
                "minItems": len(args), "maxItems": len(args)}
    if tp is dict or origin is dict:
        return {"type": "object", **({"additionalProperties": _type(args[1])} if args else {})}
    raise TypeError(f"no JSON Schema for config type {tp!r}")


def _field_comments(cls: type) -> dict[str, str]:
    """The ``#`` comments of each field in the class source: the lines just above it, then the one after it."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    pending: list[str] = []
    line_field: dict[int, str] = {}
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for i, tok in enumerate(tokens):
        # A field: a NAME starting a logical line, followed by ':' (its annotation).
        if (tok.type == tokenize.NAME and tok.string in names and tok.start[1] > 0 and i + 1 < len(tokens)
                and tokens[i + 1].string == ":" and tokens[i - 1].type in (tokenize.INDENT, tokenize.NEWLINE,
                                                                            tokenize.NL, tokenize.DEDENT)):
            line_field[tok.start[0]] = tok.string
            if pending:
                out[tok.string] = " ".join(pending)
                pending = []
        elif tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if tok.start[0] in line_field:  # trailing comment on the field's own line
                name = line_field[tok.start[0]]
                out[name] = f"{out[name]} {text}".strip() if name in out else text
            else:
                pending.append(text)
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            if tok.start[0] not in line_field:
                pending = []  # a comment above something else (a method, a docstring) is not a field's
    return out
