"""RouterForge: train, evaluate, version and publish LLM routers.

    from routerforge import Router
    router = Router.from_pretrained("my-org/mf-router")
"""

__version__ = "0.1.0"
__all__ = ["Router", "__version__"]


def __getattr__(name: str):
    # `Router` is imported on first use, so `import routerforge` (and its __version__) stays free of torch.
    if name == "Router":
        from routerforge.router import Router

        return Router
    raise AttributeError(f"module 'routerforge' has no attribute {name!r}")
