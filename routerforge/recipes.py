"""The training recipes and their configs, in a checkout or an installed wheel, and `routerforge train`.

    routerforge train mf --config my.yaml [key=value ...]          # the same code as python training/train_mf.py
    routerforge train mf --config mf/default                       # a packaged config, by name
    accelerate launch [--config_file launch/...] -m routerforge.train mf --config mf/tiny   # several processes
    routerforge train mf --help                                    # every config key: type, unit, default, help

The recipes stay one readable file each (training/train_*.py). A wheel carries them, unchanged, as
`routerforge/_recipes/` and the configs as `routerforge/_configs/` (setup.py copies them at build time); in a
checkout they are read from training/ and configs/. `routerforge train` runs the file itself as `__main__`,
so a recipe runs the same way under `python training/train_mf.py`, `accelerate launch` and the installed command.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import runpy
import sys
from pathlib import Path
from types import ModuleType

from routerforge.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parent
_CONFIG_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+/[A-Za-z0-9_.-]+$")


def recipes_dir() -> Path:
    """routerforge/_recipes in a wheel, training/ in a checkout."""
    installed = _PACKAGE / "_recipes"
    return installed if installed.is_dir() else _PACKAGE.parent / "training"


def configs_dir() -> Path:
    """routerforge/_configs in a wheel, configs/ in a checkout."""
    installed = _PACKAGE / "_configs"
    return installed if installed.is_dir() else _PACKAGE.parent / "configs"


def recipes() -> dict[str, str]:
    """CLI name -> recipe file, one per training/train_*.py (train_router_r1_grpo.py is `router-r1-grpo`)."""
    return {path.stem.removeprefix("train_").replace("_", "-"): path.name
            for path in sorted(recipes_dir().glob("train_*.py"))}


def recipe_path(name: str) -> Path:
    known = recipes()
    file = known.get(name) or known.get(name.replace("_", "-"))
    if file is None:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(known)}.")
    return recipes_dir() / file


def resolve_config_path(config: str | Path) -> Path:
    """A config file path as given, or a packaged config by name (`mf/default` -> <configs>/mf/default.yaml)."""
    path = Path(config)
    if path.exists() or not _CONFIG_NAME_RE.match(str(config)):
        return path
    packaged = configs_dir() / f"{str(config).removesuffix('.yaml')}.yaml"
    if packaged.is_file():
        return packaged
    available = sorted(p.relative_to(configs_dir()).with_suffix("").as_posix()
                       for p in configs_dir().glob(f"{path.parent.name}/*.yaml"))
    raise ConfigError(f"--config {config}: no such file, and no packaged config of that name"
                      f"{' (packaged: ' + ', '.join(available) + ')' if available else ''}.")


def load_recipe_module(name: str) -> ModuleType:
    """Import a recipe file as a module (not run): its config class for the reference pages."""
    path = recipe_path(name)
    spec = importlib.util.spec_from_file_location(f"routerforge_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module while the class body runs
    spec.loader.exec_module(module)
    return module


def summary(name: str) -> str:
    """First line of a recipe's docstring, read without importing it."""
    return (ast.get_docstring(ast.parse(recipe_path(name).read_text(encoding="utf-8"))) or "").splitlines()[0]


def train_main(argv: list[str] | None = None) -> int:
    """`routerforge train RECIPE [--config FILE|NAME] [key=value ...]`: run the recipe file as `__main__`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: routerforge train RECIPE [--config FILE|RECIPE/NAME] [key=value ...]\n\nrecipes:")
        for name in recipes():
            print(f"  {name:<16}{summary(name)}")
        print("\n`routerforge train RECIPE --help` lists every config key. Several processes: "
              "accelerate launch -m routerforge.train RECIPE ...")
        return 0 if argv else 2
    try:
        path = recipe_path(argv[0])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    sys.argv = [str(path), *argv[1:]]
    runpy.run_path(str(path), run_name="__main__")  # the recipe's `run_recipe(main)` exits on errors itself
    return 0
