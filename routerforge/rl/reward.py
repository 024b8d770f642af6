"""Router-R1's rule-based reward: format, outcome (EM or F1), and a rolling-window normalised cost reward.

Router-R1 (arXiv 2506.09033): the reward has three parts and is hierarchical: a format
violation gives -1 and nothing else counts; otherwise the reward is

    r = (1 - alpha) * R_outcome + alpha * R_cost

with alpha = `RewardConfig.cost_weight` (Router-R1's ``cost_coe``, default 0 in its train.sh/README).

* R_outcome: exact match after SQuAD normalisation (lower-case, drop punctuation and the articles
  a/an/the, collapse whitespace), or token F1 over the same normalised text, maximised over the gold
  answers. Router-R1's ``verl/utils/reward_score/qa_em.py`` (from Search-R1) does the same, and its
  F1 gives 0 when either side is yes/no/noanswer and they differ (HotpotQA's rule); so does ours.
  `match_numbers` adds a numeric comparison (18 == 18.0 == $18 == 1,000/1000) for math tasks such as
  GSM8K, where SQuAD normalisation would turn "18.0" into "180".
* R_cost: Router-R1's ``normalize_reward`` (``verl/trainer/main_ppo.py``): the trajectory's call
  cost in USD (tokens x $/M of the models it called) goes through sqrt, into a window of the last
  1,000 costs; it is min-max scaled between the window's 5th and 95th percentiles, clipped to [0, 1]
  and inverted, so the cheapest trajectories get 1 and the dearest 0 (0.5 while the window has no
  spread). The window is an explicit `CostNormalizer` object (Router-R1 keeps it in a module-level
  deque) so that a trainer owns it, checkpoints it (`state_dict`) and restores it on resume.
* `cost_gate` decides who gets the cost term. "format" (the paper's formula): every well-formed
  trajectory. "outcome": only trajectories whose outcome is above 0; a wrong answer then scores
  (1 - alpha) * outcome = 0, so with alpha > 0 a policy cannot earn reward by answering cheaply and
  wrongly (our option, not the paper's).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from routerforge.config import doc

FORMAT_PENALTY = -1.0
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)
# A number as people write answers: optional sign and currency, thousands commas, decimals, a
# trailing percent sign. Anything else in the answer makes it non-numeric.
_NUMBER_RE = re.compile(r"^[-+]?\$?\s*(\d{1,3}(?:,\d{3})+|\d+)?(\.\d+)?\s*%?$")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower-case, remove punctuation, remove a/an/the, collapse whitespace."""
    lowered = text.lower()
    no_punct = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
    no_articles = _ARTICLES_RE.sub(" ", no_punct)
    return " ".join(no_articles.split())


def parse_number(text: str) -> float | None:
    """The value of an answer that is just a number ("18", "$1,000", "-2.50", "75%"), else None."""
    cleaned = text.strip().rstrip(".").strip()
    match = _NUMBER_RE.match(cleaned)
    if not match or not (match.group(1) or match.group(2)):
        return None
    digits = cleaned.replace("$", "").replace(",", "").replace("%", "").replace(" ", "")
    try:
        value = float(digits)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _numbers_equal(prediction: str, gold: str) -> bool | None:
    """True/False when both parse as numbers, None when either does not."""
    a, b = parse_number(prediction), parse_number(gold)
    if a is None or b is None:
        return None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def exact_match(prediction: str, golds: str | Sequence[str], *, match_numbers: bool = False) -> float:
    """1.0 when the prediction equals any gold answer after normalisation (or by value), else 0.0."""
    golds = [golds] if isinstance(golds, str) else list(golds)
    normalized = normalize_answer(prediction)
    for gold in golds:
        if match_numbers and _numbers_equal(prediction, gold):
            return 1.0
        if normalize_answer(gold) == normalized:
            return 1.0
    return 0.0


def _f1_one(prediction: str, gold: str) -> float:
    pred_norm, gold_norm = normalize_answer(prediction), normalize_answer(gold)
    # HotpotQA's rule, kept by Search-R1/Router-R1: a yes/no/noanswer on either side only scores if equal.
    if (pred_norm in ("yes", "no", "noanswer") or gold_norm in ("yes", "no", "noanswer")) and pred_norm != gold_norm:
        return 0.0
    pred_tokens, gold_tokens = pred_norm.split(), gold_norm.split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: str | Sequence[str], *, match_numbers: bool = False) -> float:
    """Token F1 over normalised text, maximised over the gold answers (a numeric match scores 1)."""
    golds = [golds] if isinstance(golds, str) else list(golds)
    best = 0.0
    for gold in golds:
        if match_numbers:
            equal = _numbers_equal(prediction, gold)
            if equal:
                return 1.0
        best = max(best, _f1_one(prediction, gold))
    return best


@dataclass(frozen=True)
class RewardConfig:
    """How a finished trajectory is scored (Router-R1's hierarchical rule-based reward)."""

    outcome_metric: str = doc("outcome reward: em (exact match after SQuAD normalisation) or f1 (token F1)",
                              default="em")
    match_numbers: bool = doc("compare answers that are plain numbers by value (18 == 18.0 == $18); for math "
                              "tasks such as GSM8K", default=False)
    cost_weight: float = doc("alpha in r = (1-alpha)*outcome + alpha*cost_reward (unitless, 0-1; the paper's "
                             "default 0 ignores cost)", default=0.0)
    cost_gate: str = doc("who gets the cost term: format (every well-formed trajectory, the paper) or outcome "
                         "(only trajectories with outcome > 0)", default="format")
    format_penalty: float = doc("reward of a trajectory that breaks the protocol (reward units; paper: -1)",
                                default=FORMAT_PENALTY)
    cost_window: int = doc("rolling window of the cost normaliser (trajectories; Router-R1: 1000)", default=1000)
    cost_transform: str = doc("transform of the USD cost before normalising: sqrt (Router-R1), log1p or none",
                              default="sqrt")
    cost_quantile_low: float = doc("window quantile (0-1) mapped to cost reward 1 (Router-R1: 0.05)", default=0.05)
    cost_quantile_high: float = doc("window quantile (0-1) mapped to cost reward 0 (Router-R1: 0.95)", default=0.95)

    def __post_init__(self) -> None:
        if self.outcome_metric not in ("em", "f1"):
            raise ValueError(f"reward.outcome_metric must be em or f1, got '{self.outcome_metric}'")
        if not 0.0 <= self.cost_weight <= 1.0:
            raise ValueError(f"reward.cost_weight must be in [0, 1], got {self.cost_weight}")
        if self.cost_gate not in ("format", "outcome"):
            raise ValueError(f"reward.cost_gate must be format or outcome, got '{self.cost_gate}'")
        if self.format_penalty > 0:
            raise ValueError(f"reward.format_penalty must be <= 0, got {self.format_penalty}")
        if self.cost_window < 1:
            raise ValueError(f"reward.cost_window must be >= 1 trajectory, got {self.cost_window}")
        if self.cost_transform not in ("sqrt", "log1p", "none"):
            raise ValueError(f"reward.cost_transform must be sqrt, log1p or none, got '{self.cost_transform}'")
        if not 0.0 <= self.cost_quantile_low < self.cost_quantile_high <= 1.0:
            raise ValueError("reward.cost_quantile_low/high must satisfy 0 <= low < high <= 1, got "
                             f"{self.cost_quantile_low}, {self.cost_quantile_high}")


class CostNormalizer:
    """Rolling-window cost -> cost reward in [0, 1] (cheapest 1, dearest 0); see the module docstring.

    The state is the window of transformed costs; `normalize` appends the new cost first and then
    scales it against the window that includes it, as Router-R1 does.
    """

    def __init__(self, window: int = 1000, transform: str = "sqrt", quantile_low: float = 0.05,
                 quantile_high: float = 0.95, eps: float = 1e-8) -> None:
        RewardConfig(cost_window=window, cost_transform=transform, cost_quantile_low=quantile_low,
                     cost_quantile_high=quantile_high)  # same validation as the config
        self.window = window
        self.transform = transform
        self.quantile_low = quantile_low
        self.quantile_high = quantile_high
        self.eps = eps
        self._values: deque[float] = deque(maxlen=window)

    @classmethod
    def from_config(cls, cfg: RewardConfig) -> CostNormalizer:
        return cls(cfg.cost_window, cfg.cost_transform, cfg.cost_quantile_low, cfg.cost_quantile_high)

    def _transformed(self, cost_usd: float) -> float:
        if not math.isfinite(cost_usd) or cost_usd < 0:
            raise ValueError(f"a trajectory's cost must be a finite number of USD >= 0, got {cost_usd}")
        if self.transform == "sqrt":
            return math.sqrt(cost_usd)
        if self.transform == "log1p":
            return math.log1p(cost_usd)
        return float(cost_usd)

    def normalize(self, cost_usd: float) -> float:
        """Add `cost_usd` to the window and return its cost reward in [0, 1]."""
        value = self._transformed(cost_usd)
        self._values.append(value)
        window = np.asarray(self._values, dtype=np.float64)
        if len(window) >= 2:
            low = float(np.percentile(window, 100 * self.quantile_low))
            high = float(np.percentile(window, 100 * self.quantile_high))
        else:
            low = high = float(window[0])
        if high - low < self.eps:
            return 0.5
        return 1.0 - float(np.clip((value - low) / (high - low), 0.0, 1.0))

    def __len__(self) -> int:
        return len(self._values)

    def state_dict(self) -> dict:
        """JSON-able state for a checkpoint (settings and the window, oldest first)."""
        return {"window": self.window, "transform": self.transform, "quantile_low": self.quantile_low,
                "quantile_high": self.quantile_high, "values": list(self._values)}

    def load_state_dict(self, state: dict) -> None:
        settings = (state["window"], state["transform"], state["quantile_low"], state["quantile_high"])
        if settings != (self.window, self.transform, self.quantile_low, self.quantile_high):
            raise ValueError(f"cost normaliser state was saved with (window, transform, quantiles) {settings}, but "
                             f"this run uses {(self.window, self.transform, self.quantile_low, self.quantile_high)}")
        self._values = deque((float(v) for v in state["values"]), maxlen=self.window)


@dataclass(frozen=True)
class RewardBreakdown:
    """The reward of one trajectory and its parts (logged separately by the trainer)."""

    reward: float
    format_ok: bool
    outcome: float  # EM or F1 in [0, 1]; 0 when the format is broken
    cost_reward: float  # normalised cost reward in [0, 1] (computed for every trajectory)
    cost_usd: float


def outcome_score(answer: str | None, golds: Sequence[str], cfg: RewardConfig) -> float:
    """EM or F1 of `answer` against `golds` (0 when there is no answer)."""
    if answer is None:
        return 0.0
    if cfg.outcome_metric == "em":
        return exact_match(answer, golds, match_numbers=cfg.match_numbers)
    return f1_score(answer, golds, match_numbers=cfg.match_numbers)


def combine_reward(format_ok: bool, outcome: float, cost_reward: float, cfg: RewardConfig) -> float:
    """The hierarchical total: format penalty, else (1-alpha)*outcome + alpha*cost_reward (see the gate)."""
    if not format_ok:
        return cfg.format_penalty
    gets_cost = cfg.cost_gate == "format" or outcome > 0
    return (1.0 - cfg.cost_weight) * outcome + (cfg.cost_weight * cost_reward if gets_cost else 0.0)


def score_trajectory(*, format_ok: bool, answer: str | None, golds: Sequence[str], cost_usd: float,
                     cfg: RewardConfig, normalizer: CostNormalizer | None = None,
                     cost_reward: float | None = None) -> RewardBreakdown:
    """Score one finished trajectory.

    Pass `normalizer` (its window takes this trajectory's cost, every trajectory) or the `cost_reward`
    the caller already normalised (RoutingEnv does, when the window spans several processes).
    """
    if (normalizer is None) == (cost_reward is None):
        raise ValueError("pass exactly one of normalizer and cost_reward")
    if cost_reward is None:
        cost_reward = normalizer.normalize(cost_usd)
    outcome = outcome_score(answer, golds, cfg) if format_ok else 0.0
    return RewardBreakdown(reward=combine_reward(format_ok, outcome, cost_reward, cfg), format_ok=format_ok,
                           outcome=outcome, cost_reward=cost_reward, cost_usd=cost_usd)
