"""Typed dataclass configs read from plain mappings (YAML) and dotted ``key=value`` overrides.

Pure: nothing here knows fairdiff's sections. :func:`from_dict` builds a dataclass from a mapping, rejecting
unknown keys and values of the wrong type with one line that names the key (YAML's int -> float widening and
"2e-4" strings are accepted); :func:`set_dotted` applies one override to a nested mapping.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from fairdiff.errors import ConfigError


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    args = get_args(tp)
    if value is None and type(None) in args:
        return None
    for a in args:
        if a is type(None):
            continue
        try:
            return coerce(value, a, key)
        except ConfigError:
            pass
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "2e-4" as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted; ``key`` names it in errors."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{key}: {value!r} is not one of {choices}")
        return value
    if origin is list:
        (item_tp,) = get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key)
    return _coerce_scalar(value, tp, key)


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    A dataclass may define ``unknown_key_message(key, data)`` (a classmethod) to word the error for a key it
    does not have, e.g. to list the options that apply."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            explain = getattr(cls, "unknown_key_message", None)
            if explain is not None:
                raise ConfigError(explain(key, data))
            raise ConfigError(f"unknown config key '{key}' (known: {', '.join(sorted(names))})")
        kwargs[k] = coerce(v, hints[k], key)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """The nested plain mapping of a dataclass config (what YAML dumps)."""
    return dataclasses.asdict(cfg)


def check_finite(node: Any, prefix: str = "") -> None:
    """Every number in the config is finite (``.nan`` / ``.inf`` from YAML or an override are refused)."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            check_finite(getattr(node, f.name), f"{prefix}.{f.name}" if prefix else f.name)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            check_finite(v, f"{prefix}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{prefix}: must be a finite number, got {node}")


def at_least(owner: Any, section: str, low: int | float, *keys: str) -> None:
    """Each of ``owner``'s ``keys`` that is set (not None) is at least ``low``; else one line naming it."""
    for key in keys:
        v = getattr(owner, key)
        if v is not None and v < low:
            raise ConfigError(f"{section}.{key}: must be at least {low}, got {v}")


def in_range(key: str, v: float, low: float, high: float, closed_high: bool = False) -> None:
    """``low <= v < high`` (or ``<= high``); else one line naming ``key``."""
    if not (low <= v <= high if closed_high else low <= v < high):
        raise ConfigError(f"{key}: must lie in [{low:g}, {high:g}{']' if closed_high else ')'}, got {v:g}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into (["a", "b"], parsed value); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else None
    except yaml.YAMLError:
        raise ConfigError(f"override '{text}': cannot read value {raw!r}") from None
    return key.split("."), value


def set_dotted(data: dict, path: list[str], value: Any, unknown: typing.Callable[[str], str] | None = None) -> None:
    """Set ``data[path[0]]...[path[-1]] = value`` in place; only keys that exist already may be set.

    ``unknown(dotted_key)`` words the error for a key that does not exist (default: "unknown config key")."""
    def fail(i: int) -> typing.NoReturn:
        dotted = ".".join(path[: i + 1])
        raise ConfigError(unknown(dotted) if unknown else f"unknown config key '{dotted}'")

    node = data
    for i, part in enumerate(path[:-1]):
        if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
            fail(i)
        node = node[part]
    if path[-1] not in node:
        fail(len(path) - 1)
    node[path[-1]] = value


def read_yaml_file(path: str | Path, what: str = "config file", error: type[ConfigError] = ConfigError) -> Any:
    """The parsed YAML of ``path``; a missing file, invalid YAML or a key written twice in one mapping (which
    YAML would silently resolve to the last) is one ``error`` line naming ``what``."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {p} is not UTF-8 text (byte {e.start}); save it as UTF-8 YAML") from None
    except OSError as e:
        raise error(f"{what} {p} cannot be read: {e.strerror or e}") from None
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            dup = _duplicate_key(node)
            if dup is not None:
                key, first, again = dup
                raise error(f"{what} {p} has the key '{key}' twice (lines {first} and {again}); YAML would keep "
                            f"only the last one: remove one of them")
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise error(f"{what} {p} is not valid YAML: {str(e).splitlines()[0]}") from None


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _duplicate_key(root: yaml.Node) -> tuple[str, int, int] | None:
    """The first mapping key written twice in the same mapping of ``root`` (in document order), as
    ``(dotted key, first line, second line)``; None when there is none.

    PyYAML keeps the last of two equal keys without a word; a merge (``<<: *base``) followed by a key of its own
    is an override, not a duplicate, and is not reported."""
    seen_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, where = stack.pop()
        if id(node) in seen_nodes:  # an alias to a node already checked
            continue
        seen_nodes.add(id(node))
        children: list[tuple[yaml.Node, str]] = []
        if isinstance(node, yaml.MappingNode):
            lines: dict[tuple[str, str], int] = {}
            for k, v in node.value:
                name = where
                if isinstance(k, yaml.ScalarNode) and k.tag != _MERGE_TAG:
                    name = f"{where}.{k.value}" if where else str(k.value)
                    ident = (k.tag, k.value)
                    if ident in lines:
                        return name, lines[ident], k.start_mark.line + 1
                    lines[ident] = k.start_mark.line + 1
                children.append((v, name))
        elif isinstance(node, yaml.SequenceNode):
            children = [(v, f"{where}[{i}]") for i, v in enumerate(node.value)]
        stack.extend(reversed(children))
    return None
