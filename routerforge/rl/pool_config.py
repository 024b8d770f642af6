"""Typed config of a candidate-model pool, and its resolution into model cards with prices.

A pool is a list of models the policy may call, each with the name it writes in
``<search>Name: query</search>``, a description shown to the policy, and $ per million input/output
tokens. Router-R1 keeps descriptions in ``data_process/prompt_pool.py`` and prices in a dict in
``route_service.py``; here both come from this config: inline, or the prices from a price table
(RouterArena ``cost.json`` or LLMRouter ``default_llm.json``, read by
`routerforge.data.readers.prices.load_price_table`) and the descriptions from LLMRouter's
``feature`` texts when the config gives none. The policy sees description + prices
(`ModelCard.descriptor`): Router-R1 conditions routing only on such descriptors.

The default config is the offline GSM8K pool: Mixtral-8x7B and GPT-4-1106 served from RouteLLM's
recorded answers, priced from RouterArena's table, so it runs with nothing downloaded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from routerforge.config import doc
from routerforge.data.config import EncoderConfig
from routerforge.data.readers.prices import load_price_table
from routerforge.errors import ConfigError, DataError

POOL_BACKENDS = ("recorded", "hf", "openai")
RECORDED_SERVE = ("response", "final_number")

# What the candidate receives for a sub-query on live backends (hf, openai). Router-R1 wraps the
# sub-query in an "agent prompt" the same way (route_service.py); the wording here is ours.
DEFAULT_AGENT_PROMPT = (
    "You are one of several expert models that a coordinating model consults. Answer the question below "
    "as well as you can, briefly and with the key reasoning; if you cannot answer it, say so plainly.\n\n"
    "Question: {query}\n"
)


@dataclass(frozen=True)
class CandidateModelConfig:
    """One model of the pool."""

    name: str = doc("name the policy writes in <search>Name: query</search>; no ':' (it separates name and query)",
                    default="")
    model: str = doc("backend id: the model column of the recorded table, an HF Hub id or local directory (hf), "
                     "or the API's model name (openai); empty: same as name", default="")
    description: str = doc("what the model is good at, shown to the policy; empty: the price table's LLMRouter "
                           "`feature` text, if any", default="")
    input_price: float | None = doc("USD per million input tokens; None: from pool.price_table", default=None)
    output_price: float | None = doc("USD per million output tokens; None: from pool.price_table", default=None)
    price_key: str | None = doc("the model's key in pool.price_table when it is neither `model` nor `name`",
                                default=None)
    revision: str | None = doc("hf backend: Hub revision (commit sha or tag); part of the answer-cache key",
                               default=None)

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("pool.models: every model needs a non-empty `name`")
        if ":" in self.name or "<" in self.name or ">" in self.name:
            raise ValueError(f"pool.models: name '{self.name}' must not contain ':', '<' or '>' (they delimit "
                             "the <search>Name: query</search> call)")
        if self.name != self.name.strip():
            raise ValueError(f"pool.models: name '{self.name}' has leading or trailing spaces")
        for label, price in (("input_price", self.input_price), ("output_price", self.output_price)):
            if price is not None and (not math.isfinite(price) or price < 0):
                raise ValueError(f"pool.models '{self.name}': {label} must be a USD amount per million tokens "
                                 f">= 0, got {price}")


@dataclass(frozen=True)
class RecordedPoolConfig:
    """Offline pool: answers recorded in an outcome table, looked up by the nearest recorded prompt."""

    table: str = doc("outcome table with answer texts: a RouteLLM *_responses.csv (prompt, <model>, "
                     "<model>_response) or a long JSONL/CSV (prompt, model, response, score[, input_tokens, "
                     "output_tokens])", default="data/routellm/gsm8k/gsm8k_responses.csv")
    match_threshold: float = doc("cosine similarity (-1..1) a sub-query needs with its nearest recorded prompt to "
                                 "be served that prompt's answer; below it the episode's question is used",
                                 default=0.8)
    chars_per_token: float = doc("characters per token used to estimate token counts the table lacks "
                                 "(OpenAI's rule of thumb: 4)", default=4.0)
    encoder: EncoderConfig = doc("sentence encoder for sub-query matching (cached on disk)",
                                 default_factory=EncoderConfig)
    serve: str = doc("what goes inside <information>: response (the recorded answer text) or final_number (only "
                     "its final number, routerforge/rl/tasks.py final_number; the whole text when it has none). "
                     "The cost is the full recorded exchange either way. final_number is for tiny test policies "
                     "that cannot find the result in a long solution", default="response")

    def __post_init__(self) -> None:
        if self.serve not in RECORDED_SERVE:
            raise ValueError(f"pool.recorded.serve must be one of {', '.join(RECORDED_SERVE)}, got '{self.serve}'")
        if not -1.0 <= self.match_threshold <= 1.0:
            raise ValueError(f"pool.recorded.match_threshold is a cosine similarity in [-1, 1], got "
                             f"{self.match_threshold}")
        if self.chars_per_token <= 0:
            raise ValueError(f"pool.recorded.chars_per_token must be > 0, got {self.chars_per_token}")


@dataclass(frozen=True)
class HFPoolConfig:
    """Local Hugging Face causal LMs, with an on-disk answer cache."""

    cache_dir: str = doc("answer cache directory; keyed by (model id, revision, prompt sha256, generation "
                         "settings)", default="data/cache/candidate_answers")
    max_new_tokens: int = doc("tokens generated per answer at most", default=256)
    temperature: float = doc("sampling temperature; 0 = greedy decoding", default=0.0)
    top_p: float = doc("nucleus sampling mass (0-1], used when temperature > 0", default=1.0)
    seed: int = doc("torch seed set before each sampled generation (part of the cache key)", default=0)
    device: str | None = doc("torch device (cpu, cuda, cuda:1); None: cuda when available, else cpu", default=None)
    dtype: str = doc("weights dtype: float32, bfloat16, float16 or auto (the checkpoint's)", default="auto")
    use_chat_template: bool = doc("wrap the prompt with the tokenizer's chat template when it has one",
                                  default=True)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"pool.hf.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"pool.hf.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"pool.hf.top_p must be in (0, 1], got {self.top_p}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"pool.hf.dtype must be auto, float32, bfloat16 or float16, got '{self.dtype}'")


@dataclass(frozen=True)
class OpenAIPoolConfig:
    """Any OpenAI-compatible /chat/completions endpoint; URL and key only from environment variables."""

    base_url_env: str = doc("environment variable holding the base URL (…/v1)", default="OPENAI_BASE_URL")
    api_key_env: str = doc("environment variable holding the API key", default="OPENAI_API_KEY")
    timeout_s: float = doc("per-request timeout (seconds)", default=60.0)
    max_retries: int = doc("retries of a request after a timeout, connection error, HTTP 429 or 5xx", default=3)
    backoff_s: float = doc("first retry delay (seconds), doubled each retry, capped at 30 s", default=1.0)
    max_concurrency: int = doc("requests in flight at once, at most (over all threads)", default=8)
    max_tokens: int = doc("max_tokens of each completion (tokens)", default=512)
    temperature: float = doc("sampling temperature sent to the endpoint", default=0.0)
    on_failure: str = doc("when a call still fails after its retries: information (the policy sees a failure "
                          "note, no cost; Router-R1's behaviour) or raise", default="information")

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.backoff_s < 0:
            raise ValueError("pool.openai.timeout_s must be > 0 and backoff_s >= 0")
        if self.max_retries < 0:
            raise ValueError(f"pool.openai.max_retries must be >= 0, got {self.max_retries}")
        if self.max_concurrency < 1 or self.max_tokens < 1:
            raise ValueError("pool.openai.max_concurrency and max_tokens must be >= 1")
        if self.on_failure not in ("information", "raise"):
            raise ValueError(f"pool.openai.on_failure must be information or raise, got '{self.on_failure}'")


def _default_models() -> list[CandidateModelConfig]:
    # RouteLLM's GSM8K table (data/routellm/gsm8k) records these two models; prices from RouterArena.
    return [
        CandidateModelConfig(
            name="Mixtral-8x7B", model="mistralai/Mixtral-8x7B-Instruct-v0.1",
            price_key="mistralai/mixtral-8x7b-instruct",
            description="Mixtral-8x7B-Instruct, an open mixture-of-experts model (about 13B parameters active "
                        "per token). Cheap; solves most grade-school math word problems but slips on longer "
                        "multi-step arithmetic."),
        CandidateModelConfig(
            name="GPT-4-Turbo", model="gpt-4-1106-preview", price_key="gpt-4-1106-preview",
            description="GPT-4 Turbo (gpt-4-1106-preview), a frontier model. Strong at multi-step reasoning and "
                        "arithmetic; many times the price of the open model."),
    ]


@dataclass(frozen=True)
class PoolConfig:
    """The candidate pool the router policy calls."""

    backend: str = doc("recorded (offline answers from an outcome table), hf (local causal LMs) or openai "
                       "(an OpenAI-compatible chat endpoint)", default="recorded")
    models: list[CandidateModelConfig] = doc("the models of the pool, in the order shown to the policy",
                                             default_factory=_default_models)
    price_table: str | None = doc("price table for models without inline prices: RouterArena cost.json or "
                                  "LLMRouter default_llm.json", default="data/prices/routerarena/model_cost/cost.json")
    count_input_tokens: bool = doc("charge input tokens too (what an API bills); false charges output tokens "
                                   "only, as Router-R1's code does", default=True)
    agent_prompt: str = doc("prompt a live candidate receives; {query} is replaced by the sub-query",
                            default=DEFAULT_AGENT_PROMPT)
    recorded: RecordedPoolConfig = doc("recorded backend settings", default_factory=RecordedPoolConfig)
    hf: HFPoolConfig = doc("hf backend settings", default_factory=HFPoolConfig)
    openai: OpenAIPoolConfig = doc("openai backend settings", default_factory=OpenAIPoolConfig)

    def __post_init__(self) -> None:
        if self.backend not in POOL_BACKENDS:
            raise ValueError(f"pool.backend must be one of {', '.join(POOL_BACKENDS)}, got '{self.backend}'")
        if not self.models:
            raise ValueError("pool.models is empty; list at least one model the policy can call")
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"pool.models: duplicate name(s) {', '.join(duplicates)}")
        if "{query}" not in self.agent_prompt:
            raise ValueError("pool.agent_prompt must contain {query} (where the sub-query goes)")


@dataclass(frozen=True)
class ModelCard:
    """A pool model with everything resolved: backend id, description and prices (USD per million tokens)."""

    name: str
    model: str
    description: str
    input_price: float
    output_price: float
    revision: str | None = None

    def cost_usd(self, input_tokens: int, output_tokens: int, count_input_tokens: bool = True) -> float:
        """USD of one call: tokens x $/M (input tokens only when `count_input_tokens`)."""
        billed_input = input_tokens * self.input_price if count_input_tokens else 0.0
        return (billed_input + output_tokens * self.output_price) / 1e6

    def descriptor(self) -> str:
        """The text the policy sees for this model: description and prices."""
        price = (f"Price: ${self.input_price:g} per million input tokens, "
                 f"${self.output_price:g} per million output tokens.")
        return f"{self.description.strip()} {price}".strip()


def _llmrouter_features(path: Path) -> dict[str, str]:
    """name and model id -> LLMRouter `feature` text, when `path` is an LLMRouter default_llm.json."""
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    features: dict[str, str] = {}
    if isinstance(table, dict):
        for key, entry in table.items():
            if isinstance(entry, dict) and isinstance(entry.get("feature"), str):
                features[key] = entry["feature"]
                if isinstance(entry.get("model"), str):
                    features[entry["model"]] = entry["feature"]
    return features


def resolve_model_cards(cfg: PoolConfig) -> list[ModelCard]:
    """The pool's models with prices and descriptions filled in; ConfigError naming the model when one lacks a price."""
    prices: dict[str, tuple[float, float]] = {}
    features: dict[str, str] = {}
    needs_table = any(m.input_price is None or m.output_price is None for m in cfg.models)
    if cfg.price_table is not None and (needs_table or any(not m.description for m in cfg.models)):
        table_path = Path(cfg.price_table)
        try:
            prices = load_price_table(table_path)
        except DataError as exc:
            if needs_table:
                raise ConfigError(f"pool.price_table: {exc}") from None
        features = _llmrouter_features(table_path)
    cards = []
    for m in cfg.models:
        model_id = m.model or m.name
        keys = [k for k in (m.price_key, model_id, m.name) if k]
        found = next((prices[k] for k in keys if k in prices), None)
        input_price = m.input_price if m.input_price is not None else (found[0] if found else None)
        output_price = m.output_price if m.output_price is not None else (found[1] if found else None)
        if input_price is None or output_price is None:
            where = f"in {cfg.price_table}" if cfg.price_table else "(pool.price_table is not set)"
            raise ConfigError(f"pool.models '{m.name}': no price for any of {', '.join(keys)} {where}; set "
                              "input_price/output_price inline, or price_key to the model's key in the table.")
        description = m.description or next((features[k] for k in keys if k in features), "")
        cards.append(ModelCard(name=m.name, model=model_id, description=description, input_price=input_price,
                               output_price=output_price, revision=m.revision))
    return cards
