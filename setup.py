"""Build step that puts the training recipes and configs into the wheel (everything else is in pyproject.toml).

The recipes stay one readable file each in training/ and the configs in configs/; a wheel carries exact copies
as routerforge/_recipes/*.py and routerforge/_configs/**/*.yaml, which routerforge/recipes.py finds when
routerforge is installed (a checkout reads training/ and configs/ directly). Copies, not symlinks: wheels
and some filesystems do not keep symlinks.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithRecipes(build_py):
    def run(self):
        super().run()
        package = Path(self.build_lib) / "routerforge"
        for source, target, pattern in (("training", "_recipes", "train_*.py"), ("configs", "_configs", "**/*.yaml")):
            for path in sorted((ROOT / source).glob(pattern)):
                destination = package / target / path.relative_to(ROOT / source)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, destination)


setup(cmdclass={"build_py": BuildPyWithRecipes})
