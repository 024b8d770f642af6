"""Typed configs: frozen dataclasses loaded from YAML plus `key=value` overrides.

Every recipe and stage declares its config as nested frozen dataclasses. Each field has a type, a
default and `metadata={"help": ...}` (with its unit). `load_config` merges, in order:

    dataclass defaults  <-  YAML file(s)  <-  command-line `key=value` overrides

through OmegaConf structured configs, so an unknown key or a wrong type is an error that names the
key (with a "did you mean" suggestion), never a silent default. The result is converted back to the
frozen dataclass, whose `__post_init__` validates ranges; parsed configs are never mutated.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from routerforge.errors import ConfigError

T = TypeVar("T")


class _YamlLoader(yaml.SafeLoader):
    """YAML with 1.2 booleans (only true/false: `mixed_precision=no` stays the string "no") and
    exponent floats without a dot (`lr=1e-5` is a float, as a user means it)."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                  list("tTfF"))
_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                  re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                                  list("-+0123456789."))


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


def doc(help_text: str, **kwargs: Any) -> Any:
    """A dataclass field with a one-line help text (say the unit)."""
    return dataclasses.field(metadata={"help": help_text}, **kwargs)


def _suggest(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _config_error(exc: OmegaConfBaseException, cls: type, origin: str) -> ConfigError:
    full_key = getattr(exc, "full_key", None) or ""
    msg = str(exc).splitlines()[0]
    if isinstance(exc, ConfigKeyError):
        m = re.search(r"Key '([^']+)'", msg)
        leaf = m.group(1) if m else full_key.split(".")[-1]
        dotted = full_key or leaf
        owner = getattr(exc, "object_type", None)
        if dataclasses.is_dataclass(owner):
            # OmegaConf loses the path inside list items (full_key is just the leaf): name the section type.
            candidates = [f.name for f in dataclasses.fields(owner)]
            where = f" (in a {owner.__name__} section)" if "." not in dotted else ""
        else:
            candidates, where = _valid_keys(cls, dotted), ""
        return ConfigError(
            f"{origin}: unknown config key '{dotted}'{where}.{_suggest(leaf, candidates)}"
            f" Valid keys here: {', '.join(candidates) or '(none)'}."
        )
    if isinstance(exc, ValidationError):
        return ConfigError(f"{origin}: invalid value for '{full_key}': {msg}")
    return ConfigError(f"{origin}: {msg}")


def _valid_keys(cls: type, dotted: str) -> list[str]:
    """Field names of the dataclass that holds the last key of `dotted` (`sources[0].nme` -> SourceConfig's)."""
    import typing

    current: Any = cls
    parts = [p for p in re.split(r"[.\[\]]", dotted) if p][:-1]
    for part in parts:
        if part.isdigit():  # list item: step into the element type of list[X]
            args = typing.get_args(current)
            current = args[0] if args else None
            continue
        if not dataclasses.is_dataclass(current):
            return []
        hints = typing.get_type_hints(current)
        if part not in hints:
            return []
        current = hints[part]
    if not dataclasses.is_dataclass(current):
        return []
    return [f.name for f in dataclasses.fields(current)]


def _deep_update(base: dict, update: dict) -> None:
    """Merge `update` into `base`: mappings recursively, everything else (lists included) replaced."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


def _set_dotted(data: dict, key: str, value: Any) -> None:
    """Set `a.b.0.c` in nested dicts/lists (list items addressed by index), creating dicts as needed."""
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override '{key}': '{where}' is not an item of a list of {len(node)} "
                                  f"(list items are addressed by index: {'.'.join(parts[:i])}.0...).")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override '{key}': '{'.'.join(parts[:i])}' holds a value, not a section.")
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {})


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load `cls` from an optional YAML file and `key=value` overrides; raise ConfigError on any problem.

    Overrides are applied to the YAML data before validation, so they can address list items
    (`sources.0.weight=0.5`), replace whole lists (`tags=[a,b]`) and mappings (`aliases={a: b}`);
    values are parsed as YAML (numbers, booleans, lists, mappings, null).
    """
    # Start from the defaults so overrides can address items of default lists (`models.0.price=1`).
    data: dict = OmegaConf.to_container(OmegaConf.structured(cls))  # type: ignore[assignment]
    origin = "config"
    if path is not None:
        path = Path(path)
        origin = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}. Pass an existing YAML file with --config.")
        try:
            from_file = parse_yaml(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(from_file, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config keys, got "
                              f"{type(from_file).__name__}.")
        _deep_update(data, from_file)
    for override in overrides or []:
        key, sep, raw_value = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{override}' is not of the form key=value (e.g. optim.lr=3e-4).")
        try:
            value = parse_yaml(raw_value) if raw_value.strip() else ""
        except yaml.YAMLError:
            value = raw_value
        _set_dotted(data, key.strip(), value)
    if overrides:
        origin += " + command-line overrides"
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.create(data))
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _config_error(exc, cls, origin) from None
    except (ValueError, TypeError) as exc:  # raised by __post_init__ validation
        raise ConfigError(f"{origin}: {exc}") from None
    return obj  # type: ignore[return-value]


def config_to_dict(config: Any) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (for manifests, dataset cards and W&B)."""
    return dataclasses.asdict(config)


def dump_config(config: Any) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
