"""A real 2-process CPU run of `embed_texts` (accelerate launch) gives the same matrix as one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _embed_worker import load_prompts

from routerforge.data.config import EncoderConfig
from routerforge.encoders import build_encoder, embed_texts
from routerforge.encoders.cache import EmbeddingCache

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
N_PROMPTS, BATCH_SIZE = 64, 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accelerate_cmd() -> list[str]:
    cli = Path(sys.executable).with_name("accelerate")
    return [str(cli)] if cli.exists() else [sys.executable, "-m", "accelerate.commands.accelerate_cli"]


class _Counting:
    def __init__(self, inner) -> None:
        self.inner, self.texts = inner, 0
        self.encoder_id, self.revision, self.settings = inner.encoder_id, inner.revision, inner.settings

    @property
    def dim(self) -> int:
        return self.inner.dim

    def encode(self, texts):
        self.texts += len(texts)
        return self.inner.encode(texts)


@pytest.mark.slow
def test_two_process_embedding_equals_one_process(tmp_path):
    out_dir, cache_2proc = tmp_path / "out", tmp_path / "cache_2proc"
    env = dict(
        os.environ,
        ACCELERATE_USE_CPU="true",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    # --multi_gpu + ACCELERATE_USE_CPU gives two real CPU processes (`--cpu` alone silently gives one).
    cmd = _accelerate_cmd() + [
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(HERE / "_embed_worker.py"),
        "--out-dir",
        str(out_dir),
        "--cache-dir",
        str(cache_2proc),
        "--n",
        str(N_PROMPTS),
        "--batch-size",
        str(BATCH_SIZE),
        "--expect-world-size",
        "2",
    ]
    run = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    reports = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    # the work was split: both ranks encoded, together each distinct prompt exactly once
    assert all(r["encoded_texts"] > 0 for r in reports)
    assert sum(r["encoded_texts"] for r in reports) == N_PROMPTS
    assert [r["encoded_batches"] for r in reports] == [N_PROMPTS // BATCH_SIZE // 2] * 2
    rank0, rank1 = np.load(out_dir / "rank0.npy"), np.load(out_dir / "rank1.npy")
    assert np.array_equal(rank0, rank1)  # every rank returns the identical full matrix

    # one process, same prompts, own empty cache
    prompts = load_prompts(N_PROMPTS)
    assert rank0.shape == (len(prompts), 384) and rank0.dtype == np.float32
    single = embed_texts(
        prompts, EncoderConfig(cache_dir=str(tmp_path / "cache_1proc"), batch_size=BATCH_SIZE)
    )
    max_diff = float(np.abs(rank0 - single).max())
    print(f"max |2-process - 1-process| = {max_diff:.3e}")
    assert max_diff <= 1e-6, max_diff
    assert np.allclose(rank0, single, atol=1e-6)

    # rank 0 wrote every row to the cache: a re-run over that cache embeds nothing
    assert len(EmbeddingCache(cache_2proc)) == N_PROMPTS
    counting = _Counting(build_encoder(EncoderConfig(cache_dir=str(cache_2proc))))
    again = embed_texts(
        prompts, EncoderConfig(cache_dir=str(cache_2proc), batch_size=BATCH_SIZE), encoder=counting
    )
    assert counting.texts == 0
    assert np.array_equal(again, rank0)
