"""Answers and LLM-judge labels for a user's own prompts (`routerforge label`).

    routerforge label --config configs/label/example.yaml [key=value ...]

A prompts file (JSONL or CSV: prompt_id, prompt[, task, reference]) goes to every candidate model
(OpenAI-compatible endpoints, or local `transformers` models), a judge grades the answers (`single`,
`pairwise`) or they are matched against the reference (`reference`), and a versioned label set is
written in the formats `routerforge prep` already reads: a long outcome table and FastChat judge files.

Modules, one job each: `config` (the typed config), `prompts` (reading the prompts file), `templates`
(versioned judge templates and their parsers), `cache` (the crash-safe call cache), `client` (the one
retrying client per endpoint), `run` (scheduling, spend cap, progress) and `label_set` (the output).
"""
