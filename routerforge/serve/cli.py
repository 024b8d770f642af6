"""`routerforge serve`: run the OpenAI-compatible routing proxy with uvicorn.

    routerforge serve checkpoints/mf --strong-share 0.3 --config serve.yaml [key=value ...]
    routerforge serve checkpoints/mf --threshold 0.55 --config serve.yaml port=9000

SIGTERM / SIGINT: uvicorn stops accepting connections, lets in-flight requests (streams included) finish for up
to `graceful_shutdown_s`, then stops the encoder batcher and closes upstream connections.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from routerforge.errors import RouterForgeError

DESCRIPTION = ("Serve a router as an OpenAI-compatible endpoint: each chat request goes to the strong or the weak "
               "model's upstream, as the router decides.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routerforge serve", description=DESCRIPTION)
    parser.add_argument("checkpoint", help="checkpoint directory, checkpoints/<router> (LATEST) or Hub ORG/NAME")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--strong-share", type=float, default=None,
                      help="default preset (model `router`): the calibrated threshold of this strong share")
    mode.add_argument("--threshold", type=float, default=None,
                      help="default preset (model `router`): strong iff the router's score >= this")
    parser.add_argument("--config", type=Path, default=None, help="serve config YAML (see README, Serving a router)")
    parser.add_argument("--revision", default=None, help="Hub revision of an ORG/NAME checkpoint")
    parser.add_argument("--embedding-cache", default=None, metavar="DIR",
                        help="on-disk prompt-embedding cache to reuse (embedding routers); default: none")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="uvicorn and proxy log level")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. port=9000)")
    return parser


def serve_main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # key=value overrides may follow options
    try:
        import uvicorn

        from routerforge.config import load_config
        from routerforge.router import Router
        from routerforge.serve.app import build_state, create_app
        from routerforge.serve.config import ServeConfig

        config = load_config(ServeConfig, args.config, list(args.overrides))
        router = Router.from_pretrained(args.checkpoint, args.revision, batch_size=config.routing.max_batch_size,
                                        embedding_cache_dir=args.embedding_cache)
        state = build_state(router, config, strong_share=args.strong_share, threshold=args.threshold)
    except RouterForgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    log = logging.getLogger("routerforge.serve")
    log.info("router %s %s: %s over %s", router.name, router.version or "", state.spec.strong, state.spec.weak)
    for name, rule in state.rules.items():
        log.info("preset %s: %s", name if name != "default" else "router (default)", rule.describe())
    for upstream in state.forwarder.upstreams.values():
        log.info("upstream %r, timeout %g s", upstream, upstream.timeout_s)  # repr: no API key
    uvicorn_config = uvicorn.Config(create_app(state), host=config.host, port=config.port, log_level=args.log_level,
                                    timeout_graceful_shutdown=config.graceful_shutdown_s,
                                    lifespan="on")
    uvicorn.Server(uvicorn_config).run()
    return 0
