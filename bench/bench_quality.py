"""Router quality on real data: every RouterForge family (default configs) vs simple baselines, same splits.

    .venv/bin/python bench/bench_quality.py                                   # every set, family and baseline
    .venv/bin/python bench/bench_quality.py --sets mmlu_pro,gsm8k --families knn,mf
    .venv/bin/python bench/bench_quality.py --quick                           # a few hundred questions per set
    .venv/bin/python bench/bench_quality.py --reuse-exports                   # re-score earlier exports, add baselines
    make bench-quality                                                        # the same as the first line

For each set the bench writes a data config, runs `routerforge prep` on it (the product's own readers,
cleaning, decontamination against the test half, train/validation split and embedding; embeddings are
cached under data/cache/embeddings), trains every family with its default config through its recipe
(`training/train_<family>.py --config configs/<family>/default.yaml data.path=<dataset>`), evaluates each
export with `routerforge eval` (routerforge.eval.report.evaluate_router) on the test half, and scores the
baselines on the same test prompts:

* random: sends a random share of prompts to the strong model (APGR 0.5, CPT(x) = x; analytic);
* tfidf_lr: scikit-learn TF-IDF (word 1-2 grams, sublinear tf) + logistic regression;
* emb_lr: logistic regression on the frozen prompt embeddings the families use;
* emb_knn: mean (strong score - weak score) over the 25 nearest training prompts (cosine);
* routellm_mf: RouteLLM's own MF training code (routellm 0.2.0 from PyPI, in its own venv, exactly as
  bench/bench_mf_vs_routellm.py runs it) on the dataset's training pairs, RouteLLM's hyperparameters;
  epochs = min(100, --routellm-pair-budget / training pairs), since 100 epochs over a million pairs take
  hours on a CPU (the number of epochs run is in the table);
* oracle: the best possible router for the pair (APGR can exceed 1 where the weak model is better).

The LR/kNN baselines learn the label "strong beats weak" (strong score > weak score) from the training
half's outcomes of the two models; where a set has no outcomes for the pair in training (MT-Bench: its
training data are Arena votes and judge labels) they learn from the training pairs between the two models.
Baseline hyperparameters are scikit-learn's defaults (C = 1) and k = 25: nothing is searched on test data.
The families choose their own hyperparameters on the validation split carved from the training half
(early stopping, kNN's k), never on the test half.

Sets (test = a 50/50 split by question with the prep's seeded holdout, decontaminated, unless a set has
its own split): mmlu_pro (MMLU-Pro questions from MMLU, 31 models; pairs gpt-4o / Llama-3.1-8B-Instruct and
gpt-4o / Mixtral-8x7B-Instruct), routellm_mmlu (14,042 MMLU questions) and gsm8k (1,319), both
gpt-4-1106-preview / Mixtral-8x7B-Instruct; dcrouter (LLMRouter's own train/test split; the best model vs
the cheapest); mmlu_redux (ZeroEval, gpt-4o vs Llama-3.1-8B-Instruct); mt_bench (train: Arena votes +
arena-bench GPT-4 judge labels; test: MT-Bench judge scores; RouteLLM's setting).

Output (--out, default bench/results/quality): results.json (every number, with bootstrap 95% intervals
and paired differences), results.md (the table the README shows) and apgr.png (APGR per set and router).
Metrics: APGR (higher is better), CPT50 / CPT80 (share of strong calls needed for 50% / 80% of the
quality gap, lower is better), from routerforge.eval.binary; intervals: 1,000 seeded bootstrap resamples
of the test prompts. "best - baseline" is a PAIRED bootstrap interval (the same resampled prompts for both
routers), which is much tighter than comparing two separate intervals.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from routerforge.registry.families import FAMILIES  # noqa: E402 (after the checkout is on sys.path)

GPT4O, LLAMA31_8B, MIXTRAL = "gpt-4o", "Meta-Llama-3_1-8B-Instruct", "Mixtral-8x7B-Instruct-v0.1"
GPT4_1106, MIXTRAL_HF = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
# The families registered with bench overrides (routerforge/registry/families.py), in registration order.
BENCHED_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.bench_overrides is not None)
BASELINES = ("random", "tfidf_lr", "emb_lr", "emb_knn", "routellm_mf", "oracle")
N_BOOTSTRAP = 1000
KNN_BASELINE_K = 25


# --------------------------------------------------------------------------------------------------
# 1. The sets: data config sources + the (strong, weak) pairs evaluated
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchSet:
    name: str
    sources: list[dict]
    eval_set: str  # the eval table's name in the prepared dataset (eval/<name>.jsonl)
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (strong, weak); empty: chosen from the data
    description: str = ""


def bench_sets(data_root: Path) -> dict[str, BenchSet]:
    d = data_root
    half = {"holdout": 0.5, "convert": {"rule": "outcome_pairs"}}
    return {s.name: s for s in [
        BenchSet("mmlu_pro", [{"name": "mmlu_pro", "kind": "outcomes",
                               "path": str(d / "mmlu_pro/outcomes_ori_mmlu.jsonl.gz"), **half}],
                 "mmlu_pro", [(GPT4O, LLAMA31_8B), (GPT4O, MIXTRAL)],
                 "MMLU-Pro questions from MMLU, 31 models, 50/50 split by question"),
        BenchSet("routellm_mmlu", [{"name": "routellm_mmlu", "kind": "routellm_csv",
                                    "path": str(d / "routellm/mmlu/*.csv"), **half}],
                 "routellm_mmlu", [(GPT4_1106, MIXTRAL_HF)], "RouteLLM MMLU, 57 subjects, 50/50 split"),
        BenchSet("gsm8k", [{"name": "gsm8k", "kind": "routellm_csv",
                            "path": str(d / "routellm/gsm8k/gsm8k_responses.csv"), **half}],
                 "gsm8k", [(GPT4_1106, MIXTRAL_HF)], "RouteLLM GSM8K, 50/50 split"),
        BenchSet("dcrouter", [{"name": "dcrouter", "kind": "llmrouter_json",
                               "path": str(d / "llmrouter/dcrouter_train.json"), "convert": {"rule": "outcome_pairs"}},
                              {"name": "dcrouter_test", "kind": "llmrouter_json",
                               "path": str(d / "llmrouter/dcrouter_test.json"), "role": "eval"}],
                 "dcrouter_test", [], "LLMRouter dcrouter, its own train/test split, 9 models"),
        BenchSet("mmlu_redux", [{"name": "mmlu_redux", "kind": "zeroeval_summary",
                                 "path": str(d / "zeroeval/task_summary_mmlu-redux.json"),
                                 "questions_path": str(d / "zeroeval/prompts.jsonl"), **half}],
                 "mmlu_redux", [("gpt-4o-2024-05-13", "Meta-Llama-3.1-8B-Instruct")],
                 "ZeroEval mmlu-redux, 976 items with prompts, 50/50 split"),
        BenchSet("mt_bench", [
            {"name": "arena", "kind": "arena_conversations", "path": str(d / "chatbot_arena/arena_battles_1k.jsonl"),
             "anony_only": True},
            {"name": "arena_bench_judge", "kind": "fastchat_single_judge",
             "path": str(d / "arena_bench_v1/model_judgment/*.jsonl"),
             "questions_path": str(d / "arena_bench_v1/question.jsonl"), "weight": 0.5,
             "convert": {"rule": "routellm_threshold", "strong": GPT4_1106, "weak": MIXTRAL_HF, "threshold": 8.0}},
            {"name": "mt_bench", "kind": "fastchat_single_judge", "path": str(d / "routellm/mt_bench/judgements.jsonl"),
             "questions_path": str(d / "routellm/mt_bench/question.jsonl"), "role": "eval"}],
                 "mt_bench", [(GPT4_1106, MIXTRAL_HF)],
                 "train: Arena votes + arena-bench GPT-4 judge labels; test: MT-Bench (RouteLLM's setting)"),
    ]}


def data_config(bench_set: BenchSet, output_root: Path, cache_dir: Path, quick: int | None) -> dict:
    sources = [dict(src, max_rows=quick * (40 if src.get("kind") == "outcomes" else 1)) if quick else src
               for src in bench_set.sources]
    return {"name": bench_set.name, "output_root": str(output_root), "sources": sources,
            "clean": {"aliases": {"Llama-2-70b-chat": "llama-2-70b-chat", "palm-2-chat-bison-001": "palm-2"},
                      "max_prompt_chars": 8000},
            "split": {"validation": 0.1, "test": 0.0, "seed": 0},
            "encoder": {"backend": "sentence_transformers", "model": "packaged:all-MiniLM-L6-v2",
                        "batch_size": 64, "max_length": 256, "cache_dir": str(cache_dir)}}


# --------------------------------------------------------------------------------------------------
# 2. Subprocess helpers (prep, recipes)
# --------------------------------------------------------------------------------------------------
def run_logged(cmd: list[str], log: Path, threads: int) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    started = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {code}); log {log}:\n{tail}")
    return time.perf_counter() - started


def prepare(bench_set: BenchSet, work: Path, cache_dir: Path, quick: int | None, threads: int) -> Path:
    import yaml

    config_path = work / bench_set.name / "data.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(data_config(bench_set, work / "datasets", cache_dir, quick)))
    seconds = run_logged([sys.executable, "-m", "routerforge.cli", "prep", "--config", str(config_path)],
                         work / bench_set.name / "prep.log", threads)
    print(f"[{bench_set.name}] prep {seconds:.0f} s", flush=True)
    return work / "datasets" / bench_set.name


def reusable_export(export: Path, timing: Path, fingerprint: str) -> float | None:
    """The wall seconds of an earlier bench training of this export, if it was trained on the same prepared data."""
    try:
        manifest = json.loads((export / "manifest.json").read_text())
        seconds = json.loads(timing.read_text())["wall_seconds"]
    except (OSError, ValueError, KeyError):
        return None
    return float(seconds) if (manifest.get("data") or {}).get("fingerprint") == fingerprint else None


def train_family(family: str, dataset, work: Path, set_name: str, threads: int,
                 reuse: bool = False) -> tuple[Path, dict]:
    out = work / set_name / "checkpoints"
    export = out / family / set_name / "final"
    timing = work / set_name / f"train_{family}.timing.json"
    seconds = reusable_export(export, timing, dataset.fingerprint) if reuse else None
    reused = seconds is not None
    if not reused:
        cmd = [sys.executable, f"training/train_{family}.py", "--config", f"configs/{family}/default.yaml",
               f"data.path={dataset.path}", f"run.output_dir={out}", f"run.name={set_name}",
               *FAMILIES[family].bench_overrides]
        seconds = run_logged(cmd, work / set_name / f"train_{family}.log", threads)
        timing.write_text(json.dumps({"wall_seconds": seconds}) + "\n")
    manifest = json.loads((export / "manifest.json").read_text())
    training = manifest.get("training", {})
    samples = training.get("train_samples")
    return export, {"wall_seconds": seconds, "train_samples": samples, "reused_export": reused,
                    "samples_per_second": samples / seconds if samples else None}


# --------------------------------------------------------------------------------------------------
# 3. Baselines (in process, on the same prepared data and test prompts)
# --------------------------------------------------------------------------------------------------
@dataclass
class PairData:
    """Training texts/embeddings with the label 'strong beats weak', and the test columns."""

    train_texts: list[str]
    train_emb: np.ndarray
    train_gain: np.ndarray  # strong score - weak score (pairs: +1 strong won, -1 weak won, 0 tie)
    test_texts: list[str]
    test_emb: np.ndarray
    test_weak: np.ndarray
    test_strong: np.ndarray


def pair_data(dataset, strong: str, weak: str, test_path: Path, embed) -> PairData:
    from routerforge.eval.outcome_table import load_outcome_table, strong_weak_columns

    emb_of = dataset.embedding_index()
    scores: dict[str, dict[str, float]] = {}
    texts: dict[str, str] = {}
    for split in dataset.outcomes:
        if split == "test":
            continue
        for row in dataset.outcomes[split].select_columns(["prompt_id", "prompt", "model", "score"]).to_list():
            if row["model"] in (strong, weak):
                scores.setdefault(row["prompt_id"], {})[row["model"]] = float(row["score"])
                texts[row["prompt_id"]] = row["prompt"]
    ids = [pid for pid, s in scores.items() if strong in s and weak in s and pid in emb_of]
    gain = [scores[pid][strong] - scores[pid][weak] for pid in ids]
    if len(ids) < 20:  # no outcomes of the pair in training: the pairs between the two models
        ids, gain = [], []
        for split in dataset.pairs:
            if split == "test":
                continue
            table = dataset.pairs[split]
            names = table.features["winner"].names
            prompt_text = dict(zip(dataset.prompts[split]["prompt_id"], dataset.prompts[split]["prompt"], strict=True))
            for pid, a, b, w in zip(table["prompt_id"], table["model_a"], table["model_b"], table["winner"],
                                    strict=True):
                if {a, b} == {strong, weak} and pid in emb_of:
                    winner = names[w]
                    sign = 0.0 if winner.startswith("tie") else (1.0 if (a if winner == "model_a" else b) == strong
                                                                  else -1.0)
                    ids.append(pid)
                    gain.append(sign)
                    texts[pid] = prompt_text.get(pid, "")
    cols = strong_weak_columns(load_outcome_table(test_path), strong, weak)
    return PairData([texts[p] for p in ids], np.stack([emb_of[p] for p in ids]) if ids else np.zeros((0, 1)),
                    np.asarray(gain, dtype=np.float64), list(cols.prompts), embed(list(cols.prompts)),
                    np.asarray(cols.weak_scores), np.asarray(cols.strong_scores))


def baseline_scores(name: str, pd: PairData) -> np.ndarray | None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    label = (pd.train_gain > 0).astype(int)
    if len(label) < 20 or label.min() == label.max():
        return None
    if name == "tfidf_lr":
        vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2)
        x = vectorizer.fit_transform(pd.train_texts)
        return LogisticRegression(max_iter=2000).fit(x, label).predict_proba(vectorizer.transform(pd.test_texts))[:, 1]
    if name == "emb_lr":
        return LogisticRegression(max_iter=2000).fit(pd.train_emb, label).predict_proba(pd.test_emb)[:, 1]
    if name == "emb_knn":
        k = min(KNN_BASELINE_K, len(label))
        sims = pd.test_emb @ pd.train_emb.T
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        return pd.train_gain[nearest].mean(axis=1)
    raise ValueError(name)


def routellm_scores(dataset, pair_inputs: dict[tuple[str, str], PairData], work: Path, pair_budget: float,
                    threads: int, venv: Path) -> tuple[dict[tuple[str, str], np.ndarray], dict]:
    """RouteLLM's own MF code, trained once on the dataset's training pairs; P(strong beats weak) on each
    pair's test prompts."""
    from bench_mf_vs_routellm import HYPERPARAMETERS, WORKER, ensure_routellm_venv

    from routerforge.data.pair_tensors import prompt_embedding_matrix

    pairs = list(pair_inputs)
    # RouteLLM's loop is the slowest part of the bench: its scores are kept per (dataset version, pairs, budget)
    # and reused by a later run of the bench on the same prepared data (delete the file to re-train).
    saved = work / f"routellm_{dataset.fingerprint[:12]}_{len(pairs)}pairs_{int(pair_budget)}.json"
    if saved.is_file():
        kept = json.loads(saved.read_text())
        if kept["pairs"] == [list(p) for p in pairs]:
            return ({p: np.asarray(s, dtype=np.float64) for p, s in zip(pairs, kept["scores"], strict=True)},
                    kept["info"])
    python = ensure_routellm_venv(venv)
    prompt_row, train_matrix = prompt_embedding_matrix(dataset)
    blocks, score_rows, score_pairs, next_row = [train_matrix.numpy()], {}, {}, train_matrix.shape[0]
    for i, (pair, pd) in enumerate(pair_inputs.items()):
        blocks.append(pd.test_emb)
        score_rows[f"pair{i}"] = list(range(next_row, next_row + len(pd.test_emb)))
        score_pairs[f"pair{i}"] = list(pair)
        next_row += len(pd.test_emb)
    np.save(work / "routellm_embeddings.npy", np.concatenate(blocks).astype(np.float32))

    def pairs_json(split: str) -> tuple[Path, int]:
        table = dataset.pairs[split]
        names = table.features["winner"].names
        rows = [{"model_a": a, "model_b": b, "winner": names[w], "idx": prompt_row[pid]}
                for pid, a, b, w in zip(table["prompt_id"], table["model_a"], table["model_b"], table["winner"],
                                        strict=True)]
        path = work / f"routellm_pairs_{split}.json"
        path.write_text(json.dumps(rows))
        return path, len(rows)

    train_json, n_pairs = pairs_json("train")
    test_json, _ = pairs_json("validation")
    epochs = int(max(1, min(100, pair_budget // max(n_pairs, 1))))
    spec = {"embeddings_npy": str(work / "routellm_embeddings.npy"), "train_pairs": str(train_json),
            "test_pairs": str(test_json), "model_pool": dataset.models, "seed": 42, "torch_threads": threads,
            "hyperparameters": {**HYPERPARAMETERS, "num_epochs": epochs}, "strong_model": pairs[0][0],
            "weak_model": pairs[0][1], "score_rows": score_rows, "score_pairs": score_pairs}
    spec_path, out_path = work / "routellm_spec.json", work / "routellm_out.json"
    spec_path.write_text(json.dumps(spec))
    os.environ.setdefault("OPENAI_API_KEY", "unused-by-this-benchmark")  # see bench_mf_vs_routellm.run_child
    seconds = run_logged([str(python), str(WORKER), str(spec_path), str(out_path)], work / "routellm.log", threads)
    out = json.loads(out_path.read_text())
    info = {"wall_seconds": seconds, "epochs": epochs, "train_pairs": out["train_pairs"],
            "samples_per_second": out["train_pairs"] * epochs / max(sum(out["epoch_train_seconds"]), 1e-9)}
    scores = [out["scores"][f"pair{i}"] for i in range(len(pairs))]
    saved.write_text(json.dumps({"pairs": [list(p) for p in pairs], "scores": scores, "info": info}))
    return {p: np.asarray(s, dtype=np.float64) for p, s in zip(pairs, scores, strict=True)}, info


# --------------------------------------------------------------------------------------------------
# 4. Metrics with intervals, paired differences
# --------------------------------------------------------------------------------------------------
def metrics_with_ci(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray, seed: int = 0) -> dict:
    from routerforge.eval.binary import binary_report

    report = binary_report(scores, weak, strong, n_bootstrap=N_BOOTSTRAP, seed=seed)
    out = {}
    for key, point in (("apgr", report.router.apgr), ("cpt50", report.router.cpt50_share),
                       ("cpt80", report.router.cpt80_share)):
        ci = report.intervals.get(key if key == "apgr" else f"{key}_share")
        out[key] = {"value": float(point), "low": float(ci.lo) if ci else None, "high": float(ci.hi) if ci else None}
    return out


def paired_difference(a: np.ndarray, b: np.ndarray, weak: np.ndarray, strong: np.ndarray, seed: int = 0) -> dict:
    """APGR(a) - APGR(b) with a paired bootstrap interval (the same resampled prompts for both)."""
    from routerforge.eval.binary import binary_headline_metrics

    def apgr(scores, idx):
        return binary_headline_metrics(scores[idx], weak[idx], strong[idx])["apgr"]

    n = len(weak)
    full = np.arange(n)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(N_BOOTSTRAP):
        idx = rng.integers(0, n, n)
        d = apgr(a, idx) - apgr(b, idx)
        if np.isfinite(d):
            diffs.append(d)
    low, high = np.quantile(diffs, [0.025, 0.975])
    return {"value": float(apgr(a, full) - apgr(b, full)), "low": float(low), "high": float(high)}


# --------------------------------------------------------------------------------------------------
# 5. One set: prep, families, baselines, table rows
# --------------------------------------------------------------------------------------------------
def choose_dcrouter_pair(dataset, prices_file: Path) -> tuple[str, str]:
    """(best mean training score, cheapest by input + output price) of the dataset's outcome models."""
    from routerforge.data.readers.prices import load_price_table

    prices = load_price_table(prices_file)
    table = dataset.outcomes["train"].select_columns(["model", "score"]).to_pandas()
    means = table.groupby("model")["score"].mean()
    best = str(means.idxmax())
    priced = [m for m in means.index if m in prices]
    cheapest = min(priced, key=lambda m: (sum(prices[m]), means[m])) if priced else str(means.idxmin())
    return best, cheapest


def run_set(bench_set: BenchSet, args, work: Path) -> dict:
    from routerforge.data.dataset_io import load_prepared
    from routerforge.models.family_scorer import build_prompt_embedder
    from routerforge.router import Router

    dataset_root = prepare(bench_set, work, args.cache_dir, args.quick, args.threads)
    dataset = load_prepared(dataset_root)
    test_path = dataset.path / "eval" / f"{bench_set.eval_set}.jsonl"
    pairs = bench_set.pairs or [choose_dcrouter_pair(dataset, args.data_root / "llmrouter/default_llm.json")]
    embed, _ = build_prompt_embedder(dataset.encoder, int(dataset.encoder["dim"]), batch_size=64, device="cpu",
                                     embedding_cache_dir=str(args.cache_dir))
    exports, train_info = {}, {}
    for family in args.families:
        try:
            exports[family], train_info[family] = train_family(family, dataset, work, bench_set.name,
                                                               args.threads, reuse=args.reuse_exports)
            how = "reused the export trained" if train_info[family]["reused_export"] else "trained"
            print(f"[{bench_set.name}] {family}: {how} in {train_info[family]['wall_seconds']:.0f} s", flush=True)
        except RuntimeError as err:
            print(f"[{bench_set.name}] {family}: FAILED\n{err}", flush=True)
            train_info[family] = {"error": str(err).splitlines()[0]}
    pair_inputs = {(strong, weak): pair_data(dataset, strong, weak, test_path, embed) for strong, weak in pairs}
    routellm: dict[tuple[str, str], np.ndarray] = {}
    routellm_info: dict = {}
    if "routellm_mf" in args.baselines:
        try:
            routellm, routellm_info = routellm_scores(dataset, pair_inputs, work / bench_set.name,
                                                      args.routellm_pair_budget, args.threads, args.routellm_venv)
        except (RuntimeError, KeyError, SystemExit, subprocess.CalledProcessError) as err:
            print(f"[{bench_set.name}] routellm_mf: FAILED: {str(err).splitlines()[0]}", flush=True)
    rows = []
    for (strong, weak), pd in pair_inputs.items():
        scores: dict[str, np.ndarray] = {}
        info: dict[str, dict] = {}
        for family, export in exports.items():
            # What `routerforge eval` computes (evaluate_router): the router's binary score on the test prompts.
            router = Router.from_pretrained(str(export), embedding_cache_dir=str(args.cache_dir))
            spec = router.score_spec(strong, weak)
            scores[family] = np.asarray(router.scores_for(pd.test_texts, spec), dtype=np.float64)
            info[family] = {**train_info[family], "score_rule": spec.to_dict().get("rule")}
        for baseline in args.baselines:
            started = time.perf_counter()
            if baseline == "oracle":
                scores[baseline] = pd.test_strong - pd.test_weak
            elif baseline == "random":
                continue  # analytic: APGR 0.5, CPT(x) = x
            elif baseline == "routellm_mf":
                if (strong, weak) in routellm:
                    scores[baseline], info[baseline] = routellm[strong, weak], routellm_info
                continue
            else:
                s = baseline_scores(baseline, pd)
                if s is None:
                    continue
                scores[baseline] = s
                info[baseline] = {"wall_seconds": time.perf_counter() - started, "train_rows": len(pd.train_gain)}
        row = {"set": bench_set.name, "strong": strong, "weak": weak, "test_prompts": len(pd.test_weak),
               "train_rows_for_baselines": len(pd.train_gain), "routers": {}}
        for name, s in scores.items():
            row["routers"][name] = {**metrics_with_ci(s, pd.test_weak, pd.test_strong), **info.get(name, {})}
        if "random" in args.baselines:
            row["routers"]["random"] = {"apgr": {"value": 0.5, "low": 0.5, "high": 0.5},
                                        "cpt50": {"value": 0.5, "low": 0.5, "high": 0.5},
                                        "cpt80": {"value": 0.8, "low": 0.8, "high": 0.8}}
        ours = [f for f in args.families if f in scores]
        theirs = [b for b in ("tfidf_lr", "emb_lr", "emb_knn", "routellm_mf") if b in scores]
        if ours and theirs:
            best = max(ours, key=lambda f: row["routers"][f]["apgr"]["value"])
            row["best_family"] = best
            row["best_minus_baseline"] = {b: paired_difference(scores[best], scores[b], pd.test_weak, pd.test_strong)
                                          for b in theirs}
        rows.append(row)
        print(format_rows([row]), flush=True)
    return {"set": bench_set.name, "description": bench_set.description, "dataset": str(dataset.path),
            "pairs": rows}


# --------------------------------------------------------------------------------------------------
# 6. Report: Markdown table, plot
# --------------------------------------------------------------------------------------------------
def _cell(m: dict) -> str:
    if m.get("low") is None or m["low"] == m["high"]:
        return f"{m['value']:.3f}"
    return f"{m['value']:.3f} [{m['low']:.2f}, {m['high']:.2f}]"


def format_rows(rows: list[dict]) -> str:
    lines = ["| set | strong / weak | n test | router | APGR [95% CI] | CPT50 | CPT80 | train s | samples/s |",
             "|---|---|---:|---|---|---:|---:|---:|---:|"]
    for row in rows:
        order = sorted(row["routers"], key=lambda r: -row["routers"][r]["apgr"]["value"])
        for name in order:
            m = row["routers"][name]
            label = name if name not in BASELINES else f"*{name}*"
            if name == "routellm_mf" and "epochs" in m:
                label += f" ({m['epochs']} ep)"
            wall = f"{m['wall_seconds']:.0f}" if m.get("wall_seconds") is not None else ""
            sps = f"{m['samples_per_second']:.0f}" if m.get("samples_per_second") else ""
            lines.append(f"| {row['set']} | {row['strong']} / {row['weak']} | {row['test_prompts']} | {label} | "
                         f"{_cell(m['apgr'])} | {m['cpt50']['value']:.3f} | {m['cpt80']['value']:.3f} | "
                         f"{wall} | {sps} |")
        if "best_minus_baseline" in row:
            diffs = ", ".join(f"{b} {d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
                              for b, d in row["best_minus_baseline"].items())
            lines.append(f"| {row['set']} | | | **{row['best_family']} - baseline (paired)** | {diffs} | | | | |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for r in results for row in r["pairs"]]
    routers = sorted({name for row in rows for name in row["routers"]}, key=lambda n: (n in BASELINES, n))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    width = 0.8 / max(len(routers), 1)
    for j, name in enumerate(routers):
        xs, ys, err = [], [], [[], []]
        for i, row in enumerate(rows):
            m = row["routers"].get(name)
            if m is None:
                continue
            xs.append(i + j * width)
            ys.append(m["apgr"]["value"])
            err[0].append(m["apgr"]["value"]
                          - (m["apgr"]["low"] if m["apgr"]["low"] is not None else m["apgr"]["value"]))
            err[1].append((m["apgr"]["high"] if m["apgr"]["high"] is not None else m["apgr"]["value"])
                          - m["apgr"]["value"])
        ax.bar(xs, ys, width, yerr=err, label=name, capsize=2)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
    ax.set_xticklabels([f"{row['set']}\n{row['weak'][:18]}" for row in rows], fontsize=7)
    ax.set_ylabel("APGR (higher is better)")
    ax.set_ylim(0.3, 1.1)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="mmlu_pro,routellm_mmlu,gsm8k,dcrouter,mmlu_redux,mt_bench",
                        help="comma-separated sets (default: all)")
    parser.add_argument("--families", default=",".join(BENCHED_FAMILIES), help="comma-separated RouterForge families")
    parser.add_argument("--baselines", default=",".join(BASELINES), help="comma-separated baselines")
    parser.add_argument("--data-root", type=Path, default=REPO_ROOT / "data", help="the bundled real data")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "bench" / "results" / "quality" / "work",
                        help="prepared datasets, checkpoints and logs")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "quality")
    parser.add_argument("--cache-dir", type=Path, default=REPO_ROOT / "data" / "cache" / "embeddings",
                        help="embedding cache (shared with make demo)")
    parser.add_argument("--quick", type=int, default=None, metavar="N",
                        help="read at most N rows per source (outcome tables: N x 40 rows): a smoke run")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per training process")
    parser.add_argument("--routellm-pair-budget", type=float, default=5e6,
                        help="RouteLLM MF epochs = min(100, budget / training pairs)")
    parser.add_argument("--reuse-exports", action="store_true",
                        help="score a family's export already in --work when it was trained by this bench on the same "
                             "prepared data (fingerprint checked) instead of training it again; its train time is the "
                             "earlier run's")
    parser.add_argument("--routellm-venv", type=Path, default=None, help="where the routellm venv lives (reused)")
    args = parser.parse_args(argv)
    args.families = [f for f in args.families.split(",") if f]
    args.baselines = [b for b in args.baselines.split(",") if b]
    unknown = ([f for f in args.families if f not in BENCHED_FAMILIES]
               + [b for b in args.baselines if b not in BASELINES])
    if unknown:
        parser.error(f"unknown families/baselines: {unknown} (families: {BENCHED_FAMILIES}; baselines: {BASELINES})")
    if args.routellm_venv is None:
        from bench_mf_vs_routellm import DEFAULT_VENV

        args.routellm_venv = DEFAULT_VENV
    sets = bench_sets(args.data_root)
    wanted = [s for s in args.sets.split(",") if s]
    missing = [s for s in wanted if s not in sets]
    if missing:
        parser.error(f"unknown sets {missing}; known: {', '.join(sets)}")
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in wanted:
        results.append(run_set(sets[name], args, args.work))
        (args.out / "results.json").write_text(json.dumps({"sets": results, "families": args.families,
                                                           "baselines": args.baselines, "quick": args.quick},
                                                          indent=1))
    table = format_rows([row for r in results for row in r["pairs"]])
    (args.out / "results.md").write_text(table + "\n")
    plot(results, args.out / "apgr.png")
    print(table)
    print(f"\nwrote {args.out / 'results.json'}, {args.out / 'results.md'}, {args.out / 'apgr.png'}")
    return results


if __name__ == "__main__":
    main()
