"""How a recipe script turns user errors into one line and exit code 2 instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from routerforge.errors import RouterForgeError


def run_recipe(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Call `main(argv)`; a RouterForgeError is printed as `error: <one line>` on stderr, exit status 2.

    The process group is destroyed before the interpreter exits: a gloo group left to interpreter
    teardown can abort a rank with "terminate called without an active exception" (SIGABRT) after a
    successful run, which the launcher then reports as a failure (seen in CI on a 2-process resume).
    """
    try:
        main(argv)
    except RouterForgeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        _destroy_process_group()
        sys.exit(exc.exit_code)
    _destroy_process_group()


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
