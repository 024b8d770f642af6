#!/usr/bin/env bash
# One prepared GPU check (bench/gpu_checks.py holds the steps, their caps and what each records).
#   bench/gpu_checks.sh              on a machine with an NVIDIA GPU; carry .whl/ and .gpu-data/ (make gpu-carry)
#   bench/gpu_checks.sh --dry-run    the same steps on CPU at tiny size
# Results: $OUT if set, else bench/results/gpu_checks. PYTHON picks the interpreter (default: python3).
set -uo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -u bench/gpu_checks.py "$@"
