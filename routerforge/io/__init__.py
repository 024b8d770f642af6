"""Primitives every layer shares, torch-light (nothing here imports torch at import time).

    names.py            the artifact file names (model.safetensors, config.json, manifest.json, COMPLETE, LATEST)
    digest.py           sha256 of a file / of a directory tree (what manifests and COMPLETE markers record)
    atomic.py           atomic file writes and atomic directory builds (temporary sibling + rename)
    safetensors_file.py the safetensors header check (a pickle is refused unread) and the checked load
    http_json.py        one retrying JSON POST to OpenAI-compatible endpoints, and its retry policy

This package imports nothing of routerforge but `routerforge.errors`.
"""
