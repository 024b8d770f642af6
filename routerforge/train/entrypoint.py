"""How a recipe script ends: user errors as one line and exit status 2, and a clean exit for every rank.

`run_recipe(main)` is the `if __name__ == "__main__":` of every training/train_*.py.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable

from routerforge.errors import RouterForgeError


def run_recipe(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Call `main(argv)`; a RouterForgeError is printed as `error: <one line>` on stderr, exit status its code.

    Multi-process runs (launched with WORLD_SIZE > 1) end with `os._exit` once the recipe has returned,
    its process group is destroyed and every stream and log handler is flushed. Why: after a successful
    2-process CPU run, the rank that finished first was intermittently aborted during interpreter teardown
    ("terminate called without an active exception", SIGABRT; about 1 run in 5 here and in CI), and the
    launcher then reported the whole run as failed. `destroy_process_group` alone did not stop it: the
    gloo group stays referenced by DDP wrappers and is torn down by C++ static destructors racing the
    interpreter's finalisation (pytorch/pytorch#179291 describes the same race). Nothing of the run is
    lost by skipping that teardown: checkpoints and exports are complete and renamed into place before
    `main` returns, and trackers are finished by `accelerator.end_training()`.
    """
    exit_code = 0
    try:
        main(argv)
    except RouterForgeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        exit_code = exc.exit_code
    _destroy_process_group()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_without_interpreter_teardown(exit_code)
    if exit_code:
        sys.exit(exit_code)


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _exit_without_interpreter_teardown(exit_code: int) -> None:
    gc.collect()  # release what reference cycles still hold (models, the group) while the interpreter is whole
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
