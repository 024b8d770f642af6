"""The label config: candidate endpoints, the judge, the prompts file, the spend cap.

Loaded with `routerforge.config.load_config` (YAML + `key=value` overrides, "did you mean" errors).
Endpoint URLs and API keys are never config values: the config names the environment variables that
hold them, so no key can end up in a config dump, a manifest or a log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from routerforge.config import doc

ENDPOINT_KINDS = ("openai", "transformers")
JUDGE_MODES = ("single", "pairwise", "reference")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings sent with every request of an endpoint (part of the cache key)."""

    max_tokens: int = doc("most tokens generated per answer (tokens)", default=512)
    temperature: float = doc("sampling temperature (0 = greedy)", default=0.0)
    top_p: float = doc("nucleus sampling mass (0-1]", default=1.0)
    seed: int | None = doc("sampling seed sent to the endpoint (None: not sent)", default=None)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"generation.max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"generation.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"generation.top_p must be in (0, 1], got {self.top_p}")

    def request_params(self) -> dict:
        """The OpenAI request fields these settings become (and the cache key's generation part)."""
        params: dict = {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p}
        if self.seed is not None:
            params["seed"] = self.seed
        return params


@dataclass(frozen=True)
class EndpointConfig:
    """One model behind an OpenAI-compatible endpoint (or a local transformers model)."""

    name: str = doc("name of the model in the label set (the `model` column)", default="")
    kind: str = doc("openai: an OpenAI-compatible /v1 endpoint (OpenAI, vLLM `vllm serve`, ...); "
                    "transformers: a local Hugging Face causal LM", default="openai")
    model: str = doc("model name sent to the endpoint (openai); empty for transformers", default="")
    base_url_env: str = doc("environment variable holding the base URL, e.g. https://api.openai.com/v1",
                            default="OPENAI_BASE_URL")
    api_key_env: str = doc("environment variable holding the API key (never written anywhere)",
                           default="OPENAI_API_KEY")
    model_path: str = doc("transformers: local model directory (save_pretrained format)", default="")
    input_usd_per_m: float = doc("price of input tokens (USD per million tokens)", default=0.0)
    output_usd_per_m: float = doc("price of output tokens (USD per million tokens)", default=0.0)
    max_concurrency: int = doc("most requests in flight to this endpoint at once (requests)", default=4)
    timeout_s: float = doc("timeout of one request (seconds)", default=120.0)
    max_retries: int = doc("retries of a request on timeouts, connection errors, 429 and 5xx (count)", default=6)
    backoff_s: float = doc("first retry delay (seconds), doubled each retry, capped at 60 s; a longer "
                           "Retry-After from the server wins", default=1.0)
    generation: GenerationConfig = doc("sampling settings", default_factory=GenerationConfig)

    def __post_init__(self) -> None:
        who = f"endpoint '{self.name or '?'}'"
        if not self.name:
            raise ValueError("every candidate and the judge endpoint need a `name`")
        if self.kind not in ENDPOINT_KINDS:
            raise ValueError(f"{who}: kind '{self.kind}' is unknown; use one of {', '.join(ENDPOINT_KINDS)}")
        if self.kind == "openai":
            if not self.model:
                raise ValueError(f"{who}: kind openai needs `model` (the name the endpoint serves)")
            for key in ("base_url_env", "api_key_env"):
                if not _ENV_NAME.match(getattr(self, key)):
                    raise ValueError(f"{who}: {key} must be the NAME of an environment variable, got "
                                     f"'{getattr(self, key)}' (keys and URLs are never config values)")
        if self.kind == "transformers" and not self.model_path:
            raise ValueError(f"{who}: kind transformers needs `model_path` (a local model directory)")
        if self.input_usd_per_m < 0 or self.output_usd_per_m < 0:
            raise ValueError(f"{who}: prices must be >= 0 USD per million tokens")
        if self.max_concurrency < 1:
            raise ValueError(f"{who}: max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.timeout_s <= 0 or self.backoff_s < 0 or self.max_retries < 0:
            raise ValueError(f"{who}: timeout_s must be > 0, backoff_s and max_retries >= 0")

    @property
    def model_id(self) -> str:
        """What identifies the model in the cache key: the served model name, or the local path."""
        return self.model if self.kind == "openai" else self.model_path

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_usd_per_m + output_tokens * self.output_usd_per_m) / 1e6


@dataclass(frozen=True)
class JudgeConfig:
    """How answers become labels."""

    mode: str = doc("single: FastChat single-v1 grade 1-10 per answer; pairwise: FastChat pair-v2 verdict per "
                    "pair of candidates, both answer orders; reference: exact/numeric match against the "
                    "prompts file's `reference` column (no judge call)", default="single")
    endpoint: EndpointConfig = doc("the judge model (unused in reference mode)",
                                   default_factory=lambda: EndpointConfig(name="judge", model="gpt-4o"))
    inconsistent: str = doc("pairwise: a verdict that flips with the answer order counts as a tie in the "
                            "outcome table (tie) or is left out (drop)", default="tie")
    numeric_tolerance: float = doc("reference: two numbers match when they differ by at most this "
                                   "(absolute, answer units)", default=1e-6)

    def __post_init__(self) -> None:
        if self.mode not in JUDGE_MODES:
            raise ValueError(f"judge.mode '{self.mode}' is unknown; use one of {', '.join(JUDGE_MODES)}")
        if self.inconsistent not in ("tie", "drop"):
            raise ValueError(f"judge.inconsistent must be tie or drop, got '{self.inconsistent}'")
        if self.numeric_tolerance < 0:
            raise ValueError("judge.numeric_tolerance must be >= 0")


@dataclass(frozen=True)
class LabelConfig:
    """Top-level label config (see configs/label/example.yaml)."""

    name: str = doc("label set name; written to <output_root>/<name>/<version>", default="labels")
    prompts: str = doc("prompts file: JSONL or CSV with prompt_id, prompt[, task, reference]", default="")
    output_root: str = doc("where versioned label sets are written", default="data/labels")
    version: str = doc("label set version; empty: a fingerprint of the prompts, models, judge and "
                       "template versions", default="")
    cache_path: str = doc("SQLite call cache shared by runs: a call already answered is never made again",
                          default="data/labels/cache.sqlite")
    spend_cap_usd: float = doc("most the whole label set may cost (USD, calls answered from the cache count at "
                               "their token cost); the run stops cleanly before exceeding it", default=5.0)
    max_prompts: int | None = doc("label only the first N prompts (quick runs); None: all", default=None)
    progress: bool = doc("show a progress bar (calls, calls/s, USD spent) on stderr", default=True)
    candidates: list[EndpointConfig] = doc("the candidate models to answer every prompt",
                                           default_factory=list)
    judge: JudgeConfig = doc("how answers are judged", default_factory=JudgeConfig)

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("`prompts` is required: a JSONL or CSV file with prompt_id, prompt[, task, reference]")
        if not self.candidates:
            raise ValueError("the config lists no candidates; add at least one under `candidates:`")
        names = [c.name for c in self.candidates]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"candidate names must be unique; repeated: {', '.join(dupes)}")
        if self.judge.mode == "pairwise" and len(self.candidates) < 2:
            raise ValueError("judge.mode pairwise needs at least two candidates")
        if self.spend_cap_usd < 0:
            raise ValueError(f"spend_cap_usd must be >= 0, got {self.spend_cap_usd}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError(f"max_prompts must be >= 1 or null, got {self.max_prompts}")
        if self.version and not re.fullmatch(r"[A-Za-z0-9._-]+", self.version):
            raise ValueError(f"version '{self.version}' may hold only letters, digits, '.', '_' and '-'")

