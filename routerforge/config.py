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
        candidates = _valid_keys(cls, dotted)
        return ConfigError(
            f"{origin}: unknown config key '{dotted}'.{_suggest(leaf, candidates)}"
            f" Valid keys here: {', '.join(candidates) or '(none)'}."
        )
    if isinstance(exc, ValidationError):
        return ConfigError(f"{origin}: invalid value for '{full_key}': {msg}")
    return ConfigError(f"{origin}: {msg}")


def _valid_keys(cls: type, dotted: str) -> list[str]:
    import typing

    current: Any = cls
    for part in dotted.split(".")[:-1]:
        if not dataclasses.is_dataclass(current):
            return []
        hints = typing.get_type_hints(current)
        if part not in hints:
            return []
        current = hints[part]
    if not dataclasses.is_dataclass(current):
        return []
    return [f.name for f in dataclasses.fields(current)]


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load `cls` from an optional YAML file and `key=value` overrides; raise ConfigError on any problem."""
    schema = OmegaConf.structured(cls)
    layers = [schema]
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}. Pass an existing YAML file with --config.")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config keys, got {type(raw).__name__}.")
        try:
            layers.append(OmegaConf.merge(schema, OmegaConf.create(raw)))
        except OmegaConfBaseException as exc:
            raise _config_error(exc, cls, str(path)) from None
    for override in overrides or []:
        if "=" not in override:
            raise ConfigError(f"override '{override}' is not of the form key=value (e.g. optim.lr=3e-4).")
    try:
        merged = OmegaConf.merge(*layers, OmegaConf.from_dotlist(list(overrides or [])))
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _config_error(exc, cls, "command line" if overrides else str(path)) from None
    except (ValueError, TypeError) as exc:  # raised by __post_init__ validation
        raise ConfigError(f"{path or 'config'}: {exc}") from None
    return obj  # type: ignore[return-value]


def config_to_dict(config: Any) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (for manifests, dataset cards and W&B)."""
    return dataclasses.asdict(config)


def dump_config(config: Any) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
