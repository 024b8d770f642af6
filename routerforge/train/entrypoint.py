"""How a recipe script turns user errors into one line and exit code 2 instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from routerforge.errors import RouterForgeError


def run_recipe(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Call `main(argv)`; a RouterForgeError is printed as `error: <one line>` on stderr, exit status 2."""
    try:
        main(argv)
    except RouterForgeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
