"""Train RouteLLM's own MF router with RouteLLM's own training loop; run INSIDE the routellm venv.

    <routellm-venv>/bin/python bench/_routellm_mf_worker.py SPEC.json OUT.json

Started by bench/bench_mf_vs_routellm.py, which writes SPEC.json: the prompt-embedding matrix (.npy),
the train / test pairs in RouteLLM's pairwise_data.json format ({"model_a", "model_b", "winner",
"idx"}; idx = row of the matrix), the model pool, the hyperparameters and the eval rows to score.
This file imports nothing from routerforge: only the `routellm` package (0.2.0, PyPI), torch and numpy.

What is RouteLLM's, unchanged (routellm/routers/matrix_factorization/train_matrix_factorization.py):
`PairwiseDataset` and its `get_dataloaders` (train: shuffle=True; test: batch 1024, no shuffle),
`MFModel_Train` (frozen prompt table Q loaded from the .npy, P, text_proj, classifier, noise alpha),
`train_loops` (Adam(lr, weight_decay), BCEWithLogits toward 1 on (winner, loser), one `evaluator` call
per epoch) and `evaluator`.

What replicates its `__main__` block (a script with hard-coded paths, not callable):
  * the filter: keep pairs whose winner is model_a or model_b and whose two models differ;
  * the constants are passed in (dim, batch size, epochs, alpha, use_proj, lr, weight decay).
What differs from `__main__`, and why:
  * `MODEL_IDS` (its hard-coded 64-name table; names like "mixtral-8x7b-instruct-v0.1", "gpt-4-0613")
    is replaced, in the training module's namespace where `PairwiseDataset` reads it, by the dataset's
    own pool (name -> index), so both routers index the same models; num_models = len(pool);
  * no random 95/5 split: the bench passes the dataset's train split and its validation split as the
    test set, the same pairs our recipe trains and evaluates on;
  * num_prompts = rows of the .npy (train prompts + the eval prompts appended after them; rows that no
    training pair indexes never receive a gradient: Q is frozen) and text_dim = the encoder's dim;
  * device "cpu" instead of the hard-coded "cuda";
  * the seed: the module seeds torch/numpy/random with 42 at import; we re-seed with the spec's seed
    right after the import (identical for seed 42).
  * `OPENAI_API_KEY` must be set at import only because `model.py` imports
    `routellm.routers.similarity_weighted.utils`, which builds an OpenAI client at import time; no
    request is ever made (the bench sets a placeholder).

Timing: `train_loops` runs its epochs back to back and calls `evaluator` once after each epoch. A thin
wrapper around RouteLLM's `evaluator` records the clock on entry and exit, so epoch k's training time
= entry(k) - exit(k-1) (entry(0) - the moment `train_loops` is called), without the evaluation time.
Epoch 0 therefore also holds `train_loops`' construction of its Adam optimizer: torch.optim.Optimizer's
constructor imports torch._dynamo (about 2 s, once per process); the bench reports that epoch apart.
Scoring: P(strong beats weak | q) = sigmoid(MFModel_Train.forward(strong, weak, rows, test=True)),
the quantity RouteLLM's MF router thresholds (`MFModel.pred_win_rate`), on the same embeddings.
"""

from __future__ import annotations

import json
import random
import sys
import time
from importlib.metadata import version


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(open(spec_path, encoding="utf-8").read())
    import_started = time.perf_counter()
    import numpy as np
    import torch
    from routellm.routers.matrix_factorization import train_matrix_factorization as rl_train

    import_seconds = time.perf_counter() - import_started
    setup_started = time.perf_counter()
    torch.set_num_threads(int(spec["torch_threads"]))
    # PairwiseDataset looks MODEL_IDS up in this module's globals at construction time.
    rl_train.MODEL_IDS = {name: i for i, name in enumerate(spec["model_pool"])}
    seed = int(spec["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)

    def routellm_filter(data: list[dict]) -> list[dict]:  # the `filtered_data` lines of its __main__
        return [s for s in data if s["winner"] in ["model_a", "model_b"] and s["model_a"] != s["model_b"]]

    train_data = routellm_filter(json.loads(open(spec["train_pairs"], encoding="utf-8").read()))
    test_data = routellm_filter(json.loads(open(spec["test_pairs"], encoding="utf-8").read()))
    hp = spec["hyperparameters"]
    train_loader = rl_train.PairwiseDataset(train_data).get_dataloaders(batch_size=hp["batch_size"], shuffle=True)
    test_loader = rl_train.PairwiseDataset(test_data).get_dataloaders(1024, shuffle=False)
    num_prompts, text_dim = np.load(spec["embeddings_npy"], mmap_mode="r").shape
    model = rl_train.MFModel_Train(dim=hp["dim"], num_models=len(rl_train.MODEL_IDS), num_prompts=num_prompts,
                                   text_dim=text_dim, use_proj=hp["use_proj"],
                                   npy_path=spec["embeddings_npy"]).to("cpu")
    setup_seconds = time.perf_counter() - setup_started

    enter_times: list[float] = []
    exit_times: list[float] = []
    test_metrics: list[tuple[float, float]] = []

    def timed_evaluator(net, test_iter, device):
        enter_times.append(time.perf_counter())
        result = rl_train.evaluator(net, test_iter, device)
        exit_times.append(time.perf_counter())
        test_metrics.append(result)
        return result

    loop_started = time.perf_counter()
    rl_train.train_loops(model, train_loader, test_loader, lr=hp["lr"], weight_decay=hp["weight_decay"],
                         alpha=hp["alpha"], num_epochs=hp["num_epochs"], device="cpu", evaluator=timed_evaluator)
    loop_seconds = time.perf_counter() - loop_started
    starts = [loop_started] + exit_times[:-1]
    epoch_train_seconds = [enter - start for enter, start in zip(enter_times, starts, strict=True)]
    epoch_eval_seconds = [leave - enter for enter, leave in zip(enter_times, exit_times, strict=True)]

    model.eval()
    scores = {}
    with torch.no_grad():
        for name, rows in spec["score_rows"].items():
            n = len(rows)
            # one training can score several pairs: spec["score_pairs"][name] = [strong, weak] (default: the spec's)
            strong_name, weak_name = spec.get("score_pairs", {}).get(name, (spec["strong_model"], spec["weak_model"]))
            strong = torch.full((n,), rl_train.MODEL_IDS[strong_name], dtype=torch.int64)
            weak = torch.full((n,), rl_train.MODEL_IDS[weak_name], dtype=torch.int64)
            logits = model(strong, weak, torch.tensor(rows, dtype=torch.int64), test=True).reshape(n)
            scores[name] = torch.sigmoid(logits).tolist()

    out = {
        "routellm_version": version("routellm"),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "train_pairs": len(train_data),
        "test_pairs": len(test_data),
        "import_seconds": import_seconds,
        "setup_seconds": setup_seconds,
        "loop_seconds": loop_seconds,
        "epoch_train_seconds": epoch_train_seconds,
        "epoch_eval_seconds": epoch_eval_seconds,
        "final_test_loss": test_metrics[-1][0],
        "final_test_accuracy": test_metrics[-1][1],
        "scores": scores,
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
