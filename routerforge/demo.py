"""`make demo`: the main job end to end on the bundled real data, on CPU.

1. data prep (configs/data/demo.yaml): Arena votes, arena-bench-v1 judge labels, RouteLLM MMLU/GSM8K
   gold labels; MT-Bench and held-out halves of MMLU/GSM8K kept for evaluation and decontaminated
   against; prints the dataset stats.
2. trains the routers on it, each with the same command a user runs (printed before it runs):
   the kNN and linear routers, matrix factorization (RouteLLM), the BEST-Route difficulty router, the
   cluster router (UniRoute) and a probe router (P(weak model correct) from hidden states; offline the
   packaged MiniLM encoder stands in for the weak model's own states).
3. evaluates every router on the held-out sets, calibrates thresholds on held-out traffic, and routes the
   held-out prompts with the kNN router next to what each model really scored on them.

Every step is resumable: re-running the demo reuses the dataset (same version) and the finished runs.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from routerforge.registry.families import DEMO_DATA, FAMILIES

# run_demo imports the data pipeline inside (start-up cost: it pulls in datasets and the encoders).

DEMO_DATA_CONFIG = Path("configs/data/demo.yaml")
# Each family's demo steps (routerforge/registry/families.py): the demo sizes of the recipes' default configs.
TRAINING_STEPS = [step for family in FAMILIES.values() for step in family.demo]


def _run(cmd: list[str]) -> None:
    print("$ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def run_demo() -> int:
    from routerforge.config import load_config
    from routerforge.data.config import PrepConfig
    from routerforge.data.pipeline import run_pipeline
    from routerforge.data.summary import dataset_summary

    t_start = time.perf_counter()
    print(f"== 1. data prep: routerforge prep --config {DEMO_DATA_CONFIG} ==", flush=True)
    cfg = load_config(PrepConfig, DEMO_DATA_CONFIG)
    path = run_pipeline(cfg)
    print(dataset_summary(path))
    print(f"dataset: {path}  ({time.perf_counter() - t_start:.0f}s)", flush=True)

    for number, step in enumerate(TRAINING_STEPS, start=2):
        t0 = time.perf_counter()
        print(f"\n== {number}. {step.title} ==", flush=True)
        overrides = list(step.overrides)
        data_arg = [] if any(o.startswith("features.dataset=") for o in overrides) else [f"data.path={DEMO_DATA}"]
        _run([sys.executable, step.script, "--config", step.config, *data_arg, *overrides])
        print(f"({time.perf_counter() - t0:.0f}s)", flush=True)
    number = len(TRAINING_STEPS) + 2
    evaluate_calibrate_route(path, number)
    print(f"\ndemo finished in {time.perf_counter() - t_start:.0f}s")
    return 0


STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
EVAL_ROUTERS = tuple(name for name, family in FAMILIES.items() if family.demo)
ROUTE_EXAMPLES_WITH = "knn"


def _routerforge(*args: str, stdout: Path | None = None) -> None:
    """Run `routerforge <args>` as a user would (printing the command); `stdout` redirects its output to a file."""
    cmd = [sys.executable, "-m", "routerforge.cli", *args]
    if stdout is None:
        _run(cmd)
        return
    print("$ " + shlex.join(cmd) + f" > {shlex.quote(str(stdout))}", flush=True)
    with open(stdout, "w", encoding="utf-8") as out:
        subprocess.run(cmd, check=True, stdout=out, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def evaluate_calibrate_route(dataset_dir: Path, number: int) -> None:
    """Evaluate every demo router on the held-out sets, calibrate it on held-out traffic, route examples."""
    eval_sets = sorted((dataset_dir / "eval").glob("*.jsonl"))
    print(f"\n== {number}. evaluate on the held-out sets: {', '.join(p.stem for p in eval_sets)} ==", flush=True)
    results: dict[tuple[str, str], dict] = {}
    for router in EVAL_ROUTERS:
        for eval_set in eval_sets:
            report = Path("checkpoints") / router / f"eval-{eval_set.stem}.json"
            _routerforge("eval", f"checkpoints/{router}", "--outcomes", str(eval_set), "--strong", STRONG,
                         "--weak", WEAK, "--save", eval_set.stem, "--json", str(report),
                         "--embedding-cache", "data/cache/embeddings", "--n-bootstrap", "200")
            results[router, eval_set.stem] = json.loads(report.read_text())
    print("\n" + results_table(results, [p.stem for p in eval_sets]), flush=True)

    # "Your traffic": the dataset's held-out validation + test prompts, never trained on.
    from datasets import concatenate_datasets

    from routerforge.data.dataset_io import load_prepared

    ds = load_prepared(dataset_dir)
    traffic = Path("checkpoints/demo_traffic.jsonl")
    prompts = concatenate_datasets([ds.prompts["validation"], ds.prompts["test"]])["prompt"]
    traffic.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    print(f"\n== {number + 1}. calibrate thresholds for 20% and 50% strong calls on {len(prompts)} held-out "
          f"prompts ==", flush=True)
    for router in EVAL_ROUTERS:
        _routerforge("calibrate", f"checkpoints/{router}", "--prompts", str(traffic), "--strong-share", "0.2", "0.5",
                     "--strong", STRONG, "--weak", WEAK)
    # Example prompts with known answers: hand-written ones say little about a router trained on this data (it
    # routes them by their nearest demo prompts); held-out prompts whose real outcomes are known show whether the
    # prompts it sends to the strong model are the ones where the strong model gains most.
    outcomes, set_of = held_out_outcomes(eval_sets, STRONG, WEAK)
    held_out = Path("checkpoints/demo_held_out_prompts.jsonl")
    held_out.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in outcomes), encoding="utf-8")
    routes_file = Path("checkpoints/demo_held_out_routes.jsonl")
    print(f"\n== {number + 2}. route the {len(outcomes)} held-out prompts with the {ROUTE_EXAMPLES_WITH} router at "
          f"50% strong calls, next to what each model scored on them ==", flush=True)
    _routerforge("route", f"checkpoints/{ROUTE_EXAMPLES_WITH}", "--prompts", str(held_out), "--strong-share", "0.5",
                 "--strong", STRONG, "--weak", WEAK, "--embedding-cache", "data/cache/embeddings", "--json",
                 stdout=routes_file)
    routes = [json.loads(line) for line in routes_file.read_text(encoding="utf-8").splitlines()]
    print(held_out_routing_report(routes, outcomes, set_of, STRONG, WEAK), flush=True)
    _routerforge("list")


def held_out_outcomes(eval_sets: list[Path], strong: str, weak: str) -> tuple[dict[str, dict[str, float]],
                                                                            dict[str, str]]:
    """({prompt: {model: score}}, {prompt: set name}) over the eval sets, for the prompts graded for both `strong`
    and `weak` (in file order)."""
    outcomes: dict[str, dict[str, float]] = {}
    set_of: dict[str, str] = {}
    for path in eval_sets:
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row["model"] in (strong, weak):
                outcomes.setdefault(row["prompt"], {})[row["model"]] = float(row["score"])
                set_of.setdefault(row["prompt"], path.stem)
    both = {p: scores for p, scores in outcomes.items() if len(scores) == 2}
    return both, {p: set_of[p] for p in both}


def held_out_routing_report(routes: list[dict], outcomes: dict[str, dict[str, float]], set_of: dict[str, str],
                            strong: str, weak: str, examples_per_side: int = 2) -> str:
    """Per set and routed-to model: how many prompts, the mean real score of each model on them and the strong
    model's gain (strong - weak); then, per set, the `examples_per_side` prompts the router scored lowest (surest
    the weak model suffices) and highest.

    A router that routes sensibly sends the prompts where the strong model gains most to the strong model: the
    gain is larger on the prompts routed strong than on those routed weak.
    """
    short = {strong: strong.split("/")[-1], weak: weak.split("/")[-1]}
    lines = [f"| set | routed to | prompts | {short[weak]} mean score | {short[strong]} mean score | strong - weak |",
             "|---|---|---:|---:|---:|---:|"]
    by_set: dict[str, list[dict]] = {}
    for route in routes:
        by_set.setdefault(set_of[route["prompt"]], []).append(route)
    for name, set_routes in sorted(by_set.items()):
        for model in (weak, strong):
            chosen = [r["prompt"] for r in set_routes if r["model"] == model]
            if not chosen:
                lines.append(f"| {name} | {short[model]} | 0 | - | - | - |")
                continue
            means = [sum(outcomes[p][m] for p in chosen) / len(chosen) for m in (weak, strong)]
            lines.append(f"| {name} | {short[model]} | {len(chosen)} | {means[0]:.3f} | {means[1]:.3f} | "
                         f"{means[1] - means[0]:+.3f} |")
    for name, set_routes in sorted(by_set.items()):
        ranked = sorted(set_routes, key=lambda r: r["score"])
        lines.append(f"\n{name}: the {examples_per_side} prompts scored lowest and highest (score, routed to, "
                     f"{short[weak]} / {short[strong]} score):")
        for route in ranked[:examples_per_side] + ranked[-examples_per_side:]:
            text = " ".join(route["prompt"].split())
            text = text if len(text) <= 90 else text[:87] + "..."
            real = outcomes[route["prompt"]]
            lines.append(f"  {route['score']:.3f}  {short[route['model']]:<28} {real[weak]:g} / {real[strong]:g}  "
                         f"{text!r}")
    return "\n".join(lines)


def results_table(results: dict[tuple[str, str], dict], sets: list[str]) -> str:
    """Markdown table: APGR [95% bootstrap interval] / CPT(50%) / CPT(80%) per router and eval set, with random
    and oracle rows."""
    lines = ["| router | " + " | ".join(f"{s} APGR | {s} CPT50 | {s} CPT80" for s in sets) + " |",
             "|---|" + "---:|" * (3 * len(sets))]

    def value(report: dict, key: str) -> str:
        entry = report.get(key)
        if isinstance(entry, dict) and entry.get("value") is not None:
            ci = entry.get("ci") if key == "apgr" else None
            return f"{entry['value']:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and None not in ci else "")
        return f"{entry:.3f}" if isinstance(entry, (int, float)) else "-"

    def cells(report: dict) -> str:
        return " | ".join(value(report, k) for k in ("apgr", "cpt50", "cpt80"))

    routers = sorted({r for r, _ in results}, key=EVAL_ROUTERS.index)
    for router in routers:
        lines.append(f"| {router} | " + " | ".join(cells(results[router, s]) for s in sets) + " |")
    for ref in ("random", "oracle"):
        row = [cells(results[routers[0], s].get("references", {}).get(ref, {})) for s in sets]
        lines.append(f"| *{ref}* | " + " | ".join(row) + " |")
    return "\n".join(lines)
