"""MF router training: RouterForge's recipe vs the routellm package's own training loop, same data (issue 3 §8).

    .venv/bin/python bench/bench_mf_vs_routellm.py                         # RouteLLM's 100 epochs, seeds 42 43 44
    .venv/bin/python bench/bench_mf_vs_routellm.py --epochs 3 --seeds 42    # smoke run (~1 min once the venv exists)
    .venv/bin/python bench/bench_mf_vs_routellm.py --explain                # + where our per-step time goes
    .venv/bin/python bench/bench_mf_vs_routellm.py --json bench/results/mf_vs_routellm.json --remove-venv

Baseline: routellm 0.2.0 from PyPI, installed by this script into its own venv (default
/tmp/routerforge-bench/routellm-0.2.0-venv; reused by later runs when its stamp file matches, deleted by
--remove-venv). Install: `pip install torch==2.13.0 numpy pandas scikit-learn tqdm openai huggingface_hub`,
then `pip install --no-deps routellm==0.2.0`: routellm's declared requirements also pull litellm,
transformers and datasets, which its MF training module never imports (model.py imports huggingface_hub
and, through similarity_weighted/utils.py, openai, pandas and scikit-learn). torch is pinned in the same
command that pulls it (the CPU wheel on this machine's disk). bench/_routellm_mf_worker.py then drives
RouteLLM's own `PairwiseDataset`, `MFModel_Train`, `train_loops` and `evaluator` in that venv; its
docstring lists exactly what replicates RouteLLM's `__main__` block and what differs (model-id table, split).

Ours: `training/train_mf.py --config configs/mf/default.yaml` (the recipe users run, RouteLLM's paper
settings: dim 128, projection, noise 0.1, Adam lr 3e-4, weight decay 1e-5, batch 64) as a subprocess,
with `loss.use_source_weights=false` (RouteLLM has no per-pair weights), `loss.ties=drop` (its filter),
no step checkpoints, no tracker, evaluation only after the loop, no early stopping. `--ours-overrides`
appends key=value overrides for our side only (e.g. the default config's batch 4096, lr 1e-2 and early
stopping, against RouteLLM's paper settings); `--eval-sets/--strong/--weak` pick the held-out tables and
the routed pair (e.g. an MMLU-Pro table: `--eval-sets ori_mmlu --strong gpt-4o --weak
Meta-Llama-3_1-8B-Instruct`). With early stopping, "per epoch" is ours' loop time over the epochs it trained.

Same inputs on both sides: the prepared dataset's train pairs (RouteLLM gets them as its
pairwise_data.json: model_a, model_b, winner, idx), its validation pairs as the test set, the stored
prompt embeddings (one .npy matrix; the recipe reads the same vectors from the dataset), the same epochs,
seed, batch size and torch threads (--threads, default 1: steadier on a shared machine). The bench
checks that both sides train on the same number of pairs.

Timing, startup excluded:
  * ours: the recipe's own `train_loop_seconds` (manifest) / epochs: its whole loop with logging, no
    import, data loading, final evaluation or export. The recipe builds its Adam before that timer.
  * RouteLLM: the worker stamps entry and exit of the `evaluator` that `train_loops` calls after each
    epoch; epoch k = entry(k) - exit(k-1), evaluation excluded. Its epoch 0 also holds the Adam that
    `train_loops` builds, and torch.optim.Optimizer's constructor imports torch._dynamo (~2 s, once per
    process; ours pays it before its timer). So "per epoch" for RouteLLM = mean of epochs 1..E-1, and its
    epoch 0 is shown apart; "loop" columns include it on both sides.
  * wall: the whole subprocess (imports, data, training, export / scoring).
  * peak RSS: ru_maxrss of the training process, read by a tiny launcher process that starts it and
    waits for it (os.wait4 from this bench would report max(this process's RSS, the child's): Linux
    carries the pre-exec RSS of a forked child into its ru_maxrss).
Runs alternate ours / RouteLLM per seed; times are medians over seeds. The machine may be shared with
other jobs: trust the ratios measured side by side in one run more than the absolute numbers.

Quality: each trained router scores the held-out eval sets of the dataset (eval/mmlu.jsonl,
eval/gsm8k.jsonl, eval/mt_bench.jsonl; long outcome tables) with P(strong beats weak | q), strong =
gpt-4-1106-preview, weak = Mixtral-8x7B-Instruct (RouteLLM's pair), on the same embeddings of the eval
prompts (the dataset's encoder, through the embedding cache). APGR via routerforge.eval.binary (exact
curve; RouteLLM's 10-point trapezoid estimates the same integral). Random = 0.5; oracle from the outcomes.

--explain: where our per-step time went in the DataLoader-based loop the recipe used before its
tensor-batch loop (routerforge/train/tensor_batches.py); kept to show what each change bought. In
this process, on the same pairs, it times one epoch of
(a) a bare PyTorch loop like RouteLLM's (our MFModel, DataLoader over the pair tensors, Adam), and
(b) a replica of train_mf.py's step (accelerate.prepare'd model/optimizer/loader/scheduler,
`accelerator.accumulate`, source-weighted BCE, nan_guard, backward, step, loss window, scheduler step),
then (b) with one change after another: accelerate's `is_lomo_available` cached (AcceleratedOptimizer.step
calls it twice per step; each call is an importlib.util.find_spec file-system scan of sys.path), a
whole-batch `__getitems__` gather instead of per-sample indexing + default_collate, a local isfinite check
when there is one process, and one classifier call on (v_a - v_b) ⊙ Wq instead of two. Rounds are
interleaved; medians of CPU time (time.process_time) and wall time per epoch. Compare R0's wall time
with the recipe's own steady epoch time in the table, to check the replica.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
WORKER = REPO_ROOT / "bench" / "_routellm_mf_worker.py"
ROUTELLM_VERSION = "0.2.0"
TORCH_PIN = "torch==2.13.0"
# What routellm/routers/matrix_factorization/{model,train_matrix_factorization}.py import (see docstring).
ROUTELLM_MF_DEPS = ["numpy", "pandas", "scikit-learn", "tqdm", "openai", "huggingface_hub"]
DEFAULT_VENV = Path(tempfile.gettempdir()) / "routerforge-bench" / f"routellm-{ROUTELLM_VERSION}-venv"
EVAL_SETS = ("mmlu", "gsm8k", "mt_bench")
STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
# RouteLLM's train_matrix_factorization.py __main__ constants = configs/mf/default.yaml.
HYPERPARAMETERS = {"dim": 128, "batch_size": 64, "alpha": 0.1, "use_proj": True, "lr": 3e-4, "weight_decay": 1e-5}
# Starts the command in argv[2:], waits for it, writes its exit status and ru_maxrss (KiB) to argv[1].
LAUNCHER = ("import json, os, subprocess, sys\n"
            "p = subprocess.Popen(sys.argv[2:])\n"
            "_, status, usage = os.wait4(p.pid, 0)\n"
            "code = os.waitstatus_to_exitcode(status)\n"
            "open(sys.argv[1], 'w').write(json.dumps({'exit': code, 'maxrss_kib': usage.ru_maxrss,"
            " 'cpu_seconds': usage.ru_utime + usage.ru_stime}))\n"
            "sys.exit(code)\n")


# --------------------------------------------------------------------------------------------------
# The routellm venv
# --------------------------------------------------------------------------------------------------
def ensure_routellm_venv(venv: Path) -> Path:
    """The venv's python, creating the venv and installing routellm (see module docstring) if needed."""
    python = venv / "bin" / "python"
    stamp = venv / "routerforge-bench-stamp.json"
    wanted = {"routellm": ROUTELLM_VERSION, "torch": TORCH_PIN, "deps": ROUTELLM_MF_DEPS}
    if python.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return python
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    base_python = getattr(sys, "_base_executable", sys.executable)
    print(f"creating {venv} and installing routellm=={ROUTELLM_VERSION} (a few minutes, once)", flush=True)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(pip + [TORCH_PIN, *ROUTELLM_MF_DEPS], check=True)
    subprocess.run(pip + ["--no-deps", f"routellm=={ROUTELLM_VERSION}"], check=True)
    stamp.write_text(json.dumps(wanted))
    return python


# --------------------------------------------------------------------------------------------------
# Shared inputs
# --------------------------------------------------------------------------------------------------
def encoder_config_of(data):
    """The EncoderConfig the dataset was prepared with (its config.yaml), to embed the eval prompts alike."""
    import yaml

    from routerforge.data.config import EncoderConfig

    block = yaml.safe_load((data.path / "config.yaml").read_text(encoding="utf-8"))["encoder"]
    return EncoderConfig(**block)


def build_inputs(data_path: Path, work: Path, eval_set_names: list[str], strong: str, weak: str) -> dict:
    """Write the embedding matrix and RouteLLM's pair files; return the eval columns and rows."""
    import numpy as np

    from routerforge.data.dataset_io import load_prepared
    from routerforge.data.pair_tensors import prompt_embedding_matrix
    from routerforge.encoders import build_encoder, embed_texts, encoder_manifest
    from routerforge.eval.outcome_table import load_outcome_table, strong_weak_columns

    data = load_prepared(data_path)
    prompt_row, train_matrix = prompt_embedding_matrix(data)
    encoder_cfg = encoder_config_of(data)
    encoder = build_encoder(encoder_cfg)
    if encoder_manifest(encoder)["id"] != data.encoder["id"]:
        raise SystemExit(f"{data.path}: encoder {data.encoder['id']} is not the one its config.yaml builds")

    eval_sets, blocks, next_row = {}, [train_matrix.numpy()], train_matrix.shape[0]
    for name in eval_set_names:
        cols = strong_weak_columns(load_outcome_table(data.path / "eval" / f"{name}.jsonl"), strong, weak)
        emb = embed_texts(list(cols.prompts), encoder_cfg, encoder=encoder)
        blocks.append(emb)
        eval_sets[name] = {"rows": list(range(next_row, next_row + len(emb))), "embeddings": emb,
                           "weak": cols.weak_scores, "strong": cols.strong_scores}
        next_row += len(emb)
    np.save(work / "prompt_embeddings.npy", np.concatenate(blocks).astype(np.float32))

    def routellm_pairs(split: str) -> Path:
        table = data.pairs[split]
        names = table.features["winner"].names
        rows = [{"model_a": a, "model_b": b, "winner": names[w], "idx": prompt_row[pid]}
                for pid, a, b, w in zip(table["prompt_id"], table["model_a"], table["model_b"], table["winner"],
                                        strict=True)]
        path = work / f"pairwise_data_{split}.json"
        path.write_text(json.dumps(rows))
        return path

    return {"data": data, "eval_sets": eval_sets, "npy": work / "prompt_embeddings.npy",
            "train_json": routellm_pairs("train"), "test_json": routellm_pairs("validation")}


# --------------------------------------------------------------------------------------------------
# One run of each side
# --------------------------------------------------------------------------------------------------
def run_child(cmd: list[str], log: Path, threads: int) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one subprocess, started through LAUNCHER; raise on failure."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           # routellm imports similarity_weighted/utils.py, which builds an OpenAI client at import time;
           # it is never used (no request is made). A placeholder, not a credential.
           "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "unused-by-this-benchmark")}
    usage_path = log.with_suffix(".usage.json")
    started = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(usage_path), *cmd], cwd=REPO_ROOT,
                              stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.perf_counter() - started
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed (exit {code}); log {log}:\n{tail}")
    return wall, json.loads(usage_path.read_text())["maxrss_kib"] * 1024


def run_ours(inputs: dict, work: Path, seed: int, epochs: int, threads: int, overrides: list[str]) -> dict:
    import numpy as np
    import torch

    from routerforge.io.safetensors_file import load_export_weights
    from routerforge.models.mf import MFModel

    name = f"bench-s{seed}"
    out_dir = work / "ours"
    cmd = [sys.executable, "training/train_mf.py", "--config", "configs/mf/default.yaml",
           f"data.path={inputs['data'].path}", f"run.output_dir={out_dir}", f"run.name={name}",
           f"run.seed={seed}", f"run.epochs={epochs}", f"run.micro_batch_size={HYPERPARAMETERS['batch_size']}",
           f"model.model_embedding_dim={HYPERPARAMETERS['dim']}", f"model.prompt_noise_std={HYPERPARAMETERS['alpha']}",
           f"optim.lr={HYPERPARAMETERS['lr']}", f"optim.weight_decay={HYPERPARAMETERS['weight_decay']}",
           "loss.use_source_weights=false", "loss.ties=drop", "run.eval_every_optimizer_steps=0",
           "run.early_stopping_patience_evals=0", "run.time_budget_minutes=null",
           "run.progress_bar=false", "tracking.report_to=none", "checkpoint.every_optimizer_steps=0", *overrides]
    wall, rss = run_child(cmd, work / f"ours-s{seed}.log", threads)
    export_dir = out_dir / "mf" / name / "final"
    manifest = json.loads((export_dir / "manifest.json").read_text())
    config = json.loads((export_dir / "config.json").read_text())
    pool = config["model_pool"]
    model = MFModel.from_config(config)
    model.load_state_dict(load_export_weights(export_dir))
    model.eval()
    scores = {}
    for set_name, ev in inputs["eval_sets"].items():
        n = len(ev["rows"])
        strong = torch.full((n,), pool.index(inputs["strong"]), dtype=torch.int64)
        weak = torch.full((n,), pool.index(inputs["weak"]), dtype=torch.int64)
        scores[set_name] = model.win_probability(strong, weak, torch.from_numpy(np.asarray(ev["embeddings"]))).tolist()
    training = manifest["training"]
    loop = training["train_loop_seconds"]
    # Epochs actually trained: early stopping or run.max_optimizer_steps may end the run before `epochs`.
    epochs_trained = training["optimizer_steps"] / training["optimizer_steps_per_epoch"]
    return {"epoch_seconds": loop / epochs_trained, "first_epoch_seconds": None, "loop_seconds": loop,
            "epochs_trained": epochs_trained, "steps_per_epoch": training["optimizer_steps_per_epoch"],
            "micro_batch_size": manifest["config"]["run"]["micro_batch_size"],
            "wall_seconds": wall, "peak_rss_bytes": rss, "train_pairs": manifest["data"]["train_pairs"],
            "optimizer_steps": training["optimizer_steps"],
            "val_accuracy": manifest["metrics"].get("validation_accuracy"),
            "val_loss": manifest["metrics"].get("validation_loss"), "scores": scores}


def run_routellm(python: Path, inputs: dict, work: Path, seed: int, epochs: int, threads: int) -> dict:
    spec = {"embeddings_npy": str(inputs["npy"]), "train_pairs": str(inputs["train_json"]),
            "test_pairs": str(inputs["test_json"]), "model_pool": inputs["data"].models, "seed": seed,
            "torch_threads": threads, "hyperparameters": {**HYPERPARAMETERS, "num_epochs": epochs},
            "strong_model": inputs["strong"], "weak_model": inputs["weak"],
            "score_rows": {name: ev["rows"] for name, ev in inputs["eval_sets"].items()}}
    spec_path, out_path = work / f"routellm-spec-s{seed}.json", work / f"routellm-out-s{seed}.json"
    spec_path.write_text(json.dumps(spec))
    wall, rss = run_child([str(python), str(WORKER), str(spec_path), str(out_path)],
                          work / f"routellm-s{seed}.log", threads)
    out = json.loads(out_path.read_text())
    per_epoch = out["epoch_train_seconds"]
    steady = per_epoch[1:] or per_epoch  # epoch 0 holds Adam's construction (torch._dynamo import)
    return {"epoch_seconds": statistics.mean(steady), "first_epoch_seconds": per_epoch[0],
            "epochs_trained": len(per_epoch),
            "loop_seconds": sum(per_epoch), "wall_seconds": wall, "peak_rss_bytes": rss,
            "train_pairs": out["train_pairs"], "val_accuracy": out["final_test_accuracy"],
            "val_loss": out["final_test_loss"], "scores": out["scores"],
            "eval_seconds_per_epoch": statistics.mean(out["epoch_eval_seconds"]),
            "versions": {"routellm": out["routellm_version"], "torch": out["torch_version"]}}


# --------------------------------------------------------------------------------------------------
# --explain: where the recipe's per-step time goes (see module docstring)
# --------------------------------------------------------------------------------------------------
def explain(data_path: Path, epochs_per_round: int, rounds: int) -> list[tuple[str, float, float]]:
    """[(variant, median CPU ms per epoch, median wall ms per epoch)] over interleaved rounds."""
    import accelerate.optimizer
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator

    from routerforge.data.dataset_io import load_prepared
    from routerforge.data.pair_tensors import pairs_to_tensors, prompt_embedding_matrix
    from routerforge.models.mf import MFModel
    from routerforge.train import faults, nan_guard
    from routerforge.train.data_loading import batches_for_epoch, build_train_loader
    from routerforge.train.optimization import build_lr_scheduler
    from routerforge.train.run_config import OptimConfig

    data = load_prepared(data_path)
    prompt_row, embeddings = prompt_embedding_matrix(data)
    pairs = pairs_to_tensors(data.pairs["train"], {m: i for i, m in enumerate(data.models)}, prompt_row, "drop",
                             use_source_weights=False)
    optim_cfg = OptimConfig(name="adam", lr=HYPERPARAMETERS["lr"], weight_decay=HYPERPARAMETERS["weight_decay"])
    batch, noise = HYPERPARAMETERS["batch_size"], HYPERPARAMETERS["alpha"]

    class BatchGatherPairs(torch.utils.data.TensorDataset):
        def __getitems__(self, indices):  # torch's fetcher: one gather per column for the whole batch
            index = torch.tensor(indices)
            return tuple(t[index] for t in self.tensors)

    class OneClassifierCallMF(MFModel):  # w·((v_a/|v_a| − v_b/|v_b|) ⊙ Wq): the same logit, one classifier call
        def forward(self, model_a, model_b, prompt_embeddings, noise_std=0.0):
            projected = self.project_prompts(prompt_embeddings, noise_std)
            diff = F.normalize(self.P(model_a), p=2, dim=-1) - F.normalize(self.P(model_b), p=2, dim=-1)
            return self.classifier(diff * projected).squeeze(-1)

    def loader(gather: bool):
        if gather:
            return build_train_loader(BatchGatherPairs(*pairs.dataset().tensors), batch, 0, collate_fn=lambda b: b)
        return build_train_loader(torch.utils.data.TensorDataset(*pairs.dataset().tensors), batch, 0)  # per sample

    def bare_loop(gather: bool):
        model = MFModel(len(data.models), embeddings.shape[1], HYPERPARAMETERS["dim"])
        optimizer = torch.optim.Adam(model.parameters(), lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)
        train_loader = loader(gather)

        def epoch():
            for model_a, model_b, rows, target, _ in train_loader:
                loss = F.binary_cross_entropy_with_logits(model(model_a, model_b, embeddings[rows], noise_std=noise),
                                                          target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return epoch

    def recipe_step(gather=False, local_isfinite=False, one_classifier_call=False):
        accelerator = Accelerator(cpu=True, step_scheduler_with_optimizer=False)
        model_cls = OneClassifierCallMF if one_classifier_call else MFModel
        model = model_cls(len(data.models), embeddings.shape[1], HYPERPARAMETERS["dim"])
        optimizer = torch.optim.Adam(model.parameters(), lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, loader(gather))
        scheduler = accelerator.prepare(build_lr_scheduler(optimizer, optim_cfg, 10**9))
        guard = nan_guard.guard_for_run(100)
        state = {"epoch": 0, "step": 0, "window": torch.zeros(2)}

        def epoch():
            for model_a, model_b, rows, target, weight in batches_for_epoch(accelerator, train_loader,
                                                                           state["epoch"], 0):
                with accelerator.accumulate(model):
                    logits = model(model_a, model_b, embeddings[rows], noise_std=noise)
                    per_pair = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
                    loss = (per_pair * weight).sum() / weight.sum()
                    allowed = (bool(torch.isfinite(loss)) if local_isfinite
                               else nan_guard.update_allowed(guard, accelerator, loss, state["step"] + 1))
                    if allowed:
                        accelerator.backward(loss)
                        optimizer.step()
                        state["window"] += torch.stack([loss.detach().float(), torch.ones(())])
                    optimizer.zero_grad()
                nan_guard.close_optimizer_step(guard)
                scheduler.step()
                state["step"] += 1
                faults.maybe_hang(Path("."), state["step"], 0)
            state["epoch"] += 1
        return epoch

    lomo_check = accelerate.optimizer.is_lomo_available
    variants = [  # (label, epoch function, cache accelerate's is_lomo_available)
        ("bare loop like RouteLLM's (our MFModel, per-sample DataLoader)", bare_loop(False), False),
        ("bare loop, whole-batch __getitems__ gather", bare_loop(True), False),
        ("R0 train_mf.py step (replica)", recipe_step(), False),
        ("R1 = R0 + is_lomo_available cached", recipe_step(), True),
        ("R2 = R1 + whole-batch __getitems__ gather", recipe_step(gather=True), True),
        ("R3 = R2 + local isfinite (1 process)", recipe_step(gather=True, local_isfinite=True), True),
        ("R4 = R3 + one classifier call", recipe_step(True, True, True), True),
    ]
    cpu_ms: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    wall_ms: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    try:
        for _, epoch, cached in variants:  # warm-up epoch each
            accelerate.optimizer.is_lomo_available = (lambda: False) if cached else lomo_check
            epoch()
        for _ in range(rounds):
            for label, epoch, cached in variants:
                accelerate.optimizer.is_lomo_available = (lambda: False) if cached else lomo_check
                cpu_started, wall_started = time.process_time(), time.perf_counter()
                for _ in range(epochs_per_round):
                    epoch()
                cpu_ms[label].append((time.process_time() - cpu_started) / epochs_per_round * 1e3)
                wall_ms[label].append((time.perf_counter() - wall_started) / epochs_per_round * 1e3)
    finally:
        accelerate.optimizer.is_lomo_available = lomo_check
    return [(label, statistics.median(cpu_ms[label]), statistics.median(wall_ms[label])) for label in cpu_ms]


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
def apgr_of(scores: list[float], ev: dict) -> float:
    from routerforge.eval.binary import binary_report

    return binary_report(scores, ev["weak"], ev["strong"], n_bootstrap=0).router.apgr


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def report(inputs: dict, runs: dict, args: argparse.Namespace) -> dict:
    from routerforge.eval.binary import binary_report

    ours, theirs = runs["ours"], runs["routellm"]

    def med(side, key):
        return statistics.median(r[key] for r in side)

    steps = ours[0]["steps_per_epoch"]
    their_steps = -(-theirs[0]["train_pairs"] // HYPERPARAMETERS["batch_size"])
    lines = [
        f"MF training: RouterForge training/train_mf.py vs routellm {theirs[0]['versions']['routellm']} train_loops "
        f"(torch {theirs[0]['versions']['torch']} both), CPU, torch threads {args.threads}",
        f"data {inputs['data'].path}: {ours[0]['train_pairs']} decisive train pairs (ours {steps} batches of "
        f"{ours[0]['micro_batch_size']}, routellm {their_steps} batches of {HYPERPARAMETERS['batch_size']} per "
        f"epoch), validation pairs as the test set",
        f"epochs {args.epochs} (ours trained {statistics.median(r['epochs_trained'] for r in ours):g}); "
        f"ours' overrides: {' '.join(args.ours_overrides) or 'none (paper settings)'}; seeds "
        f"{' '.join(map(str, args.seeds))} (times: median over seeds; quality: mean ± std over seeds)",
        "",
        f"{'':44}{'ours':>16}{'routellm':>16}{'routellm/ours':>15}   (> 1: ours faster / smaller)",
    ]
    rows = {}
    for key, label, scale, fmt in (
            ("epoch_seconds", "train time per epoch, steady (ms)", 1e3, "{:.2f}"),
            ("loop_seconds", f"training loop, {args.epochs} epochs (s)", 1.0, "{:.3f}"),
            ("wall_seconds", "process wall, incl. startup (s)", 1.0, "{:.2f}"),
            ("peak_rss_bytes", "peak RSS of the training process (MiB)", 1 / 2**20, "{:.0f}")):
        o, t = med(ours, key) * scale, med(theirs, key) * scale
        rows[key] = {"ours": o, "routellm": t, "ratio_routellm_over_ours": t / o}
        lines.append(f"{label:44}{fmt.format(o):>16}{fmt.format(t):>16}{t / o:>14.2f}x")
    o_rate, t_rate = steps / med(ours, "epoch_seconds"), their_steps / med(theirs, "epoch_seconds")
    rows["optimizer_steps_per_second"] = {"ours": o_rate, "routellm": t_rate}
    lines.append(f"{'optimizer steps/s, steady':44}{o_rate:>16.0f}{t_rate:>16.0f}")
    lines.append(f"{'  routellm epoch 0 (+ Adam -> torch._dynamo)':44}{'-':>16}"
                 f"{med(theirs, 'first_epoch_seconds') * 1e3:>16.1f}  ms")
    lines.append(f"{'  routellm eval after each epoch (excluded)':44}{'-':>16}"
                 f"{med(theirs, 'eval_seconds_per_epoch') * 1e3:>16.2f}  ms")
    lines.append(f"{'validation pair accuracy':44}{mean_std([r['val_accuracy'] for r in ours]):>16}"
                 f"{mean_std([r['val_accuracy'] for r in theirs]):>16}")
    lines.append("")
    lines.append(f"{'APGR, strong ' + inputs['strong'] + ' / weak ' + inputs['weak']:44}{'ours':>16}{'routellm':>16}"
                 f"{'random':>8}{'oracle':>8}{'n':>6}")
    quality = {}
    for name, ev in inputs["eval_sets"].items():
        a_o = [apgr_of(r["scores"][name], ev) for r in ours]
        a_t = [apgr_of(r["scores"][name], ev) for r in theirs]
        ref = binary_report(ours[0]["scores"][name], ev["weak"], ev["strong"], n_bootstrap=0)
        quality[name] = {"ours": a_o, "routellm": a_t, "random": ref.random.apgr, "oracle": ref.oracle.apgr,
                         "n_prompts": ref.n_prompts, "weak_mean": ref.weak_mean, "strong_mean": ref.strong_mean}
        lines.append(f"{'  ' + name:44}{mean_std(a_o):>16}{mean_std(a_t):>16}{ref.random.apgr:>8.3f}"
                     f"{ref.oracle.apgr:>8.3f}{ref.n_prompts:>6}")
    print("\n".join(lines), flush=True)
    return {"speed_memory": rows, "apgr": quality, "lines": lines}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data" / "processed" / "demo",
                        help="prepared dataset (a version dir or its parent with LATEST); needs "
                             "eval/{mmlu,gsm8k,mt_bench}.jsonl")
    parser.add_argument("--epochs", type=int, default=100, help="epochs per run (RouteLLM: 100)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="one run of each side per seed")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on both sides")
    parser.add_argument("--eval-sets", nargs="+", default=list(EVAL_SETS),
                        help="held-out outcome tables of the dataset (eval/<name>.jsonl) to compute APGR on")
    parser.add_argument("--strong", default=STRONG, help="strong model of the routed pair (APGR)")
    parser.add_argument("--weak", default=WEAK, help="weak model of the routed pair (APGR)")
    parser.add_argument("--ours-overrides", nargs="*", default=[],
                        help="extra key=value overrides for our recipe only (e.g. its default batch and lr; "
                             "routellm keeps the paper settings); they win over the paper settings")
    parser.add_argument("--explain", action="store_true", help="also time the recipe's step piece by piece")
    parser.add_argument("--explain-rounds", type=int, default=9, help="interleaved rounds of --explain")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="where the routellm venv lives (reused)")
    parser.add_argument("--remove-venv", action="store_true", help="delete the routellm venv at the end")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep run files here (default: a temp dir, removed)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.threads < 1 or args.explain_rounds < 1:
        parser.error("--epochs, --threads and --explain-rounds must be >= 1")
    data_path = args.data if args.data.is_absolute() else REPO_ROOT / args.data
    if not (data_path / "LATEST").is_file() and not (data_path / "manifest.json").is_file():
        raise SystemExit(f"{data_path}: no prepared dataset; build it with "
                         f"`.venv/bin/python -m routerforge.cli prep --config configs/data/demo.yaml`")

    python = ensure_routellm_venv(args.venv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-mf-routellm-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        inputs = {**build_inputs(data_path, work, args.eval_sets, args.strong, args.weak),
                  "strong": args.strong, "weak": args.weak}
        runs = {"ours": [], "routellm": []}
        for i, seed in enumerate(args.seeds):
            # Alternate which side goes first, so slow drift of a shared machine hits both alike.
            order = ("ours", "routellm") if i % 2 == 0 else ("routellm", "ours")
            for side in order:
                result = (run_ours(inputs, work, seed, args.epochs, args.threads, args.ours_overrides) if side == "ours"
                          else run_routellm(python, inputs, work, seed, args.epochs, args.threads))
                runs[side].append(result)
                print(f"seed {seed} {side}: {result['epoch_seconds'] * 1e3:.2f} ms/epoch, loop "
                      f"{result['loop_seconds']:.2f} s, wall {result['wall_seconds']:.1f} s, "
                      f"{result['train_pairs']} pairs", flush=True)
            if runs["ours"][-1]["train_pairs"] != runs["routellm"][-1]["train_pairs"]:
                raise SystemExit(f"train pairs differ: ours {runs['ours'][-1]['train_pairs']}, routellm "
                                 f"{runs['routellm'][-1]['train_pairs']}; the two sides must see the same pairs")
        print()
        result = report(inputs, runs, args)
        explained = []
        if args.explain:
            import torch

            torch.set_num_threads(args.threads)
            explained = explain(data_path, epochs_per_round=5, rounds=args.explain_rounds)
            print(f"\n--explain: time per epoch in this process, median of {args.explain_rounds} interleaved rounds "
                  f"of 5 epochs")
            print(f"  {'':66}{'CPU ms':>9}{'wall ms':>9}")
            for label, cpu, wall in explained:
                print(f"  {label:66}{cpu:9.2f}{wall:9.2f}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "args": {k: str(v) for k, v in vars(args).items()}, "speed_memory": result["speed_memory"],
                "apgr": result["apgr"], "explain_cpu_ms_per_epoch": [
                    {"variant": label, "cpu_ms": cpu, "wall_ms": wall} for label, cpu, wall in explained],
                "runs": {s: [{k: v for k, v in r.items() if k != "scores"} for r in rs] for s, rs in runs.items()},
            }, indent=2))
        return result
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
        if args.remove_venv:
            shutil.rmtree(args.venv, ignore_errors=True)


if __name__ == "__main__":
    main()
