"""Data-prep stage 'hidden_states': run an LM over a prepared dataset's prompts and store, per layer, pooled
hidden states (+ token log-probs, option logits, verbalized confidence for causal LMs) as resumable
safetensors shards. See routerforge/data/hidden_states.py for what is stored and where.

    python data_prep/hidden_states.py --config configs/probe/default.yaml [features.key=value ...]
    accelerate launch --config_file launch/accelerate/cpu_2proc.yaml data_prep/hidden_states.py --config ...
    accelerate launch --config_file launch/accelerate/single_gpu.yaml data_prep/hidden_states.py \
        --config configs/probe/qwen2_5_0_5b.yaml

The config is a probe recipe file (its `features:` section is read) or a file holding that section alone.
Re-running resumes: complete shards are kept, missing ones are computed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from routerforge.data.hidden_states import load_stage_config, run_hidden_states
from routerforge.errors import RouterForgeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="YAML: a probe recipe config or a features section")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. features.lm.model=Qwen/Qwen2.5-0.5B")
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = load_stage_config(args.config, args.overrides)
        result = run_hidden_states(cfg, progress=not args.no_progress)
    except RouterForgeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    print(f"hidden states: {result.output_dir} ({result.shards_total} shards; this process computed "
          f"{len(result.shards_computed)}, kept {len(result.shards_skipped)} complete ones; "
          f"{result.world_size} process(es))", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
