"""OpenAI-compatible routing proxy: `routerforge serve` (routerforge/serve/cli.py, app.py)."""
