#!/usr/bin/env bash
# Start one node's share of a multi-node RouterForge run. The sbatch scripts run it once per node (srun,
# one task per node); it also runs by hand, or on one machine (tests/unit/train/test_launch_configs.py
# runs it on CPU with 2 processes, both launchers).
#
#   LAUNCHER=accelerate|torchrun  NNODES=2 NODE_RANK=0 GPUS_PER_NODE=8 MASTER_ADDR=host0 MASTER_PORT=29500 \
#   RECIPE=training/train_difficulty.py CONFIG=configs/difficulty/default.yaml \
#   launch/slurm/node_launch.sh [key=value overrides ...]
#
# Under SLURM, NNODES / NODE_RANK default to SLURM_NNODES / SLURM_NODEID. Every run passes resume=auto
# (unless an override sets resume): a requeued or restarted job continues from the newest COMPLETE step
# checkpoint of its run directory, and a new run starts fresh. run.output_dir must be on a filesystem
# every node shares.
set -euo pipefail

LAUNCHER=${LAUNCHER:-accelerate}
NNODES=${NNODES:-${SLURM_NNODES:-1}}
NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
RECIPE=${RECIPE:?set RECIPE, e.g. training/train_difficulty.py}
CONFIG=${CONFIG:?set CONFIG, e.g. configs/difficulty/default.yaml}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-launch/accelerate/multinode_2x8.yaml}
PYTHON=${PYTHON:-python}

cd "$(dirname "$0")/../.."   # the repository root: configs and launch/ paths are relative to it

overrides=("$@")
case " ${overrides[*]-} " in
  *" resume="*) ;;
  *) overrides+=("resume=auto") ;;
esac

case "$LAUNCHER" in
  accelerate)
    # The YAML holds the hardware shape; the per-node values come from the scheduler.
    exec "$PYTHON" -m accelerate.commands.launch --config_file "$ACCELERATE_CONFIG" \
      --num_machines "$NNODES" --num_processes $((NNODES * GPUS_PER_NODE)) --machine_rank "$NODE_RANK" \
      --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" \
      "$RECIPE" --config "$CONFIG" "${overrides[@]}"
    ;;
  torchrun)
    # c10d rendezvous: the nodes may start in any order; the run id keeps two jobs' rendezvous apart.
    exec "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" \
      --node_rank "$NODE_RANK" --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \
      --rdzv_id "${SLURM_JOB_ID:-routerforge}" \
      "$RECIPE" --config "$CONFIG" "${overrides[@]}"
    ;;
  *)
    echo "error: LAUNCHER must be accelerate or torchrun, got '$LAUNCHER'" >&2
    exit 2
    ;;
esac
