"""Probes that read an LM's hidden states and predict P(the LM answers correctly); the probe router.

Models (one logit per prompt; P(correct) = sigmoid(logit / T) after temperature scaling):

* `LinearProbe`: logistic regression on one layer's pooled state, standardised per feature with the
  training split's mean and std (LLM residual streams have a few huge-magnitude dimensions; without
  standardisation weight decay acts on them very unevenly). Kadavath et al. 2022 (arXiv 2207.05221) and
  Kossen et al. 2024 (arXiv 2406.15927) use linear probes.
* `MLPProbe`: one hidden layer (ReLU, dropout) on the same standardised input; Azaria & Mitchell 2023
  (arXiv 2304.13734, SAPLMA) use small MLP probes.
* `ProbeBank`: every (kind, layer, pooling) candidate at once, one module. Candidates have disjoint
  parameters and each one's loss depends only on its own parameters, so training the bank with the sum
  of the candidates' losses and a per-parameter optimizer (Adam/AdamW, no global gradient clipping)
  trains each candidate exactly as it would be trained alone, in one data pass, one checkpoint.
  `ProbeBank.extract(c)` returns candidate c as a standalone probe for export.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): one scalar T > 0
fitted on held-out data by minimising the negative log-likelihood of sigmoid(logit / T); it changes no
ranking (AUROC is unchanged), only the probabilities.

`load_probe_router(export_dir)` rebuilds an exported probe together with the LM it reads, and routes new
prompts: escalate to the strong model when P(correct) of the weak model is below a threshold, or escalate
a given share of prompts (threshold from the P(correct) quantiles stored at export).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from routerforge.errors import CheckpointError, ConfigError
from routerforge.models.family_scorer import FamilyScorer

PROBE_KINDS = ("linear", "mlp")
ROUTER_TYPE = "probe"


class LinearProbe(nn.Module):
    """logit = w . ((x - mean) / std) + b."""

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(input_dim))
        self.register_buffer("feature_std", torch.ones(input_dim))
        self.linear = nn.Linear(input_dim, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.feature_mean) / self.feature_std).squeeze(-1)


class MLPProbe(nn.Module):
    """logit = w2 . dropout(relu(W1 ((x - mean) / std) + b1)) + b2."""

    def __init__(self, input_dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(input_dim))
        self.register_buffer("feature_std", torch.ones(input_dim))
        self.hidden = nn.Linear(input_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = (features - self.feature_mean) / self.feature_std
        return self.out(self.dropout(torch.relu(self.hidden(x)))).squeeze(-1)


@dataclass(frozen=True)
class Candidate:
    """One probe of the bank: its kind and the stored layer / pooling it reads (indices into the bank input)."""

    kind: str
    layer_position: int  # position in the stored layers axis
    pooling_position: int  # position in the poolings axis

    def name(self, layers: list[int], poolings: list[str]) -> str:
        return f"{self.kind}/layer{layers[self.layer_position]}/{poolings[self.pooling_position]}"


def enumerate_candidates(kinds: list[str], num_layers: int, num_poolings: int) -> list[Candidate]:
    """Every (kind, layer, pooling), kinds outermost: the bank's output column order."""
    for kind in kinds:
        if kind not in PROBE_KINDS:
            raise ConfigError(f"probe kind '{kind}' is unknown; use {', '.join(PROBE_KINDS)}.")
    return [Candidate(k, layer, pooling)
            for k in kinds for layer in range(num_layers) for pooling in range(num_poolings)]


class ProbeBank(nn.Module):
    """All candidates: input [batch, layers, poolings, d] -> logits [batch, candidates]."""

    def __init__(self, num_layers: int, num_poolings: int, input_dim: int, kinds: list[str], hidden_dim: int,
                 dropout: float) -> None:
        super().__init__()
        self.shape = (num_layers, num_poolings, input_dim)
        self.kinds = list(kinds)
        self.hidden_dim = hidden_dim
        self.dropout_p = dropout
        self.candidates = enumerate_candidates(kinds, num_layers, num_poolings)
        self.register_buffer("feature_mean", torch.zeros(num_layers, num_poolings, input_dim))
        self.register_buffer("feature_std", torch.ones(num_layers, num_poolings, input_dim))
        bound = 1.0 / math.sqrt(input_dim)  # nn.Linear's default init range, per candidate
        if "linear" in kinds:
            self.linear_weight = nn.Parameter(torch.empty(num_layers, num_poolings, input_dim).uniform_(-bound, bound))
            self.linear_bias = nn.Parameter(torch.empty(num_layers, num_poolings).uniform_(-bound, bound))
        if "mlp" in kinds:
            h_bound = 1.0 / math.sqrt(hidden_dim)
            self.mlp_w1 = nn.Parameter(
                torch.empty(num_layers, num_poolings, input_dim, hidden_dim).uniform_(-bound, bound))
            self.mlp_b1 = nn.Parameter(torch.empty(num_layers, num_poolings, hidden_dim).uniform_(-bound, bound))
            self.mlp_w2 = nn.Parameter(torch.empty(num_layers, num_poolings, hidden_dim).uniform_(-h_bound, h_bound))
            self.mlp_b2 = nn.Parameter(torch.empty(num_layers, num_poolings).uniform_(-h_bound, h_bound))
            self.dropout = nn.Dropout(dropout)

    def set_standardization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = (features - self.feature_mean) / self.feature_std  # [B, L, P, d]
        outputs = []
        if "linear" in self.kinds:
            outputs.append((torch.einsum("blpd,lpd->blp", x, self.linear_weight) + self.linear_bias).flatten(1))
        if "mlp" in self.kinds:
            hidden = torch.relu(torch.einsum("blpd,lpdh->blph", x, self.mlp_w1) + self.mlp_b1)
            hidden = self.dropout(hidden)
            outputs.append((torch.einsum("blph,lph->blp", hidden, self.mlp_w2) + self.mlp_b2).flatten(1))
        # column order = enumerate_candidates: kinds outermost, then layer, then pooling (flatten(1) of [L, P])
        return torch.cat(outputs, dim=1)

    @torch.no_grad()
    def extract(self, candidate: Candidate) -> nn.Module:
        """Candidate as a standalone LinearProbe / MLPProbe with identical outputs."""
        layer, pooling = candidate.layer_position, candidate.pooling_position
        input_dim = self.shape[2]
        if candidate.kind == "linear":
            probe = LinearProbe(input_dim)
            probe.linear.weight.copy_(self.linear_weight[layer, pooling][None, :])
            probe.linear.bias.copy_(self.linear_bias[layer, pooling][None])
        else:
            probe = MLPProbe(input_dim, self.hidden_dim, self.dropout_p)
            probe.hidden.weight.copy_(self.mlp_w1[layer, pooling].T)
            probe.hidden.bias.copy_(self.mlp_b1[layer, pooling])
            probe.out.weight.copy_(self.mlp_w2[layer, pooling][None, :])
            probe.out.bias.copy_(self.mlp_b2[layer, pooling][None])
        probe.feature_mean.copy_(self.feature_mean[layer, pooling])
        probe.feature_std.copy_(self.feature_std[layer, pooling])
        return probe.eval()


def standardization(features: torch.Tensor, min_std: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std over the first (prompt) axis; tiny stds are raised to `min_std`."""
    mean = features.mean(dim=0)
    std = features.std(dim=0, unbiased=False).clamp_min(min_std)
    return mean, std


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """T minimising the mean BCE of sigmoid(logit / T) vs. `labels` (in [0, 1]); golden-section search on log T.

    The NLL of temperature scaling is convex in 1/T, hence unimodal in log T: a bracketing search is exact
    to its tolerance and, unlike LBFGS, needs no learning rate and cannot step to T <= 0.
    """
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    if len(z) == 0:
        raise ValueError("temperature scaling needs at least one example")

    def nll(log_t: float) -> float:
        return float(nn.functional.binary_cross_entropy_with_logits(z / math.exp(log_t), y))

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(80):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return float(math.exp((lo + hi) / 2))


def build_probe(config: dict) -> nn.Module:
    """The standalone probe described by an export's config.json."""
    if config.get("probe_kind") == "linear":
        return LinearProbe(int(config["input_dim"]))
    if config.get("probe_kind") == "mlp":
        return MLPProbe(int(config["input_dim"]), int(config["hidden_dim"]), float(config.get("dropout", 0.0)))
    raise CheckpointError(f"probe export config names probe_kind {config.get('probe_kind')!r}; expected linear or mlp.")


# --------------------------------------------------------------------------------------------------
# The router: LM -> pooled state of the chosen layer -> probe -> P(correct) -> keep or escalate
# --------------------------------------------------------------------------------------------------
class ProbeRouter:
    """An exported probe and the LM it reads. Higher `score` = more in need of the strong model."""

    def __init__(self, export_dir: Path, config: dict, manifest: dict, probe: nn.Module) -> None:
        self.export_dir = export_dir
        self.config = config
        self.manifest = manifest
        self.probe = probe.eval()
        self.temperature = float(config["temperature"])
        self.weak_model = config["weak_model"]
        self.strong_model = config.get("strong_model")
        self._extractor = None

    @property
    def layer(self) -> int:
        return int(self.config["layer"])

    @property
    def pooling(self) -> str:
        return str(self.config["pooling"])

    def extractor(self):
        """The LM feature extractor, built on first use, reading only the probe's layer and pooling."""
        if self._extractor is None:
            from routerforge.data.hidden_states import HiddenStateExtractor, LMFeatureConfig

            lm = self.config["lm"]
            cfg = LMFeatureConfig(model=lm["spec"], revision=lm.get("requested_revision"), kind=lm["kind"],
                                  dtype=lm.get("dtype", "auto"), max_length=int(lm["max_length"]),
                                  prompt_template=lm["prompt_template"],
                                  use_chat_template=bool(lm["use_chat_template"]),
                                  layers=[self.layer], poolings=[self.pooling],
                                  micro_batch_size=int(lm.get("micro_batch_size", 8)))
            extractor = HiddenStateExtractor(cfg)
            if lm.get("revision") and extractor.revision != lm["revision"]:
                raise CheckpointError(f"{self.export_dir}: the probe was trained on {lm['id']} revision "
                                      f"{lm['revision']} but {lm['spec']} now resolves to {extractor.revision}; "
                                      f"load the same LM revision.")
            self._extractor = extractor
        return self._extractor

    def features(self, prompts: list[str]) -> np.ndarray:
        from routerforge.data.hidden_states import PromptRow

        rows = [PromptRow(str(i), p, None, "route") for i, p in enumerate(prompts)]
        arrays = self.extractor().extract(rows)
        return np.asarray(arrays[f"hidden.{self.pooling}"][:, 0], dtype=np.float32)

    @torch.no_grad()
    def p_correct_from_features(self, features: np.ndarray) -> np.ndarray:
        logits = self.probe(torch.as_tensor(np.asarray(features, dtype=np.float32)))
        return torch.sigmoid(logits / self.temperature).numpy().astype(np.float64)

    def p_correct(self, prompts: list[str]) -> np.ndarray:
        """Calibrated P(the weak model answers correctly), one per prompt."""
        return self.p_correct_from_features(self.features(list(prompts)))

    def score(self, prompts: list[str]) -> np.ndarray:
        """1 - P(correct): the router score of routerforge.eval.binary (higher -> strong model)."""
        return 1.0 - self.p_correct(prompts)

    def threshold_for_share(self, escalation_share: float) -> float:
        """P(correct) threshold that escalates `escalation_share` of the reference prompts (validation split)."""
        if not 0.0 <= escalation_share <= 1.0:
            raise ConfigError(f"escalation_share must be in [0, 1], got {escalation_share}")
        calibration = self.config["calibration"]
        return float(np.interp(escalation_share, calibration["shares"], calibration["p_correct_quantiles"]))

    def route(self, prompts: list[str], *, threshold: float | None = None,
              escalation_share: float | None = None) -> list[str]:
        """The model to call per prompt: the strong model where P(correct) < threshold, else the weak one."""
        if (threshold is None) == (escalation_share is None):
            raise ConfigError("route(): give exactly one of threshold (a P(correct) in [0, 1]) or escalation_share.")
        if threshold is None:
            threshold = self.threshold_for_share(float(escalation_share))
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold must be a probability in [0, 1], got {threshold}")
        p = self.p_correct(prompts)
        strong = self.strong_model or "strong"
        return [strong if value < threshold else self.weak_model for value in p]


def load_probe_router(export_dir: str | Path) -> ProbeRouter:
    """Load an export of training/train_probe.py; CheckpointError if files are missing, altered or not a probe."""
    from routerforge.io.digest import sha256_file
    from routerforge.io.names import CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE
    from routerforge.io.safetensors_file import load_export_weights

    export_dir = Path(export_dir)
    for name in (WEIGHTS_FILE, CONFIG_FILE, MANIFEST_FILE):
        if not (export_dir / name).is_file():
            raise CheckpointError(f"{export_dir}: no {name}; pass the export directory of a probe run "
                                  f"(checkpoints/probe/<run>/final).")
    manifest = json.loads((export_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    for name, digest in manifest.get("files", {}).items():
        if sha256_file(export_dir / name) != digest:
            raise CheckpointError(f"{export_dir / name}: sha256 differs from {MANIFEST_FILE}; the export was "
                                  f"modified after training. Re-export or restore the file.")
    config = json.loads((export_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    if config.get("router_type") != ROUTER_TYPE:
        raise CheckpointError(f"{export_dir / CONFIG_FILE}: router_type is {config.get('router_type')!r}, not "
                              f"'{ROUTER_TYPE}'.")
    probe = build_probe(config)
    try:
        # safetensors only: a pickle under this name is refused unread (UnsafeWeightsError), never unpickled
        probe.load_state_dict(load_export_weights(export_dir, WEIGHTS_FILE))
    except RuntimeError as exc:
        raise CheckpointError(f"{export_dir / WEIGHTS_FILE} does not match its config.json: "
                              f"{str(exc).splitlines()[0]}") from None
    return ProbeRouter(export_dir, config, manifest, probe)


# ---------------------------------------------------------------------------------------------------- loading
def load_family_scorer(directory: Path, manifest: dict, config: dict, *, batch_size: int = 64, device: str = "cpu",
                       embedding_cache_dir: str | None = None) -> FamilyScorer:
    """A hidden-state probe (training/train_probe.py): pair-free score 1 − P(the weak model answers correctly).

    The encoder is the LM the probe reads (its layer and pooling, routerforge.models.probe.ProbeRouter, which
    refuses another LM revision); the head is the probe with its temperature. The probe was trained for one
    weak model; used for another pair it is a stand-in, like any pair-free score.
    """

    try:
        probe = load_probe_router(directory)
    except (OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{directory}: the probe router does not load ({str(err).splitlines()[0]}); "
                              f"re-export.") from None
    lm = config.get("lm") or {}
    rule = (f"1 - P({probe.weak_model} answers correctly), probe on {lm.get('id')} layer {probe.layer} "
            f"({probe.pooling} pooling), temperature {probe.temperature:.3g}")

    def head(features: np.ndarray) -> dict[str, np.ndarray]:
        p_correct = probe.p_correct_from_features(features)
        return {"p_correct": p_correct, "escalate": 1.0 - p_correct}

    return FamilyScorer("probe", (), probe.features, head, pair_rule=lambda strong, weak: None,
                        pair_score=lambda outputs, strong, weak: outputs["escalate"], pair_models=(),
                        has_quality=False, has_cost=False, pair_free="escalate", pair_free_rule=rule,
                        encoder_id=str(lm.get("id")))
