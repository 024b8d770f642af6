"""RouterForge: train, evaluate, version and publish LLM routers."""

__version__ = "0.1.0"
