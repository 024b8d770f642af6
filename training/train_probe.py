r"""Train uncertainty probes: P(the weak model answers correctly) from an LM's hidden states, and route on it.

    # hidden states (extracted when missing), probes, selection, report:
    accelerate launch training/train_probe.py --config configs/probe/default.yaml
    python data_prep/hidden_states.py --config configs/probe/default.yaml           # or: the hidden states alone, first
    accelerate launch --config_file launch/accelerate/cpu_2proc.yaml training/train_probe.py \
        --config configs/probe/tiny.yaml
    ... resume=auto                                   # continue the run from its newest complete checkpoint

What it does (Kadavath et al. 2022, arXiv 2207.05221; Azaria & Mitchell 2023, arXiv 2304.13734; Kossen et
al. 2024, arXiv 2406.15927): a linear (logistic) probe and a 1-hidden-layer MLP probe per stored layer and
token pooling are trained together (`ProbeBank`: disjoint parameters, so one pass trains each as if
alone) with BCE against the weak model's real outcomes (score >= data.correct_threshold = correct). The
candidate with the best AUROC (or NLL) on the selection split is kept, temperature-scaled on the same
split (Guo et al. 2017), exported, and reported against the baselines of
routerforge/eval/uncertainty_baselines.py (mean token log-prob, MSP over options, verbalized confidence,
random) with AUROC, ECE, Brier and the routing curve (accuracy vs. share escalated to the strong model).
When the stored LM is an encoder standing in for the LLM (the offline default, MiniLM), every output says so.

Reads top to bottom (main() at the end calls the sections in order; routerforge/train/lifecycle.py holds the
run's start, step checkpoints, NaN/Inf stop and export, shared by every recipe):
  1. config   2. accelerate, seeds, run dir, tracking   3. data: outcomes + hidden states   4. model
  5. optimizer + schedule   6. resume   7. training loop (log, checkpoint)   8. selection, temperature,
  report, export (main process)
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from routerforge.config import doc
from routerforge.data.dataset_io import PreparedDataset, load_prepared
from routerforge.data.hidden_states import (
    HiddenStatesConfig,
    load_hidden_states,
    run_hidden_states,
    store_dir_for,
    store_is_complete,
)
from routerforge.errors import ConfigError, DataError
from routerforge.eval.binary import binary_report
from routerforge.eval.probability_calibration import reliability_bins
from routerforge.eval.uncertainty_baselines import (
    auroc,
    binarize_scores,
    estimator_report,
    fit_platt,
    max_softmax_confidence,
    mean_logprob_confidence,
    random_confidence,
)
from routerforge.models.probe import PROBE_KINDS, ROUTER_TYPE, ProbeBank, fit_temperature, standardization
from routerforge.registry.register import register_run_export
from routerforge.train import nan_guard
from routerforge.train.accelerator_setup import (
    peak_accelerator_memory_bytes,
    seed_for_model_init,
    seed_for_training,
)
from routerforge.train.consistency import agreed_parameter_digests, refuse_sharded_weights
from routerforge.train.data_loading import batches_for_epoch, build_train_loader
from routerforge.train.entrypoint import run_recipe
from routerforge.train.lifecycle import LoopOutcome, Position, RunContext, dataset_facts, start_run
from routerforge.train.optimization import build_lr_scheduler, build_optimizer, warmup_steps_for
from routerforge.train.run_config import (
    RESUME_HELP,
    CheckpointConfig,
    ExportConfig,
    OptimConfig,
    RunConfig,
    TrackingConfig,
    parse_recipe_args,
)
from routerforge.train.run_plan import EtaReporter, announce_plan, optimizer_steps_for

RECIPE = "probe"
REPO_DIR = Path(__file__).resolve().parents[1]
SELECT_BY = ("auroc", "nll")
CALIBRATION_SHARES = np.round(np.linspace(0.0, 1.0, 101), 2)


# ----------------------------------------------------------------------------------------------------
# 1. Config: shared blocks + this recipe's features (the hidden-state stage), data, probe and report blocks
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeDataConfig:
    weak_model: str = doc("the model whose correctness the probe predicts (an outcome `model` name)",
                          default="mistralai/Mixtral-8x7B-Instruct-v0.1")
    strong_model: str | None = doc("the model escalated to; its outcomes give the routing curve (None: the report "
                                   "assumes it is always right)", default="gpt-4-1106-preview")
    sources: list[str] = doc("keep only outcome rows of these `source` names (e.g. [mmlu]); empty: all",
                             default_factory=list)
    train_split: str = doc("split the probes are trained on", default="train")
    select_split: str = doc("split that chooses the (kind, layer, pooling) and fits the temperature",
                            default="validation")
    report_sets: list[str] = doc("where the report is computed: dataset splits, eval/<name> (a held-out "
                                 "evaluation set) or eval/* (all of them)", default_factory=lambda: ["test", "eval/*"])
    correct_threshold: float = doc("an outcome score (0..1) at or above this counts as correct", default=0.5)

    def __post_init__(self) -> None:
        if not self.weak_model:
            raise ValueError("data.weak_model must not be empty")
        if not 0.0 < self.correct_threshold <= 1.0:
            raise ValueError(f"data.correct_threshold must be in (0, 1], got {self.correct_threshold}")
        if self.train_split == self.select_split:
            raise ValueError("data.select_split must differ from data.train_split (it chooses the layer and the "
                             "temperature on prompts the probes were not trained on)")


@dataclass(frozen=True)
class ProbeModelConfig:
    kinds: list[str] = doc("probe kinds trained per layer and pooling: linear, mlp",
                           default_factory=lambda: list(PROBE_KINDS))
    layers: list[int] = doc("candidate layers (hidden_states indices, as stored); empty: every stored layer",
                            default_factory=list)
    poolings: list[str] = doc("candidate poolings (as stored: last, prompt_last, mean); empty: every stored one",
                              default_factory=list)
    mlp_hidden_dim: int = doc("width of the MLP probe's hidden layer (units)", default=128)
    dropout: float = doc("dropout before the MLP probe's output layer (probability)", default=0.1)
    select_by: str = doc("how the candidate is chosen on the selection split: auroc (higher) or nll (lower)",
                         default="auroc")

    def __post_init__(self) -> None:
        if not self.kinds or any(k not in PROBE_KINDS for k in self.kinds) or len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"probe.kinds must be distinct values of {', '.join(PROBE_KINDS)}, got {list(self.kinds)}")
        if self.mlp_hidden_dim < 1:
            raise ValueError(f"probe.mlp_hidden_dim must be >= 1, got {self.mlp_hidden_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"probe.dropout must be in [0, 1), got {self.dropout}")
        if self.select_by not in SELECT_BY:
            raise ValueError(f"probe.select_by must be one of {', '.join(SELECT_BY)}, got '{self.select_by}'")


@dataclass(frozen=True)
class ProbeReportConfig:
    n_bins: int = doc("equal-width bins of ECE and the reliability diagram (count)", default=10)
    n_bootstrap: int = doc("bootstrap resamples for the AUROC/ECE/Brier intervals (count); 0: none", default=200)
    seed: int = doc("seed of the random baseline and of the bootstrap", default=0)
    cp_router_answers: str | None = doc("JSONL of gold option indices (`prompt_id`, `answer`: 0-based int or a "
                                        "letter A-Z) for multiple-choice prompts: with stored option logits, the "
                                        "report adds CP-Router (calibrated on the selection split); None: no CP-Router",
                                        default=None)
    cp_router_alpha: float | None = doc("CP-Router miscoverage level alpha in (0, 1); None: chosen by FBE",
                                        default=None)
    cp_router_beta: float = doc("weight of H_full in FBE (unitless; CP-Router: 3)", default=3.0)
    llm_tokens_per_question: float | None = doc("tokens the LM spends answering one question (tokens), for "
                                                "CP-Router's token-reduction ratio; None: not reported", default=None)
    lrm_tokens_per_question: float | None = doc("tokens the strong/reasoning model spends per question (tokens)",
                                                default=None)

    def __post_init__(self) -> None:
        if self.cp_router_alpha is not None and not 0.0 < self.cp_router_alpha < 1.0:
            raise ValueError(f"report.cp_router_alpha must be in (0, 1) or null, got {self.cp_router_alpha}")
        if self.cp_router_beta < 0:
            raise ValueError(f"report.cp_router_beta must be >= 0, got {self.cp_router_beta}")
        if self.n_bins < 1:
            raise ValueError(f"report.n_bins must be >= 1, got {self.n_bins}")
        if self.n_bootstrap < 0:
            raise ValueError(f"report.n_bootstrap must be >= 0, got {self.n_bootstrap}")


@dataclass(frozen=True)
class ProbeConfig:
    run: RunConfig = doc("run name, output dir, seed, length, batch geometry",
                         default_factory=lambda: RunConfig(name="probe", epochs=30, micro_batch_size=64))
    features: HiddenStatesConfig = doc("the hidden states the probes read (extracted here when no complete store "
                                       "exists; data_prep/hidden_states.py makes them alone)",
                                       default_factory=HiddenStatesConfig)
    data: ProbeDataConfig = doc("outcomes: whose correctness, which splits", default_factory=ProbeDataConfig)
    probe: ProbeModelConfig = doc("probe candidates and how one is chosen", default_factory=ProbeModelConfig)
    report: ProbeReportConfig = doc("report settings", default_factory=ProbeReportConfig)
    optim: OptimConfig = doc("optimizer (AdamW with weight decay: L2-regularised probes)",
                             default_factory=lambda: OptimConfig(name="adamw", lr=1e-3, weight_decay=1e-2))
    tracking: TrackingConfig = doc("W&B / TensorBoard", default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = doc("step checkpoints", default_factory=CheckpointConfig)
    export: ExportConfig = doc("final export", default_factory=ExportConfig)
    resume: str = doc(RESUME_HELP, default="never")


# ----------------------------------------------------------------------------------------------------
# Data helpers
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutcomeSet:
    """One split or evaluation set: prompts with a weak-model outcome, their weak and strong scores."""

    name: str
    prompt_ids: list[str]
    weak: np.ndarray
    strong: np.ndarray | None  # None when the strong model has no outcome on some prompt


def _mean_scores(rows: list[dict], model: str, sources: list[str]) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for row in rows:
        if row["model"] == model and (not sources or row.get("source") in sources):
            sums.setdefault(row["prompt_id"], []).append(float(row["score"]))
    return {pid: float(np.mean(v)) for pid, v in sums.items()}


def outcome_set(name: str, rows: list[dict], cfg: ProbeDataConfig) -> OutcomeSet:
    weak = _mean_scores(rows, cfg.weak_model, cfg.sources)
    ids = sorted(weak)
    strong = _mean_scores(rows, cfg.strong_model, cfg.sources) if cfg.strong_model else {}
    strong_arr = np.array([strong[p] for p in ids]) if cfg.strong_model and all(p in strong for p in ids) else None
    return OutcomeSet(name, ids, np.array([weak[p] for p in ids], dtype=np.float64), strong_arr)


def read_outcome_sets(data, cfg: ProbeDataConfig) -> tuple[OutcomeSet, OutcomeSet, list[OutcomeSet]]:
    def split_rows(split: str) -> list[dict]:
        if split not in data.outcomes:
            raise DataError(f"{data.path}: no outcomes split '{split}' (has {', '.join(data.outcomes)}).")
        return data.outcomes[split].select_columns(["prompt_id", "model", "score", "source"]).to_list()

    def eval_rows(name: str) -> list[dict]:
        path = data.eval_sets()[name]
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    train = outcome_set(cfg.train_split, split_rows(cfg.train_split), cfg)
    select = outcome_set(cfg.select_split, split_rows(cfg.select_split), cfg)
    reports = []
    for entry in cfg.report_sets:
        if entry == "eval/*":
            names = [f"eval/{n}" for n in data.eval_sets()]
        else:
            names = [entry]
        for name in names:
            if name.startswith("eval/"):
                if name[5:] not in data.eval_sets():
                    raise DataError(f"{data.path}: no evaluation set '{name[5:]}' (has "
                                    f"{', '.join(data.eval_sets()) or 'none'}); fix data.report_sets.")
                found = outcome_set(name, eval_rows(name[5:]), cfg)
            else:
                found = outcome_set(name, split_rows(name), cfg)
            if found.prompt_ids:
                reports.append(found)
    for s in (train, select):
        if not s.prompt_ids:
            rows = split_rows(s.name)
            weak_sources = sorted({r.get("source") for r in rows if r["model"] == cfg.weak_model} - {None})
            if cfg.sources and weak_sources:  # the model is there, the source filter removed it
                raise DataError(f"{data.path}: split '{s.name}' has outcomes of {cfg.weak_model} only in sources "
                                f"{', '.join(weak_sources)}, none in data.sources={list(cfg.sources)}; set "
                                f"data.sources to some of them, or to [] for all.")
            models = sorted({r["model"] for r in rows})
            raise DataError(f"{data.path}: split '{s.name}' has no outcome of data.weak_model={cfg.weak_model} (its "
                            f"models: {', '.join(models[:10])}{' ...' if len(models) > 10 else ''}); set "
                            f"data.weak_model to one of them.")
    return train, select, reports


def candidate_axes(store, cfg: ProbeModelConfig) -> tuple[list[int], list[str]]:
    """The stored layers and poolings the probes read (config subsets, validated against the store)."""
    layers = list(cfg.layers) or store.layers
    poolings = list(cfg.poolings) or store.poolings
    for layer in layers:
        if layer not in store.layers:
            raise ConfigError(f"probe.layers: layer {layer} was not stored (stored: {store.layers}); re-run "
                              f"data_prep/hidden_states.py with features.lm.layers including it.")
    for pooling in poolings:
        if pooling not in store.poolings:
            raise ConfigError(f"probe.poolings: '{pooling}' was not stored (stored: {store.poolings}).")
    return layers, poolings


def feature_tensor(store, rows: np.ndarray, layers: list[int], poolings: list[str]) -> torch.Tensor:
    """[rows, layers, poolings, d] float32."""
    positions = [store.layers.index(layer) for layer in layers]
    per_pooling = [store.features(p)[rows][:, positions] for p in poolings]
    return torch.from_numpy(np.ascontiguousarray(np.stack(per_pooling, axis=2), dtype=np.float32))


@torch.no_grad()
def bank_logits(bank: ProbeBank, features: torch.Tensor, batch: int = 1024) -> np.ndarray:
    bank.eval()
    out = [bank(features[i:i + batch]).float().cpu() for i in range(0, len(features), batch)]
    bank.train()
    return torch.cat(out).numpy().astype(np.float64)


# ----------------------------------------------------------------------------------------------------
# Report helpers (main process)
# ----------------------------------------------------------------------------------------------------
def baseline_confidences(store, rows: np.ndarray) -> dict[str, tuple[np.ndarray | None, str | None, np.ndarray | None]]:
    """name -> (confidence, why unavailable, missing mask) of every baseline for the given store rows."""
    lm = store.lm
    out: dict[str, tuple] = {}
    no_lm = f"{lm['id']} is an encoder STAND-IN (no LM head)" if lm.get("stand_in") else None
    if store.get("response_logprob_sum") is not None:
        out["mean_token_logprob"] = (mean_logprob_confidence(store.get("response_logprob_sum")[rows],
                                                             store.get("response_logprob_count")[rows]), None, None)
    elif store.get("prompt_logprob_sum") is not None:
        out["mean_token_logprob"] = (mean_logprob_confidence(store.get("prompt_logprob_sum")[rows],
                                                             store.get("prompt_logprob_count")[rows]), None, None)
    else:
        out["mean_token_logprob"] = (None, no_lm or "no token log-probs were stored", None)
    logits = store.get("option_logits")
    if logits is not None and np.all(np.isfinite(logits[rows])):
        out["max_softmax_prob"] = (max_softmax_confidence(logits[rows]), None, None)
    else:
        out["max_softmax_prob"] = (None, no_lm or "no option logits were stored (features.lm.option_tokens)", None)
    verbal = store.get("verbalized_confidence")
    if verbal is not None:
        values = verbal[rows].astype(np.float64)
        missing = ~np.isfinite(values)
        out["verbalized"] = (np.where(missing, 0.5, values), None, missing)
    else:
        out["verbalized"] = (None, no_lm or "no verbalized confidence was generated (features.lm.verbalized)", None)
    for name, (values, _why, _missing) in list(out.items()):
        if values is not None and not np.all(np.isfinite(values)):
            out[name] = (None, "non-finite values (e.g. a fully truncated prompt)", None)
    return out


def read_answers(path: str) -> dict[str, int]:
    """prompt_id -> gold option index from a JSONL file (`answer`: 0-based int, or a letter A-Z)."""
    answers: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            answer = obj.get("answer")
            if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().isalpha():
                answer = ord(answer.strip().upper()) - ord("A")
            if not isinstance(answer, int) or isinstance(answer, bool) or answer < 0 or "prompt_id" not in obj:
                raise DataError(f"{path}:{line_no}: needs `prompt_id` and `answer` (0-based int or a letter).")
            answers[str(obj["prompt_id"])] = answer
    return answers


def cp_router_section(store, cfg: ProbeConfig, select_set: OutcomeSet, select_rows: np.ndarray,
                      report_sets: list[OutcomeSet], report_rows: dict[str, np.ndarray]) -> dict:
    """CP-Router (routerforge/eval/conformal.py) on every report set that has gold answers, or why not."""
    from routerforge.eval.conformal import cp_router_report, option_softmax

    if not cfg.report.cp_router_answers:
        return {"unavailable": "no gold option answers (report.cp_router_answers)"}
    logits = store.get("option_logits")
    if logits is None:
        return {"unavailable": "no option logits were stored (features.lm.option_tokens; an encoder has none)"}
    answers = read_answers(cfg.report.cp_router_answers)

    def labelled(prompt_ids: list[str], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keep = np.array([pid in answers for pid in prompt_ids], dtype=bool)
        labels = np.array([answers[pid] for pid, k in zip(prompt_ids, keep, strict=True) if k], dtype=np.int64)
        return keep, option_softmax(logits[rows[keep]]), labels

    _, cal_probs, cal_labels = labelled(select_set.prompt_ids, select_rows)
    if len(cal_labels) == 0:
        return {"unavailable": f"no prompt of the selection split {select_set.name} has a gold answer"}
    out = {"lm_answers": "argmax of the LM's option softmax", "n_calibration": int(len(cal_labels))}
    for rs in report_sets:
        keep, probs, labels = labelled(rs.prompt_ids, report_rows[rs.name])
        if not keep.any():
            out[rs.name] = {"unavailable": "no gold answers for these prompts"}
            continue
        report = cp_router_report(
            cal_probs, cal_labels, probs, alpha=cfg.report.cp_router_alpha, beta=cfg.report.cp_router_beta,
            route_labels=labels, lrm_correct=None if rs.strong is None else rs.strong[keep],
            llm_tokens=cfg.report.llm_tokens_per_question, lrm_tokens=cfg.report.lrm_tokens_per_question)
        out[rs.name] = report.to_dict()
    return out


def format_table(report: dict) -> str:
    lines = []
    for set_name, section in report["sets"].items():
        lines.append(f"[{set_name}] n={section['n_prompts']} weak accuracy={section['weak_accuracy']:.3f}")
        lines.append(f"  {'estimator':<20} {'AUROC':>6} {'ECE':>6} {'Brier':>6} {'ECE*':>6} {'Brier*':>6} {'APGR':>6}")
        for name, est in section["estimators"].items():
            if "unavailable" in est:
                lines.append(f"  {name:<20} n/a: {est['unavailable']}")
                continue
            raw, platt = est["raw"], est.get("platt", {})
            lines.append(f"  {name:<20} {raw['auroc']:6.3f} {raw['ece']:6.3f} {raw['brier']:6.3f} "
                         f"{platt.get('ece', float('nan')):6.3f} {platt.get('brier', float('nan')):6.3f} "
                         f"{est['routing']['apgr']:6.3f}")
    lines.append("  (* = after Platt scaling on the selection split; the probe row is temperature-scaled)")
    return "\n".join(lines)


def build_report(store, chosen_name: str, temperature: float, probe_p: dict[str, np.ndarray],
                 select_set: OutcomeSet, select_rows: np.ndarray, report_sets: list[OutcomeSet],
                 report_rows: dict[str, np.ndarray], cfg: ProbeConfig, candidates_table: list[dict],
                 plots_dir: Path) -> dict:
    from routerforge.eval.plots import plot_reliability, plot_strong_share_curves

    threshold = cfg.data.correct_threshold
    select_y = binarize_scores(select_set.weak, threshold)
    select_baselines = baseline_confidences(store, select_rows)
    calibrators = {name: fit_platt(v, select_y) for name, (v, _, _) in select_baselines.items() if v is not None}
    lm = store.lm
    report = {
        "lm": {**lm, "stand_in_for": cfg.data.weak_model if lm.get("stand_in") else None},
        "weak_model": cfg.data.weak_model, "strong_model": cfg.data.strong_model,
        "correct_threshold": threshold,
        "chosen": {"candidate": chosen_name, "temperature": temperature, "select_split": select_set.name,
                   "select_by": cfg.probe.select_by},
        "candidates": candidates_table, "sets": {},
    }
    for rs in report_sets:
        y = binarize_scores(rs.weak, threshold)
        rows = report_rows[rs.name]
        estimators: dict[str, dict] = {}
        confidences = {"probe": (probe_p[rs.name], None, None), **baseline_confidences(store, rows),
                       "random": (random_confidence(len(rows), cfg.report.seed), None, None)}
        routing_reports = {}
        for name, (values, why, missing) in confidences.items():
            if values is None:
                estimators[name] = {"unavailable": why}
                continue
            estimators[name] = estimator_report(values, y, rs.weak, rs.strong, calibrator=calibrators.get(name),
                                                n_bins=cfg.report.n_bins, n_bootstrap=cfg.report.n_bootstrap,
                                                seed=cfg.report.seed, missing=missing)
            strong = rs.strong if rs.strong is not None else np.ones_like(rs.weak)
            routing_reports[name] = binary_report(-values, rs.weak, strong, n_bootstrap=0)
        safe = rs.name.replace("/", "_")
        plot_strong_share_curves(routing_reports, plots_dir / f"routing_{safe}.png",
                                 title=f"Escalate the least-confident prompts first ({rs.name})")
        plot_reliability(reliability_bins(probe_p[rs.name], y, cfg.report.n_bins),
                         plots_dir / f"reliability_probe_{safe}.png",
                         ece=estimators["probe"]["raw"]["ece"], title=f"Probe reliability ({rs.name})")
        report["sets"][rs.name] = {"n_prompts": len(rows), "weak_accuracy": float(y.mean()),
                                   "strong_known": rs.strong is not None, "estimators": estimators}
    return report


@dataclass(frozen=True)
class ProbeData:
    """Section 3's result: outcome sets, the hidden-state store and the training features."""

    data: PreparedDataset
    train_set: object
    select_set: object
    report_sets: list
    store_dir: Path
    store: object
    layers: list
    poolings: list
    select_rows: np.ndarray
    report_rows: dict
    train_x: torch.Tensor
    train_y: torch.Tensor
    data_fingerprint: str


def check_config(cfg: ProbeConfig) -> None:
    if cfg.run.early_stopping_patience_evals or cfg.run.early_stopping_metric != "auto":
        raise ConfigError("run.early_stopping_* is not used by the probe recipe: it trains every (kind, layer, "
                          "pooling) candidate together and picks the best on data.select_split after training; "
                          "shorten it with run.epochs.")
    if cfg.optim.max_grad_norm > 0:
        raise ConfigError("optim.max_grad_norm must be 0 for probes: global clipping would couple the candidates "
                          "trained together in one ProbeBank.")


# ----------------------------------------------------------------------------------------------------
# 3. Data: the weak model's outcomes per split + the stored hidden states of those prompts
# ----------------------------------------------------------------------------------------------------
def load_probe_data(cfg: ProbeConfig) -> ProbeData:
    if not cfg.features.dataset:
        raise ConfigError("features.dataset must name a prepared dataset: the probes need outcomes (labels).")
    data = load_prepared(cfg.features.dataset)
    train_set, select_set, report_sets = read_outcome_sets(data, cfg.data)
    store_dir = store_dir_for(cfg.features)
    if not store_is_complete(store_dir):
        # One config, one command: the `features:` block given here (overrides included) is exactly what
        # data_prep/hidden_states.py would read, so the recipe runs that stage itself (every process shares the
        # work; complete shards of an interrupted extraction are kept) instead of asking for it twice.
        print(f"probe: no complete hidden states at {store_dir}; extracting them with features.lm.model="
              f"{cfg.features.lm.model} (as data_prep/hidden_states.py does)", flush=True)
        run_hidden_states(cfg.features, progress=cfg.run.progress_bar)
    store = load_hidden_states(store_dir)
    if store.lm["spec"] != cfg.features.lm.model:
        raise DataError(f"{store_dir} holds hidden states of {store.lm['spec']}, not {cfg.features.lm.model}; "
                        f"set features.output_dir to a new directory, or delete {store_dir}, and run again.")
    layers, poolings = candidate_axes(store, cfg.probe)
    train_rows = store.rows(train_set.prompt_ids, f" of split {train_set.name}")
    select_rows = store.rows(select_set.prompt_ids, f" of split {select_set.name}")
    report_rows = {rs.name: store.rows(rs.prompt_ids, f" of {rs.name}") for rs in report_sets}
    return ProbeData(
        data=data, train_set=train_set, select_set=select_set, report_sets=report_sets, store_dir=store_dir,
        store=store, layers=layers, poolings=poolings, select_rows=select_rows, report_rows=report_rows,
        train_x=feature_tensor(store, train_rows, layers, poolings),
        train_y=torch.from_numpy(binarize_scores(train_set.weak, cfg.data.correct_threshold)).float(),
        data_fingerprint=(f"{data.fingerprint}:{store.index['settings_fingerprint'][:16]}:"
                          f"{store.index['inputs_fingerprint'][:16]}"))


# ----------------------------------------------------------------------------------------------------
# 4. Model: every (kind, layer, pooling) candidate in one bank, standardised with train statistics
# ----------------------------------------------------------------------------------------------------
def build_bank(cfg: ProbeConfig, pd: ProbeData) -> ProbeBank:
    bank = ProbeBank(len(pd.layers), len(pd.poolings), int(pd.train_x.shape[-1]), list(cfg.probe.kinds),
                     cfg.probe.mlp_hidden_dim, cfg.probe.dropout)
    bank.set_standardization(*standardization(pd.train_x))
    return bank


# ----------------------------------------------------------------------------------------------------
# 5-7. Optimizer and LR schedule, resume, training loop: loss = sum over candidates of each one's mean BCE
# ----------------------------------------------------------------------------------------------------
def fit(ctx: RunContext, bank: ProbeBank, pd: ProbeData) -> LoopOutcome:
    cfg: ProbeConfig = ctx.cfg
    accelerator = ctx.accelerator
    train_loader = build_train_loader(TensorDataset(torch.arange(len(pd.train_y)), pd.train_y),
                                      cfg.run.micro_batch_size, cfg.run.seed)

    # 5. Optimizer and LR schedule (in optimizer steps)
    optimizer = build_optimizer(bank.parameters(), cfg.optim)
    seed_for_training(cfg.run.seed, accelerator)
    model, optimizer, train_loader = accelerator.prepare(bank, optimizer, train_loader)
    train_x = pd.train_x.to(accelerator.device)
    batches_per_epoch = len(train_loader)
    steps_per_epoch, total_optimizer_steps = optimizer_steps_for(cfg.run, batches_per_epoch)
    scheduler = accelerator.prepare(build_lr_scheduler(optimizer, cfg.optim, total_optimizer_steps))
    announce_plan(accelerator, RECIPE, total_optimizer_steps=total_optimizer_steps, steps_per_epoch=steps_per_epoch,
                  epochs=cfg.run.epochs, warmup_steps=warmup_steps_for(cfg.optim, total_optimizer_steps),
                  early_stopping=False)

    # 6. Resume
    position, state = ctx.resume(pd.data_fingerprint, batches_per_epoch)
    optimizer_step, epoch, batches_done = position.optimizer_step, position.epoch, position.batches_done_in_epoch
    guard = nan_guard.guard_for_run(cfg.run.max_consecutive_nonfinite_steps, state)

    def save_step_checkpoint() -> Path:
        return ctx.save_checkpoint(ctx.trainer_state(Position(optimizer_step, epoch, batches_done),
                                                     pd.data_fingerprint, guard))

    # 7. Training loop
    progress = tqdm(total=total_optimizer_steps, initial=optimizer_step, desc="probe", unit="step",
                    disable=not (accelerator.is_main_process and cfg.run.progress_bar))
    window = torch.zeros(2, device=accelerator.device)
    last_train_loss, history = float("nan"), []
    loop_started = time.perf_counter()
    eta = EtaReporter(accelerator, RECIPE, optimizer_step, total_optimizer_steps, cfg.run.time_budget_minutes)
    model.train()
    while optimizer_step < total_optimizer_steps and epoch < cfg.run.epochs:
        for rows, target in batches_for_epoch(accelerator, train_loader, epoch, batches_done):
            with accelerator.accumulate(model):
                logits = model(train_x[rows]).float()  # [batch, candidates]
                per_candidate = F.binary_cross_entropy_with_logits(
                    logits, target[:, None].expand_as(logits), reduction="none").mean(dim=0)
                loss = per_candidate.sum()
                if nan_guard.update_allowed(guard, accelerator, loss, optimizer_step + 1):
                    accelerator.backward(loss)
                    optimizer.step()
                    # logged: the mean over candidates of their BCE (comparable across bank sizes)
                    window += torch.stack([per_candidate.detach().mean(), torch.ones((), device=accelerator.device)])
                optimizer.zero_grad()
            batches_done += 1
            if not accelerator.sync_gradients:
                continue
            skipped = nan_guard.close_optimizer_step(guard)
            scheduler.step()
            optimizer_step += 1
            progress.update(1)
            eta.observe(optimizer_step)
            if (skipped or optimizer_step % cfg.tracking.log_every_optimizer_steps == 0
                    or optimizer_step == total_optimizer_steps):
                loss_sum, loss_count = accelerator.reduce(window, reduction="sum").tolist()
                last_train_loss = loss_sum / loss_count if loss_count else float("nan")
                accelerator.log({"train/mean_candidate_bce": last_train_loss, "train/lr": scheduler.get_last_lr()[0],
                                 "train/epoch": epoch}, step=optimizer_step)
                history.append({"optimizer_step": optimizer_step, "mean_candidate_bce": last_train_loss})
                progress.set_postfix(bce=f"{last_train_loss:.4f}")
                window = torch.zeros(2, device=accelerator.device)
            # Every N steps a checkpoint; NaN/Inf too many steps in a row: a last checkpoint, exit status 3.
            ctx.end_optimizer_step(optimizer_step, guard, save_step_checkpoint, progress)
            if optimizer_step >= total_optimizer_steps:
                break
        epoch, batches_done = epoch + 1, 0
    progress.close()
    loop_seconds = time.perf_counter() - loop_started
    return LoopOutcome(model=model, optimizer_step=optimizer_step, total_optimizer_steps=total_optimizer_steps,
                       steps_per_epoch=steps_per_epoch, last_train_loss=last_train_loss, history=history,
                       skipped_nonfinite_steps=guard.skipped_steps,
                       throughput={"train_loop_seconds": loop_seconds,
                                   "peak_accelerator_memory_bytes": peak_accelerator_memory_bytes()})


# ----------------------------------------------------------------------------------------------------
# 8. Selection, temperature, report, export (main process)
# ----------------------------------------------------------------------------------------------------
def select_report_and_export(ctx: RunContext, trained: LoopOutcome, bank: ProbeBank, pd: ProbeData) -> dict:
    cfg: ProbeConfig = ctx.cfg
    accelerator = ctx.accelerator
    store, layers, poolings, select_set, report_sets = pd.store, pd.layers, pd.poolings, pd.select_set, pd.report_sets
    names = [c.name(layers, poolings) for c in bank.candidates]
    accelerator.wait_for_everyone()
    digests = agreed_parameter_digests(accelerator, trained.model)
    result = ctx.result(optimizer_steps=trained.optimizer_step)
    if accelerator.is_main_process:
        bank_cpu = accelerator.unwrap_model(trained.model).to("cpu")
        select_y = binarize_scores(select_set.weak, cfg.data.correct_threshold)
        select_logits = bank_logits(bank_cpu, feature_tensor(store, pd.select_rows, layers, poolings))
        table = []
        for j, name in enumerate(names):
            z = torch.as_tensor(select_logits[:, j])
            table.append({"candidate": name, "select_auroc": auroc(select_logits[:, j], select_y),
                          "select_nll": float(F.binary_cross_entropy_with_logits(z, torch.as_tensor(select_y)))})
        if cfg.probe.select_by == "auroc":
            keys = [(-(t["select_auroc"] if not math.isnan(t["select_auroc"]) else -1.0), t["select_nll"])
                    for t in table]
        else:
            keys = [(t["select_nll"],) for t in table]
        best = min(range(len(names)), key=lambda j: keys[j])
        candidate = bank_cpu.candidates[best]
        probe = bank_cpu.extract(candidate)
        temperature = fit_temperature(select_logits[:, best], select_y)

        def p_correct(rows: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                x = feature_tensor(store, rows, layers, poolings)[:, candidate.layer_position,
                                                                  candidate.pooling_position]
                return torch.sigmoid(probe(x) / temperature).double().numpy()

        select_p = p_correct(pd.select_rows)
        probe_p = {rs.name: p_correct(pd.report_rows[rs.name]) for rs in report_sets}
        if not report_sets:
            print(f"note: no report set has outcomes of {cfg.data.weak_model} (data.report_sets="
                  f"{list(cfg.data.report_sets)}; an empty split such as a 0-size test split counts as none): the "
                  f"report holds the selection split only. Add a split or eval/<name> to data.report_sets.",
                  flush=True)
        report_dir = ctx.run_dir / "report"
        report = build_report(store, names[best], temperature, probe_p, select_set, pd.select_rows, report_sets,
                              pd.report_rows, cfg, table, report_dir)
        report["cp_router"] = cp_router_section(store, cfg, select_set, pd.select_rows, report_sets, pd.report_rows)
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True, default=float) + "\n",
                                                encoding="utf-8")
        result.update({"chosen": names[best], "temperature": temperature, "report": str(report_dir / "report.json")})
        if store.lm["stand_in"]:
            print(f"NOTE: hidden states of {store.lm['id']}, an encoder standing in for {cfg.data.weak_model} "
                  f"(not the weak model's own states).")
        print(f"chosen probe: {names[best]} (temperature {temperature:.3f}, {select_set.name} AUROC "
              f"{table[best]['select_auroc']:.3f})")
        print(format_table(report))
        print(f"report: {report_dir / 'report.json'}")
        lm, data = store.lm, pd.data
        chosen_layer, chosen_pooling = layers[candidate.layer_position], poolings[candidate.pooling_position]
        model_config = {
            "router_type": ROUTER_TYPE, "probe_kind": candidate.kind, "input_dim": int(pd.train_x.shape[-1]),
            "hidden_dim": cfg.probe.mlp_hidden_dim, "dropout": cfg.probe.dropout, "layer": chosen_layer,
            "pooling": chosen_pooling, "temperature": temperature,
            "weak_model": cfg.data.weak_model, "strong_model": cfg.data.strong_model,
            "correct_threshold": cfg.data.correct_threshold,
            "lm": {"spec": lm["spec"], "id": lm["id"], "revision": lm["revision"], "kind": lm["kind"],
                   "stand_in": lm["stand_in"], "requested_revision": cfg.features.lm.revision,
                   "dtype": cfg.features.lm.dtype, "max_length": cfg.features.lm.max_length,
                   "prompt_template": cfg.features.lm.prompt_template,
                   "use_chat_template": cfg.features.lm.use_chat_template,
                   "micro_batch_size": cfg.features.lm.micro_batch_size},
            # P(correct) quantiles on the selection split: route(escalation_share=s) escalates a share s of them
            "calibration": {"split": select_set.name, "shares": CALIBRATION_SHARES.tolist(),
                            "p_correct_quantiles": np.quantile(select_p, CALIBRATION_SHARES).tolist()},
        }
        first_set = report["sets"][report_sets[0].name]["estimators"]["probe"] if report_sets else None
        ctx.export(
            probe.state_dict(), model_config, router_type=ROUTER_TYPE, register=register_run_export,
            model_pool=[m for m in (cfg.data.weak_model, cfg.data.strong_model) if m],
            encoder={"id": lm["id"], "revision": lm["revision"], "dim": int(pd.train_x.shape[-1]), "kind": lm["kind"],
                     "stand_in": lm["stand_in"], "layer": chosen_layer, "pooling": chosen_pooling},
            data={**dataset_facts(data), "hidden_states": str(pd.store_dir),
                  "hidden_states_settings_fingerprint": store.index["settings_fingerprint"],
                  "train_prompts": len(pd.train_set.prompt_ids), "select_prompts": len(select_set.prompt_ids)},
            training={"optimizer_steps": trained.optimizer_step, "total_optimizer_steps": trained.total_optimizer_steps,
                      "epochs": cfg.run.epochs, "resumed_from": str(ctx.resume_from) if ctx.resume_from else None,
                      "candidates": len(names), "param_sha256_per_process": digests, "loss_history": trained.history,
                      "skipped_nonfinite_steps": trained.skipped_nonfinite_steps, **trained.throughput},
            metrics={"train_mean_candidate_bce": trained.last_train_loss, "chosen_candidate": names[best],
                     f"{select_set.name}_auroc": table[best]["select_auroc"], "temperature": temperature,
                     **({f"{report_sets[0].name}_auroc": first_set["raw"]["auroc"],
                         f"{report_sets[0].name}_ece": first_set["raw"]["ece"],
                         f"{report_sets[0].name}_brier": first_set["raw"]["brier"]} if first_set else {})})
    ctx.finish()
    return result


def main(argv: list[str] | None = None) -> dict:
    # 1. Config
    cfg = parse_recipe_args(ProbeConfig, argv, description=__doc__.splitlines()[0])
    check_config(cfg)
    # 2. accelerate, run directory, resume state, tracking; probes on stored hidden states are small: replicate them
    ctx = start_run(cfg, RECIPE, REPO_DIR, check_accelerator=lambda accelerator: refuse_sharded_weights(
        accelerator, RECIPE))
    seed_for_model_init(cfg.run.seed)
    # 3-4. Outcomes + hidden states, the probe bank
    pd = load_probe_data(cfg)
    bank = build_bank(cfg, pd)
    # 5-7. Optimizer, resume, training loop
    trained = fit(ctx, bank, pd)
    # 8. Selection, temperature, report, export
    return select_report_and_export(ctx, trained, bank, pd)


if __name__ == "__main__":
    run_recipe(main)
