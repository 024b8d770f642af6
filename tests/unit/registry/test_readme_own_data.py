"""README's "Train a router on your own data", run as written: its data config, its commands in order, and its
Python snippet, on real MMLU outcomes (RouteLLM's recorded GPT-4 / Mixtral correctness) written in the README's
outcome-table format, publishing to the loopback Hub. The commands are read from the README itself, so the
documentation and this test cannot drift apart."""

from __future__ import annotations

import csv
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from routerforge.cli import main as routerforge
from tests.fixtures.recipe_runner import REPO_ROOT

pytestmark = pytest.mark.slow  # prep (embeds ~250 prompts), train, eval, calibrate, publish, load: ~30 s

SECTION = "## Train a router on your own data"
MODEL_NAMES = {"gpt-4-1106-preview": "my-big-model", "mistralai/Mixtral-8x7B-Instruct-v0.1": "my-small-model"}


def readme_blocks() -> list[tuple[str, str]]:
    """(info string, body) of every fenced block in the section, in order."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", len(SECTION))]
    return re.findall(r"^```(\w*)\n(.*?)^```", section, flags=re.S | re.M)


def write_outcomes(path: Path, subjects: list[str], max_prompts: int, head: list[str] = ()) -> None:
    """RouteLLM's MMLU CSVs (prompt, one True/False column per model) as the README's long outcome table."""
    rows = list(head)
    for subject in subjects:
        with open(REPO_ROOT / "data/routellm/mmlu" / f"mmlu_{subject}.csv", newline="", encoding="utf-8") as fh:
            for i, record in enumerate(csv.DictReader(fh)):
                if i >= max_prompts:
                    break
                for column, model in MODEL_NAMES.items():
                    rows.append(json.dumps({"prompt_id": f"{subject}-{i}", "prompt": record["prompt"], "model": model,
                                            "score": 1.0 if record[column] == "True" else 0.0}))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_readme_own_data_walkthrough_runs_as_written(hub_env, tmp_path, monkeypatch, capsys):
    blocks = readme_blocks()
    kinds = [info for info, _ in blocks]
    assert kinds == ["jsonl", "jsonl", "yaml", "bash", "bash", "python"], kinds
    outcome_example, pair_example, data_config, *_ = (body for _, body in blocks)
    # The README's example rows are part of the table the walkthrough trains on: the format shown is the one read.
    example_rows = outcome_example.strip().splitlines()
    assert {"prompt_id", "prompt", "model", "score"} <= set(json.loads(example_rows[0]))
    assert {"question_id", "model_a", "model_b", "winner", "turns"} == set(json.loads(pair_example))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["routerforge"])  # `routerforge train` sets sys.argv for the recipe
    write_outcomes(tmp_path / "my_outcomes.jsonl", ["high_school_geography", "conceptual_physics"], 50,
                   head=example_rows)
    write_outcomes(tmp_path / "my_test_outcomes.jsonl", ["high_school_biology"], 40)
    (tmp_path / "my_data.yaml").write_text(data_config, encoding="utf-8")

    commands = [line for _, body in blocks if _ == "bash" for line in body.strip().splitlines()]
    assert [c.split()[1] for c in commands] == ["prep", "train", "eval", "calibrate", "route", "publish"]
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "routerforge"
        assert routerforge(argv[1:]) == 0, command
    out = capsys.readouterr().out
    assert "published my-org/my-router v1.0.0" in out and "main holds it" in out

    namespace: dict = {}
    exec(blocks[-1][1], namespace)  # noqa: S102 - the README's own snippet
    router = namespace["router"]
    assert router.version == "1.0.0" and router.path.name == hub_env.refs("my-org/my-router")["branches"]["main"]
    assert set(router.models) == {"my-big-model", "my-small-model"}
    manifest = json.loads((tmp_path / "checkpoints/mf/1.0.0/manifest.json").read_text())
    assert set(manifest["evaluations"]["my_test_outcomes"]["metrics"]) >= {"apgr", "cpt50", "cpt80"}
