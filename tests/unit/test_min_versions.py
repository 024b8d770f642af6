"""pyproject.toml's lower bounds are at least the releases that introduced the APIs RouterForge calls.

One row per API: (distribution, first release that has it, the API, where RouterForge uses it). A new use of
a recent API adds its row here; the test then fails until pyproject.toml's bound is raised to match.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[2]

API_MINIMUMS = [
    # numpy 2.0 added trapezoid as the new name of the deprecated trapz (numpy PR 25738).
    ("numpy", "2.0", "numpy.trapezoid", "routerforge/eval (area under the routing curve)"),
    # torch 2.6 added the device-generic torch.accelerator API.
    ("torch", "2.6", "torch.accelerator.is_available", "routerforge/train, routerforge/models"),
    # huggingface_hub 1.0: the httpx-based client whose errors the publish retries classify.
    ("huggingface_hub", "1.0", "huggingface_hub.errors.RemoteEntryNotFoundError", "routerforge/registry"),
]


def lower_bounds() -> dict[str, Version]:
    """{distribution: lowest version pyproject.toml allows} of the runtime dependencies."""
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    out = {}
    for line in project["dependencies"]:
        req = Requirement(line)
        lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
        if lows:
            out[re.sub(r"[-_.]+", "_", req.name.lower())] = max(lows)
    return out


@pytest.mark.parametrize(("dist", "first", "api", "used_in"), API_MINIMUMS, ids=[row[2] for row in API_MINIMUMS])
def test_lower_bound_covers_the_api(dist, first, api, used_in):
    bound = lower_bounds().get(dist)
    assert bound is not None, f"pyproject.toml declares no lower bound for {dist}, which {used_in} needs"
    assert bound >= Version(first), (f"pyproject.toml allows {dist}>={bound}, but {api} (used in {used_in}) "
                                     f"first appeared in {dist} {first}: raise the bound")


@pytest.mark.parametrize("api", [row[2] for row in API_MINIMUMS])
def test_the_api_exists_in_the_installed_release(api):
    """The table names real APIs."""
    module_name, _, attribute = api.rpartition(".")
    assert hasattr(importlib.import_module(module_name), attribute), f"{api} does not exist"
