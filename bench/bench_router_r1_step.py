"""Router-R1 step cost: the PPO recipe vs. the GRPO path (TRL GRPOTrainer) on the same policy, tasks and pool.

    .venv/bin/python bench/bench_router_r1_step.py                          # CPU: tiny random-init Qwen2
    .venv/bin/python bench/bench_router_r1_step.py --shape qwen2.5-0.5b --steps 2 \\
        --rollout-batch-size 16 --max-new-tokens 128 --mixed-precision bf16  # one GPU (issue 6 §6), no Hub needed

The policy is random-init (nothing can be downloaded here): `tiny` is tests/fixtures/tiny_qwen2.py's 2-layer
width-32 model; `qwen2.5-0.5b` has Qwen2.5-0.5B-Instruct's shape (24 layers, hidden 896, 14 heads / 2 KV
heads, MLP 4864, vocab 151,936, tied embeddings; about 494M parameters) with the tiny model's BPE
tokenizer (ids < 400 of the vocabulary are used). Tasks: RouteLLM's recorded GSM8K answers, the recorded
pool (configs/router_r1/tiny.yaml), so no candidate model runs: the numbers are the policy's own cost.
A random policy rarely closes its tags, so episodes run to max_new_tokens: an upper bound per turn.

Both sides do the same amount of work per optimizer step: rl.rollout_batch_size episodes and one update
over them (PPO: mini-batch = whole batch, one epoch; GRPO: the same number of episodes as groups of 2).
PPO also trains a critic and runs a reference forward pass; GRPO's reference is off (beta 0), so the gap
is the price of PPO's critic. Each side runs in a fresh subprocess (peak memory is its own); the
training loop's own `train_loop_seconds` (from the export manifest) is the time.
Peak memory: torch.cuda.max_memory_allocated on a GPU (the recipe's own); peak RSS of the worker on CPU.
Tokens/s: the episodes' response tokens (policy-sampled plus inserted <information> tokens) over the loop time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
PPO_CONFIG = REPO_ROOT / "configs" / "router_r1" / "tiny.yaml"
GRPO_CONFIG = REPO_ROOT / "configs" / "router_r1_grpo" / "tiny.yaml"
QWEN2_5_0_5B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                    tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6)


def build_policy(shape: str, directory: Path) -> Path:
    """A random-init causal LM of `shape` with the tiny fixture's tokenizer, saved to `directory`."""
    from tests.fixtures.tiny_qwen2 import build_tiny_causal_lm

    build_tiny_causal_lm(directory)
    if shape == "tiny":
        return directory
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = Qwen2Config(**QWEN2_5_0_5B, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    return directory


def side_argv(args, algorithm: str, policy: Path, out_dir: str) -> list[str]:
    common = [f"model.policy={policy}", f"run.output_dir={out_dir}", f"run.max_optimizer_steps={args.steps}",
              f"run.mixed_precision='{args.mixed_precision}'", "checkpoint.every_optimizer_steps=0",
              "tracking.report_to=none", "export.registry=false"]
    if algorithm == "ppo":
        return ["--config", str(PPO_CONFIG), *common, "rl.max_prompt_tokens=1024",
                f"rl.rollout_batch_size={args.rollout_batch_size}",
                f"rl.mini_batch_size={args.rollout_batch_size}", f"run.micro_batch_size={args.micro_batch_size}",
                f"rl.max_new_tokens={args.max_new_tokens}", "rl.ppo_epochs=1"]
    return ["--config", str(GRPO_CONFIG), *common, f"grpo.rollout_batch_size={args.rollout_batch_size}",
            f"grpo.mini_batch_size={args.rollout_batch_size}", f"run.micro_batch_size={args.micro_batch_size}",
            f"grpo.max_new_tokens={args.max_new_tokens}", "grpo.num_generations=2", "grpo.beta=0.0"]


def worker(algorithm: str, argv: list[str]) -> None:
    import torch

    from tests.fixtures.recipe_runner import run_recipe_in_process

    result = run_recipe_in_process("train_router_r1" if algorithm == "ppo" else "train_router_r1_grpo", argv)
    manifest = json.loads((Path(result["export_dir"]) / "manifest.json").read_text())
    training = manifest["training"]
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    steps = training.get("ppo_steps", training.get("optimizer_steps"))
    tokens = response_tokens(algorithm, training["history"], int(argv_value(argv, "episodes")), steps)
    print(json.dumps({"algorithm": algorithm, "train_loop_seconds": training["train_loop_seconds"],
                      "optimizer_steps": steps, "peak_memory_bytes": peak,
                      "response_tokens": tokens, "tokens_per_second":
                      tokens / training["train_loop_seconds"] if tokens is not None else None,
                      "device": "cuda" if torch.cuda.is_available() else "cpu"}))


def argv_value(argv: list[str], key: str) -> str:
    """The episodes per step this side was given (rl.rollout_batch_size or grpo.rollout_batch_size)."""
    return next(a.split("=", 1)[1] for a in argv if a.split("=", 1)[0].endswith(".rollout_batch_size"))


def response_tokens(algorithm: str, history: list[dict], episodes_per_step: int, steps: int) -> int | None:
    """Tokens of the episodes' responses over the run: what the policy sampled plus the inserted <information>
    blocks (PPO's history counts both per step; TRL logs GRPO's mean completion length, which holds both)."""
    if algorithm == "ppo":
        return sum(h["policy_tokens"] + h["env_tokens"] for h in history)
    lengths = [h["completions/mean_length"] for h in history if "completions/mean_length" in h]
    if not lengths:
        return None
    return round(sum(lengths) / len(lengths) * episodes_per_step * steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("tiny", "qwen2.5-0.5b"), default="tiny")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per side")
    parser.add_argument("--rollout-batch-size", type=int, default=4, help="episodes per step")
    parser.add_argument("--micro-batch-size", type=int, default=2, help="episodes per forward pass")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="tokens per turn")
    parser.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-argv", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, json.loads(args.worker_argv))
        return
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-r1-") as tmp:
        policy = build_policy(args.shape, Path(tmp) / "policy")
        for algorithm in ("ppo", "grpo"):
            argv = side_argv(args, algorithm, policy, str(Path(tmp) / algorithm))
            proc = subprocess.run([sys.executable, __file__, "--worker", algorithm, "--worker-argv", json.dumps(argv)],
                                  cwd=REPO_ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{algorithm} side failed:\n{proc.stderr[-3000:]}")
            results[algorithm] = json.loads(proc.stdout.strip().splitlines()[-1])
    ppo, grpo = results["ppo"], results["grpo"]
    per_step = {k: v["train_loop_seconds"] / max(v["optimizer_steps"], 1) for k, v in results.items()}
    print(f"shape={args.shape} device={ppo['device']} episodes/step={args.rollout_batch_size} "
          f"max_new_tokens/turn={args.max_new_tokens} steps={args.steps} mixed_precision={args.mixed_precision}")
    for name, result in results.items():
        rate = f"{result['tokens_per_second']:9.1f} tokens/s" if result["tokens_per_second"] is not None else ""
        print(f"  {name:5s} {per_step[name]:8.2f} s/step  peak memory {result['peak_memory_bytes'] / 2**30:6.2f} GiB"
              f"  {rate}")
    print(f"  PPO / GRPO time per step: {per_step['ppo'] / per_step['grpo']:.2f}x   "
          f"memory: {ppo['peak_memory_bytes'] / grpo['peak_memory_bytes']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "seconds_per_step": per_step},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
