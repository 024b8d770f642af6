"""How a recipe script ends: user errors as one line and exit status 2, and a clean exit for every rank.

`run_recipe(main)` is the `if __name__ == "__main__":` of every training/train_*.py.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from routerforge.errors import RouterForgeError


def run_recipe(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Call `main(argv)`; a RouterForgeError is printed as `error: <one line>` on stderr, exit status its code.

    Multi-process runs (launched with WORLD_SIZE > 1) end with `os._exit` once the recipe has returned and
    every stream and log handler is flushed, WITHOUT destroying the process group and without interpreter
    teardown. Why: tearing the gloo group down at the end of a successful 2-process CPU run went wrong in two
    ways. At interpreter exit the rank that finished first was intermittently aborted ("terminate called
    without an active exception", SIGABRT; about 1 run in 5 here and in CI): C++ static destructors race
    the interpreter's finalisation (pytorch/pytorch#179291 describes the same race). And when the group was
    destroyed while DDP wrappers still referenced it (`accelerator.end_training()` does that), freeing the
    wrapper as `main` returned ran the group's destructor, which joins gloo's threads while holding the GIL
    that one of them needed: a hang (seen on Router-R1; recipes call `tracking.finish_tracking` instead).
    Nothing of the run is lost: checkpoints and exports are complete and renamed into place before `main`
    returns, and the trackers are finished; every process has passed the recipe's last barrier.
    """
    exit_code = 0
    try:
        main(argv)
    except RouterForgeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        exit_code = exc.exit_code
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        exit_without_interpreter_teardown(exit_code)
    _destroy_process_group()
    if exit_code:
        sys.exit(exit_code)


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_without_interpreter_teardown(exit_code: int) -> None:
    """Flush logs and streams, then end this process now (`os._exit`): how every multi-process run ends
    (recipes through `run_recipe`, the `routerforge` CLI when launched with WORLD_SIZE > 1). See run_recipe."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
