from dataclasses import dataclass

import pytest

from routerforge.config import doc, load_config
from routerforge.errors import ConfigError


@dataclass(frozen=True)
class Optim:
    lr: float = doc("learning rate (per optimizer step)", default=3e-4)

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class Cfg:
    name: str = doc("run name", default="x")
    optim: Optim = doc("optimizer", default_factory=Optim)


def test_yaml_and_overrides_merge_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: from_yaml\noptim:\n  lr: 0.5\n")
    cfg = load_config(Cfg, path, ["optim.lr=0.25"])
    assert cfg == Cfg(name="from_yaml", optim=Optim(lr=0.25))


def test_typo_names_the_key_and_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'.*Did you mean 'lr'"):
        load_config(Cfg, None, ["optim.lrr=1"])
    path = tmp_path / "c.yaml"
    path.write_text("nmae: a\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key 'nmae'.*Did you mean 'name'"):
        load_config(Cfg, path)


def test_wrong_type_and_range_are_errors():
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(Cfg, None, ["optim.lr=abc"])
    with pytest.raises(ConfigError, match="must be > 0"):
        load_config(Cfg, None, ["optim.lr=-1"])


def test_parsed_config_is_frozen():
    cfg = load_config(Cfg)
    with pytest.raises(AttributeError):
        cfg.name = "y"  # type: ignore[misc]


def test_overrides_address_list_items_and_name_nested_typos():
    from routerforge.data.config import PrepConfig

    base = ["sources=[{name: a, kind: arena_conversations, path: x}]"]
    cfg = load_config(PrepConfig, None, base + ["sources.0.weight=0.25", "clean.aliases={a: b}"])
    assert cfg.sources[0].weight == 0.25 and cfg.clean.aliases == {"a": "b"}
    with pytest.raises(ConfigError,
                       match=r"unknown config key 'nme' \(in a SourceConfig section\).*Did you mean 'name'"):
        load_config(PrepConfig, None, base + ["sources.0.nme=1"])
    with pytest.raises(ConfigError, match=r"'sources.3' is not an item of a list of 1"):
        load_config(PrepConfig, None, base + ["sources.3.path=y"])


def test_yaml_values_follow_yaml_1_2_booleans_and_exponent_floats():
    from routerforge.config import parse_yaml

    assert parse_yaml("no") == "no" and parse_yaml("off") == "off"  # e.g. run.mixed_precision=no
    assert parse_yaml("true") is True and parse_yaml("False") is False
    assert parse_yaml("1e-5") == 1e-5 and parse_yaml("3.0e-4") == 3e-4 and parse_yaml("12") == 12
