"""`routerforge eval` and `routerforge list` on real trained routers and real held-out MMLU outcome tables.

The evaluation tables are the held-out halves of RouteLLM's MMLU correctness tables that the real data-prep
pipeline wrote (`<dataset>/eval/mmlu_<subject>.jsonl`, Mixtral-8x7B-Instruct vs GPT-4-1106); the routers are
trained by the recipes on the other half (tests/fixtures/registry_routers.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from routerforge.cli import main as routerforge_main
from routerforge.data.readers.prices import attach_cost
from routerforge.eval.cli import eval_main
from routerforge.registry.cli import list_main
from routerforge.registry.publish_validation import validate_checkpoint
from routerforge.registry.register import finalize_export
from routerforge.router import Router
from tests.fixtures import registry_routers as rr

pytestmark = pytest.mark.slow  # the session's first test prepares + embeds the MMLU data (~30 s on 2 cores)

# RouterArena's prices (data/prices/routerarena/model_cost/cost.json), USD per million input/output tokens.
PRICES = {rr.WEAK: (0.6, 0.6), rr.STRONG: (10.0, 30.0)}
RENAMED = {rr.STRONG: "gpt-4o", rr.WEAK: "llama-3-8b"}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp()


@pytest.fixture(scope="module")
def registry(base, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval-registry")
    for family in ("mf", "cluster", "difficulty"):
        finalize_export(rr.trained_any(base, family, tmp_path_factory), root)
    return root


@pytest.fixture(scope="module")
def table(base) -> Path:
    return rr.eval_table(base)


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def common(base) -> list[str]:
    return ["--embedding-cache", str(rr.cache_dir(base)), "--n-bootstrap", "200"]


def test_binary_eval_writes_table_json_and_plot(registry, table, base, tmp_path, capsys):
    out, plot = tmp_path / "report.json", tmp_path / "curve.png"
    assert eval_main([str(registry / "mf"), "--outcomes", str(table), "--strong", rr.STRONG, "--weak", rr.WEAK,
                      "--json", str(out), "--plot", str(plot), *common(base)]) == 0
    printed = capsys.readouterr().out
    assert "APGR" in printed and "oracle" in printed and "random" in printed
    report = json.loads(out.read_text())
    for key in ("apgr", "cpt50", "cpt80", "auc"):
        value, (lo, hi) = report[key]["value"], report[key]["ci"]
        assert lo <= value <= hi
    assert report["references"]["random"]["apgr"] == 0.5 and report["references"]["random"]["cpt50"] == 0.5
    assert report["references"]["oracle"]["apgr"]["value"] >= report["apgr"]["value"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Recompute AUC and APGR from the raw file and the router's scores, without the eval code.
    by_prompt: dict[str, dict] = {}
    for row in rows_of(table):
        by_prompt.setdefault(row["prompt"], {})[row["model"]] = row["score"]
    prompts = list(by_prompt)
    assert report["n"] == len(prompts) and report["outcomes"]["prompts_in_table"] == len(prompts)
    weak = np.array([by_prompt[p][rr.WEAK] for p in prompts])
    strong = np.array([by_prompt[p][rr.STRONG] for p in prompts])
    scores = Router.from_pretrained(registry / "mf", embedding_cache_dir=rr.cache_dir(base)).score(
        prompts, rr.STRONG, rr.WEAK)
    assert len(np.unique(scores)) == len(scores)  # no ties: the simple curve below is exact
    gains = (strong - weak)[np.argsort(-scores)]
    quality = weak.mean() + np.concatenate([[0.0], np.cumsum(gains)]) / len(prompts)
    auc = float(np.trapezoid(quality, np.linspace(0, 1, len(prompts) + 1)))
    assert report["auc"]["value"] == pytest.approx(auc, abs=1e-12)
    assert report["apgr"]["value"] == pytest.approx((auc - weak.mean()) / (strong.mean() - weak.mean()), abs=1e-9)


def test_unseen_pair_needs_a_mapping_and_then_transfers(registry, table, base, tmp_path, capsys):
    renamed = write_rows(tmp_path / "renamed.jsonl", [{**r, "model": RENAMED[r["model"]]} for r in rows_of(table)])
    args = [str(registry / "mf"), "--outcomes", str(renamed), "--strong", "gpt-4o", "--weak", "llama-3-8b",
            *common(base)]
    assert eval_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot score the pair (gpt-4o, llama-3-8b): it knows" in err
    assert rr.STRONG in err and "--router-pair" in err

    mapped, original = tmp_path / "mapped.json", tmp_path / "original.json"
    assert eval_main([*args, "--router-pair", rr.STRONG, rr.WEAK, "--json", str(mapped)]) == 0
    assert eval_main([str(registry / "mf"), "--outcomes", str(table), "--strong", rr.STRONG, "--weak", rr.WEAK,
                      "--json", str(original), *common(base)]) == 0
    mapped_report, original_report = json.loads(mapped.read_text()), json.loads(original.read_text())
    assert mapped_report["score"]["router_pair"] == [rr.STRONG, rr.WEAK]
    for key in ("apgr", "cpt50", "cpt80", "auc"):
        assert mapped_report[key] == original_report[key]

    # The same mapping from a config file (typed: a typo in a key is an error naming it).
    config = tmp_path / "mapping.yaml"
    config.write_text(f"router_pair: [{rr.STRONG}, {rr.WEAK}]\n")
    from_config = tmp_path / "from_config.json"
    assert eval_main([*args, "--config", str(config), "--json", str(from_config)]) == 0
    assert json.loads(from_config.read_text())["apgr"] == original_report["apgr"]
    config.write_text(f"router_pairs: [{rr.STRONG}, {rr.WEAK}]\n")
    assert eval_main([*args, "--config", str(config)]) == 2
    assert "unknown config key 'router_pairs'" in capsys.readouterr().err

    # A pair-free score (the difficulty head) needs no mapping at all.
    pair_free = tmp_path / "pair_free.json"
    assert eval_main([str(registry / "difficulty"), "--outcomes", str(renamed), "--strong", "gpt-4o", "--weak",
                      "llama-3-8b", "--json", str(pair_free), "--n-bootstrap", "0"]) == 0
    report = json.loads(pair_free.read_text())
    assert report["score"]["kind"] == "pair_free" and report["apgr"]["ci"] is None
    assert report["n"] == original_report["n"]


def test_multi_model_eval_with_costs(registry, table, base, tmp_path, capsys):
    costed = write_rows(tmp_path / "costed.jsonl",
                        [attach_cost({**r, "cost": None}, PRICES, assumed_output_tokens=16) for r in rows_of(table)])
    out, plot = tmp_path / "multi.json", tmp_path / "multi.png"
    assert eval_main([str(registry / "cluster"), "--outcomes", str(costed), "--json", str(out), "--plot", str(plot),
                      *common(base)]) == 0
    assert "AIQ" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["kind"] == "multi" and report["decision_costs"] == "router"
    aiq, zero, oracle = (report["aiq"]["value"], report["references"]["zero_router"]["aiq"]["value"],
                         report["references"]["oracle"]["aiq"]["value"])
    assert 0 < aiq <= oracle and zero <= oracle and report["aiq"]["ci"][0] <= aiq <= report["aiq"]["ci"][1]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    renamed = write_rows(tmp_path / "renamed.jsonl", [{**r, "model": RENAMED[r["model"]]} for r in rows_of(costed)])
    assert eval_main([str(registry / "cluster"), "--outcomes", str(renamed), *common(base)]) == 2
    err = capsys.readouterr().err
    assert "the table's llama-3-8b, gpt-4o are not among them" in err and "--map TABLE_MODEL=ROUTER_MODEL" in err
    mapped = tmp_path / "mapped.json"
    assert eval_main([str(registry / "cluster"), "--outcomes", str(renamed), "--map", f"gpt-4o={rr.STRONG}",
                      "--map", f"llama-3-8b={rr.WEAK}", "--json", str(mapped), *common(base)]) == 0
    mapped_report = json.loads(mapped.read_text())
    assert mapped_report["decision_costs"] == "table_mean_cost_per_model"
    assert mapped_report["models"] == {"gpt-4o": rr.STRONG, "llama-3-8b": rr.WEAK}

    # Without costs, multi-model evaluation says what is missing and how to evaluate binary instead.
    assert eval_main([str(registry / "cluster"), "--outcomes", str(table), *common(base)]) == 2
    assert "needs a `cost` (USD) on every row" in capsys.readouterr().err


def test_save_into_the_checkpoint_sets_the_gate_and_list_shows_it(registry, table, base, tmp_path, capsys):
    root = tmp_path / "checkpoints"
    version_dir = finalize_export(rr.trained_export(base, "mf"), root)
    assert routerforge_main(["eval", str(version_dir), "--outcomes", str(table), "--strong", rr.STRONG, "--weak",
                             rr.WEAK, "--save", "mmlu-geo", "--gate", *common(base)]) == 0
    capsys.readouterr()
    manifest = json.loads((version_dir / "manifest.json").read_text())
    saved = json.loads((version_dir / "eval" / "mmlu-geo.json").read_text())
    assert manifest["metrics"]["gate"] == {"set": "mmlu-geo", "metric": "apgr", "value": saved["apgr"]["value"],
                                           "higher_is_better": True}
    assert manifest["evaluations"]["mmlu-geo"]["report"] == "eval/mmlu-geo.json"
    assert {"eval/mmlu-geo.json", "eval/mmlu-geo.png"} <= set(manifest["files"])
    assert "`mmlu-geo` (binary" in (version_dir / "README.md").read_text()
    validate_checkpoint(version_dir)  # still publishable: every new file listed and allowlisted
    Router.from_pretrained(version_dir)

    assert list_main([str(root), "--verify"]) == 0
    listing = capsys.readouterr().out
    assert "mf" in listing and "1.0.0" in listing and "latest" in listing and "apgr=" in listing
    assert "verify: ok" in listing
    assert list_main([str(root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["router"], r["version"], r["latest"]) for r in rows] == [("mf", "1.0.0", True)]
    assert list_main([str(tmp_path / "nothing")]) == 2


def test_bad_requests_exit_2_with_one_line(registry, table, tmp_path, capsys):
    assert eval_main([str(registry / "mf"), "--outcomes", str(table), "--strong", rr.STRONG]) == 2
    assert "needs both --strong and --weak" in capsys.readouterr().err
    assert eval_main([str(registry / "mf"), "--outcomes", str(tmp_path / "none.jsonl"), "--strong", rr.STRONG,
                      "--weak", rr.WEAK]) == 2
    assert "outcome table not found" in capsys.readouterr().err
    bad = write_rows(tmp_path / "bad.jsonl", [{"prompt": "x", "model": rr.STRONG, "score": 3}])
    assert eval_main([str(registry / "mf"), "--outcomes", str(bad), "--strong", rr.STRONG, "--weak", rr.WEAK]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.jsonl:1" in err and "not in [0, 1]" in err
