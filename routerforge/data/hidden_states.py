"""Data-prep stage 'hidden_states': run an LM over prompts and store what uncertainty probes and baselines read.

    python data_prep/hidden_states.py --config configs/probe/default.yaml [features.key=value ...]
    accelerate launch --config_file launch/accelerate/cpu_2proc.yaml data_prep/hidden_states.py --config ...

Input: the prompts of a prepared dataset (its prompts table per split, plus its held-out evaluation sets),
or a JSONL prompts file (`prompt`, optional `prompt_id`, optional `response`). Each distinct prompt is run
once through the LM (any transformers model: a Hub id, a local directory, or `packaged:all-MiniLM-L6-v2`),
optionally over prompt + response. Stored per prompt:

* per chosen layer (`hidden_states` tuple index: 0 = embeddings, i = output of block i), pooled hidden
  states: `last` (the last token of the sequence), `prompt_last` (the last prompt token, "the token
  before generation"; equal to `last` without a response) and `mean` (mean over all non-padding tokens);
* for a causal LM: the sum / count / minimum of the token log-probs of the prompt (and of the response),
  the next-token logits of the multiple-choice option tokens at the last prompt token (e.g. " A".." D"
  after "Answer:"; MSP and CP-Router read them), and, optionally, a generated verbalized confidence;
* token counts and how many tokens left truncation dropped (the END of a prompt is kept: it holds the
  question's "Answer:" cue).

An encoder (e.g. the packaged MiniLM) can stand in for the LM offline: it has hidden states but no token
log-probs, options or generation. The index then says `stand_in: true`, and so does every report.

Probing practice followed: Kadavath et al., "Language Models (Mostly) Know What They Know" (arXiv
2207.05221: P(IK) heads on the model's own states over the question); Azaria & Mitchell, "The Internal
State of an LLM Knows When It's Lying" (arXiv 2304.13734: MLP probes, per-layer); Kossen et al.,
"Semantic Entropy Probes" (arXiv 2406.15927: linear probes per layer on the token before generation and
the last token). Hence every layer and several token positions are stored, and the probe recipe chooses.

Output (`<dataset version dir>/hidden_states/<lm-slug>/` unless `output_dir` is set)::

    plan.json                 settings, their fingerprint, the ordered prompt ids, the shard boundaries
    shard-00000.safetensors   rows [0, shard_size): tensors below; metadata: prompt ids (JSON)
    ...
    index.json                plan + LM id/revision, hidden size, tensor shapes, sha256 of every shard
    COMPLETE                  written last

Resumable: a shard is written to a temporary name and renamed into place, so a shard file that exists is
complete; a re-run skips it (after checking its prompt ids) and computes only the missing ones. A re-run
with other settings or other prompts in the same directory is refused (plan fingerprint).

Sharded across processes: shard j is computed by process j mod world_size. A shard's rows, their order
and their micro-batches are a function of the plan alone (not of the rank), so a run with N processes
writes byte-identical files to a run with one (tests/unit/data/test_hidden_states.py checks 2 vs 1).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from routerforge.config import config_to_dict, doc, load_config
from routerforge.data.records import prompt_id_for
from routerforge.errors import ConfigError, DataError, RouterForgeError
from routerforge.io.atomic import atomic_write_text
from routerforge.io.names import COMPLETE_MARKER

logger = logging.getLogger(__name__)

FORMAT = "routerforge-hidden-states"
FORMAT_VERSION = 1
PLAN_FILE = "plan.json"
INDEX_FILE = "index.json"
POOLINGS = ("last", "prompt_last", "mean")
LM_KINDS = ("auto", "causal_lm", "encoder")
DTYPES = ("auto", "float32", "bfloat16", "float16")
STORAGE_DTYPES = ("float32", "float16")
_SHARD = "shard-{:05d}.safetensors"
_META_KEY = "routerforge"


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VerbalizedConfig:
    """Ask the LM for its own confidence (a generation), for the verbalized-confidence baseline."""

    enabled: bool = doc("generate a verbalized confidence per prompt (causal LMs only; costs a generation)",
                        default=False)
    template: str = doc("prompt asking for the confidence; {prompt} is replaced by the prompt text",
                        default="{prompt}\n\nHow likely (0-100%) is it that you answer this question correctly? "
                                "Reply with one number.\nConfidence:")
    max_new_tokens: int = doc("tokens generated for the answer (tokens)", default=8)

    def __post_init__(self) -> None:
        if "{prompt}" not in self.template:
            raise ValueError("features.lm.verbalized.template must contain {prompt}")
        if self.max_new_tokens < 1:
            raise ValueError(f"features.lm.verbalized.max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class LMFeatureConfig:
    """The LM whose states are read, and how prompts are fed to it."""

    model: str = doc("Hub id, local model directory, or packaged:all-MiniLM-L6-v2 (an encoder STAND-IN for "
                     "offline runs)", default="packaged:all-MiniLM-L6-v2")
    revision: str | None = doc("Hub revision (commit sha or tag); None: main. Local models are pinned by the "
                               "sha256 of their files", default=None)
    kind: str = doc("auto (from the model config's architectures), causal_lm or encoder", default="auto")
    dtype: str = doc("compute dtype: auto (bfloat16 on a GPU that has it, else float32), float32, bfloat16, "
                     "float16 (GPU only)", default="auto")
    storage_dtype: str = doc("dtype of the stored hidden states: float16 (half the disk) or float32",
                             default="float16")
    max_length: int = doc("truncate each sequence to this many tokens, dropping its START (tokens)", default=512)
    prompt_template: str = doc("text fed to the LM; {prompt} is replaced by the prompt", default="{prompt}")
    use_chat_template: bool = doc("wrap the templated prompt in the tokenizer's chat template (user turn + "
                                  "generation prompt)", default=False)
    include_response: bool = doc("run over prompt + response (prompts file with a `response` field); the "
                                 "response's token log-probs are stored too", default=False)
    layers: list[int] = doc("hidden_states indices to store (0 = embeddings, -1 = last block); empty: all",
                            default_factory=list)
    poolings: list[str] = doc("token poolings to store: last, prompt_last, mean",
                              default_factory=lambda: ["last", "mean"])
    option_tokens: list[str] = doc("multiple-choice option strings whose next-token logits are stored at the "
                                   "last prompt token, each ONE token (e.g. ' A', ' B', ' C', ' D'); causal "
                                   "LMs only; empty: none", default_factory=list)
    micro_batch_size: int = doc("sequences per forward pass (sequences)", default=8)
    verbalized: VerbalizedConfig = doc("verbalized-confidence generation", default_factory=VerbalizedConfig)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("features.lm.model must not be empty")
        if self.kind not in LM_KINDS:
            raise ValueError(f"features.lm.kind must be one of {', '.join(LM_KINDS)}, got '{self.kind}'")
        if self.dtype not in DTYPES:
            raise ValueError(f"features.lm.dtype must be one of {', '.join(DTYPES)}, got '{self.dtype}'")
        if self.storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"features.lm.storage_dtype must be one of {', '.join(STORAGE_DTYPES)}, "
                             f"got '{self.storage_dtype}'")
        if self.max_length < 2:
            raise ValueError(f"features.lm.max_length must be >= 2 tokens, got {self.max_length}")
        if "{prompt}" not in self.prompt_template:
            raise ValueError("features.lm.prompt_template must contain {prompt}")
        if (not self.poolings or any(p not in POOLINGS for p in self.poolings)
                or len(set(self.poolings)) != len(self.poolings)):
            raise ValueError(f"features.lm.poolings must be distinct values of {', '.join(POOLINGS)}, "
                             f"got {list(self.poolings)}")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"features.lm.layers has duplicates: {list(self.layers)}")
        if len(set(self.option_tokens)) != len(self.option_tokens) or len(self.option_tokens) == 1:
            raise ValueError(f"features.lm.option_tokens must be empty or >= 2 distinct strings, "
                             f"got {list(self.option_tokens)}")
        if self.micro_batch_size < 1:
            raise ValueError(f"features.lm.micro_batch_size must be >= 1, got {self.micro_batch_size}")


@dataclass(frozen=True)
class HiddenStatesConfig:
    """The hidden-state extraction stage: which prompts, which LM, where the shards go."""

    dataset: str | None = doc("prepared dataset: a version directory or its parent holding LATEST (path)",
                              default="data/processed/demo")
    prompts_file: str | None = doc("instead of a dataset: JSONL with `prompt` (+ optional `prompt_id`, "
                                   "`response`) per line (path); needs output_dir", default=None)
    splits: list[str] = doc("dataset splits whose prompts are run",
                            default_factory=lambda: ["train", "validation", "test"])
    eval_sets: list[str] = doc("dataset evaluation sets (eval/<name>.jsonl) whose prompts are run; ['*']: all",
                               default_factory=lambda: ["*"])
    max_prompts: int | None = doc("run only the first N prompts in prompt-id order (for quick runs); None: all",
                                  default=None)
    lm: LMFeatureConfig = doc("the LM", default_factory=LMFeatureConfig)
    output_dir: str | None = doc("where the shards go (path); None: <dataset version dir>/hidden_states/<lm-slug>",
                                 default=None)
    shard_size: int = doc("prompts per shard, the unit of resumption and of work per process (prompts)",
                          default=256)

    def __post_init__(self) -> None:
        if bool(self.dataset) == bool(self.prompts_file):
            raise ValueError("set exactly one of features.dataset and features.prompts_file "
                             "(features.dataset=null to use a prompts file)")
        if self.prompts_file and not self.output_dir:
            raise ValueError("features.prompts_file needs features.output_dir (where the shards go)")
        if self.lm.include_response and not self.prompts_file:
            raise ValueError("features.lm.include_response needs features.prompts_file with a `response` per line "
                             "(prepared datasets hold no responses)")
        if self.shard_size < 1:
            raise ValueError(f"features.shard_size must be >= 1, got {self.shard_size}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError(f"features.max_prompts must be >= 1 or null, got {self.max_prompts}")


def load_stage_config(path: str | Path | None, overrides: list[str] | None = None) -> HiddenStatesConfig:
    """The stage's config from a YAML file: a recipe file's `features:` section, or a file that is that section.

    Overrides address the section with or without the `features.` prefix (`features.lm.model=x` or
    `lm.model=x`), so the stage and training/train_probe.py take the same command line for it.
    """
    section: dict = {}
    origin = "config"
    if path is not None:
        path = Path(path)
        origin = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}. Pass an existing YAML file with --config.")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config keys.")
        section = data["features"] if "features" in data else data
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: `features` must be a mapping of config keys.")
    stage_keys = {f.name for f in dataclasses.fields(HiddenStatesConfig)}
    stripped = []
    for override in overrides or []:
        key = override.partition("=")[0].strip()
        if key.startswith("features."):
            stripped.append(override.strip()[len("features."):])
        elif key.split(".")[0] in stage_keys or "=" not in override:
            stripped.append(override)  # a stage key without the prefix (or malformed: load_config says so)
        # any other key (run., optim., probe., data., ...) belongs to the recipe, not to this stage
    with tempfile.TemporaryDirectory() as tmp:
        section_file = Path(tmp) / "features.yaml"
        section_file.write_text(yaml.safe_dump(section), encoding="utf-8")
        try:
            return load_config(HiddenStatesConfig, section_file, stripped)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace(str(section_file), f"{origin} (features section)")) from None


# --------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptRow:
    prompt_id: str
    prompt: str
    response: str | None
    group: str  # split name, "eval/<name>", or "file"


def _read_prompts_file(path: Path, include_response: bool) -> list[PromptRow]:
    if not path.is_file():
        raise DataError(f"features.prompts_file not found: {path}.")
    rows: list[PromptRow] = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: not valid JSON ({exc.msg}).") from None
            prompt = obj.get("prompt") if isinstance(obj, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise DataError(f"{path}:{line_no}: `prompt` must be a non-empty string.")
            response = obj.get("response")
            if include_response and not isinstance(response, str):
                raise DataError(f"{path}:{line_no}: features.lm.include_response is set but the line has no "
                                f"string `response`.")
            rows.append(PromptRow(str(obj.get("prompt_id") or prompt_id_for(prompt)), prompt,
                                  response if include_response else None, "file"))
    return rows


def _read_dataset_prompts(cfg: HiddenStatesConfig) -> tuple[list[PromptRow], Path]:
    from routerforge.data.dataset_io import load_prepared

    data = load_prepared(cfg.dataset)
    rows: list[PromptRow] = []
    for split in cfg.splits:
        if split not in data.prompts:
            raise DataError(f"{data.path}: no split '{split}' (has {', '.join(data.prompts)}); set features.splits.")
        table = data.prompts[split]
        rows += [PromptRow(pid, text, None, split)
                 for pid, text in zip(table["prompt_id"], table["prompt"], strict=True)]
    available = data.eval_sets()
    wanted = list(available) if cfg.eval_sets == ["*"] else list(cfg.eval_sets)
    for name in wanted:
        if name not in available:
            raise DataError(f"{data.path}: no evaluation set '{name}' (has {', '.join(available) or 'none'}); "
                            f"set features.eval_sets.")
        with open(available[name], encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    obj = json.loads(line)
                    rows.append(PromptRow(obj["prompt_id"], obj["prompt"], None, f"eval/{name}"))
    return rows, data.path


def gather_prompts(cfg: HiddenStatesConfig) -> tuple[list[PromptRow], Path | None]:
    """Distinct prompts in prompt-id order (the first group a prompt appears in names it), and the dataset dir."""
    if cfg.prompts_file:
        rows, dataset_dir = _read_prompts_file(Path(cfg.prompts_file), cfg.lm.include_response), None
    else:
        rows, dataset_dir = _read_dataset_prompts(cfg)
    first: dict[str, PromptRow] = {}
    for row in rows:
        seen = first.get(row.prompt_id)
        if seen is None:
            first[row.prompt_id] = row
        elif (seen.prompt, seen.response) != (row.prompt, row.response):
            raise DataError(f"prompt id {row.prompt_id} names two different texts (groups {seen.group} and "
                            f"{row.group}); prompt ids must be unique per text.")
    ordered = [first[pid] for pid in sorted(first)]
    if cfg.max_prompts is not None:
        ordered = ordered[: cfg.max_prompts]
    if not ordered:
        raise DataError("no prompts to run: the selected splits / evaluation sets / file are empty.")
    return ordered, dataset_dir


# --------------------------------------------------------------------------------------------------
# The extractor: one LM, any batch of prompts -> pooled states and log-prob statistics (in memory)
# --------------------------------------------------------------------------------------------------
def _resolve_dtype(name: str, device_type: str):
    import torch

    if name == "auto":
        if device_type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name == "float16" and device_type != "cuda":
        raise ConfigError("features.lm.dtype=float16 needs a CUDA GPU (this run is on CPU); use bfloat16 or float32.")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _detect_kind(config, requested: str, spec: str) -> str:
    if requested != "auto":
        return requested
    architectures = list(getattr(config, "architectures", None) or [])
    if any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in architectures):
        return "causal_lm"
    if architectures:
        return "encoder"
    raise ConfigError(f"features.lm.model '{spec}': its config names no architectures; set features.lm.kind to "
                      f"causal_lm or encoder.")


def lm_slug(source, revision: str) -> str:
    """A directory name for one LM: a Hub (or packaged) id with '/' -> '__'; a local directory's name plus
    the first 8 hex digits of its content fingerprint (two different local models never share a slug)."""
    from routerforge.encoders.model_source import PACKAGED_PREFIX

    local_dir = source.is_local and not source.spec.startswith(PACKAGED_PREFIX)
    base = f"{Path(source.name).name}-{revision.split(':')[-1][:8]}" if local_dir else source.name
    return re.sub(r"[^A-Za-z0-9._-]+", "__", base).strip("_") or "lm"


class HiddenStateExtractor:
    """Loads the LM once; `extract(rows)` returns the per-row arrays of one batch list (numpy, float32/int64)."""

    def __init__(self, cfg: LMFeatureConfig, device: str | None = None) -> None:
        import torch
        from transformers import AutoConfig, AutoTokenizer

        from routerforge.encoders.model_source import load_error, resolve_model_source, resolve_revision

        self.cfg = cfg
        self.source = resolve_model_source(cfg.model, cfg.revision)
        kwargs = {} if self.source.is_local else {"revision": cfg.revision}
        try:
            self.model_config = AutoConfig.from_pretrained(self.source.load_from, **kwargs)
            self.revision = resolve_revision(self.source, lambda: AutoConfig.from_pretrained(
                self.source.load_from, **kwargs))
            self.tokenizer = AutoTokenizer.from_pretrained(self.source.load_from, **kwargs)
        except RouterForgeError:
            raise
        except (OSError, ValueError, RuntimeError) as exc:
            raise load_error(self.source, exc) from None
        self.kind = _detect_kind(self.model_config, cfg.kind, cfg.model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = _resolve_dtype(cfg.dtype, self.device.type)
        if self.kind == "encoder":
            if cfg.option_tokens or cfg.verbalized.enabled:
                raise ConfigError(f"features.lm.model '{cfg.model}' is an encoder: it has no next-token logits, so "
                                  f"features.lm.option_tokens must be empty and features.lm.verbalized.enabled false.")
        self.option_ids = self._option_token_ids()
        self._model = None
        self.num_hidden_states = int(self.model_config.num_hidden_layers) + 1
        self.hidden_size = int(self.model_config.hidden_size)
        self.layers = self._resolve_layers()
        self.pad_id = self._pad_id()

    # -- setup helpers --
    def _option_token_ids(self) -> list[int]:
        ids = []
        for option in self.cfg.option_tokens:
            encoded = self.tokenizer(option, add_special_tokens=False)["input_ids"]
            if len(encoded) != 1:
                raise ConfigError(f"features.lm.option_tokens: {option!r} is {len(encoded)} tokens for "
                                  f"{self.cfg.model}'s tokenizer; each option must be one token (try with or "
                                  f"without a leading space).")
            ids.append(int(encoded[0]))
        return ids

    def _resolve_layers(self) -> list[int]:
        n = self.num_hidden_states
        if not self.cfg.layers:
            return list(range(n))
        out = []
        for layer in self.cfg.layers:
            resolved = layer + n if layer < 0 else layer
            if not 0 <= resolved < n:
                raise ConfigError(f"features.lm.layers: {layer} is out of range for {self.cfg.model}, which has "
                                  f"{n} hidden states (0 = embeddings .. {n - 1} = last block).")
            out.append(resolved)
        if len(set(out)) != len(out):
            raise ConfigError(f"features.lm.layers {list(self.cfg.layers)} name the same layer twice.")
        return out

    def _pad_id(self) -> int:
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0):
            if candidate is not None:
                return int(candidate)
        return 0

    @property
    def stand_in(self) -> bool:
        """An encoder is never the routed LLM itself: its states only stand in for the LLM's."""
        return self.kind == "encoder"

    def describe(self) -> dict:
        return {"spec": self.cfg.model, "id": self.source.name, "revision": self.revision, "kind": self.kind,
                "stand_in": self.stand_in, "num_hidden_states": self.num_hidden_states,
                "hidden_size": self.hidden_size, "compute_dtype": str(self.dtype).replace("torch.", ""),
                "option_token_ids": self.option_ids}

    def model(self):
        if self._model is None:
            from transformers import AutoModel, AutoModelForCausalLM

            from routerforge.encoders.model_source import load_error

            cls = AutoModelForCausalLM if self.kind == "causal_lm" else AutoModel
            kwargs = {} if self.source.is_local else {"revision": self.cfg.revision}
            try:
                model = cls.from_pretrained(self.source.load_from, dtype=self.dtype, **kwargs)
            except (OSError, ValueError, RuntimeError) as exc:
                raise load_error(self.source, exc) from None
            self._model = model.to(self.device).eval()
        return self._model

    # -- tokenisation --
    def _prompt_text(self, prompt: str, template: str) -> str:
        text = template.replace("{prompt}", prompt)
        if self.cfg.use_chat_template:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return text

    def _encode(self, row: PromptRow) -> tuple[list[int], int, int]:
        """(token ids, prompt length after truncation, tokens dropped from the start)."""
        prompt_text = self._prompt_text(row.prompt, self.cfg.prompt_template)
        # verbose=False: the whole text is tokenised before OUR left truncation; no "too long" warning for it
        ids = list(self.tokenizer(prompt_text, add_special_tokens=not self.cfg.use_chat_template,
                                  verbose=False)["input_ids"])
        prompt_len = len(ids)
        if row.response is not None:
            ids += list(self.tokenizer(row.response, add_special_tokens=False, verbose=False)["input_ids"])
        dropped = max(0, len(ids) - self.cfg.max_length)
        return ids[dropped:], max(prompt_len - dropped, 0), dropped

    def batches(self, rows: list[PromptRow]) -> list[list[int]]:
        """Micro-batches of row positions, longest first (stable), so padding is small. Depends only on `rows`."""
        lengths = [len(self._encode(r)[0]) for r in rows]
        order = sorted(range(len(rows)), key=lambda i: -lengths[i])
        size = self.cfg.micro_batch_size
        return [order[i:i + size] for i in range(0, len(order), size)]

    # -- compute --
    def extract(self, rows: list[PromptRow], batches: list[list[int]] | None = None) -> dict[str, np.ndarray | list]:
        """Every stored array for `rows` (row order kept). Pass `batches` to fix the micro-batching."""
        import torch

        n = len(rows)
        n_layers = len(self.layers)
        out: dict[str, np.ndarray | list] = {
            f"hidden.{p}": np.zeros((n, n_layers, self.hidden_size), dtype=np.float32) for p in self.cfg.poolings}
        out["token_count"] = np.zeros(n, dtype=np.int64)
        out["truncated_tokens"] = np.zeros(n, dtype=np.int64)
        causal = self.kind == "causal_lm"
        if causal:
            for part in ("prompt", "response") if self.cfg.include_response else ("prompt",):
                out[f"{part}_logprob_sum"] = np.zeros(n, dtype=np.float32)
                out[f"{part}_logprob_count"] = np.zeros(n, dtype=np.int64)
                out[f"{part}_logprob_min"] = np.zeros(n, dtype=np.float32)
            if self.option_ids:
                out["option_logits"] = np.zeros((n, len(self.option_ids)), dtype=np.float32)
        model = self.model()
        layer_index = torch.tensor(self.layers)
        for batch in batches if batches is not None else self.batches(rows):
            encoded = [self._encode(rows[i]) for i in batch]
            width = max(len(ids) for ids, _, _ in encoded)
            input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, (ids, _, _) in enumerate(encoded):  # right padding: causal attention never sees the pads
                input_ids[b, : len(ids)] = torch.tensor(ids)
                mask[b, : len(ids)] = 1
            with torch.inference_mode():
                result = model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                               output_hidden_states=True)
                states = torch.stack([result.hidden_states[i] for i in layer_index.tolist()], dim=1).float()
                for b, (ids, prompt_len, dropped) in enumerate(encoded):
                    row, length = batch[b], len(ids)
                    out["token_count"][row] = length
                    out["truncated_tokens"][row] = dropped
                    row_states = states[b, :, :length]  # [layers, tokens, d]
                    for pooling in self.cfg.poolings:
                        if pooling == "mean":
                            pooled = row_states.mean(dim=1)
                        else:
                            position = length - 1 if pooling == "last" else max(prompt_len - 1, 0)
                            pooled = row_states[:, position]
                        out[f"hidden.{pooling}"][row] = pooled.cpu().numpy()
                    if causal:
                        self._logprob_stats(out, row, result.logits[b, :length], ids, prompt_len)
        return out

    def _logprob_stats(self, out: dict, row: int, logits, ids: list[int], prompt_len: int) -> None:
        import torch

        logits = logits.float()
        targets = torch.tensor(ids[1:], device=logits.device)
        token_logprobs = torch.log_softmax(logits[:-1], dim=-1).gather(1, targets[:, None])[:, 0]
        # token t (t >= 1) is predicted at position t - 1; prompt tokens are 1..prompt_len-1
        spans = {"prompt": (0, max(prompt_len - 1, 0))}
        if self.cfg.include_response:
            spans["response"] = (max(prompt_len - 1, 0), len(ids) - 1)
        for part, (start, end) in spans.items():
            values = token_logprobs[start:end]
            out[f"{part}_logprob_sum"][row] = float(values.sum()) if len(values) else 0.0
            out[f"{part}_logprob_count"][row] = len(values)
            out[f"{part}_logprob_min"][row] = float(values.min()) if len(values) else 0.0
        if self.option_ids:
            if prompt_len == 0:
                out["option_logits"][row] = np.nan
            else:
                out["option_logits"][row] = logits[prompt_len - 1, self.option_ids].cpu().numpy()

    def verbalize(self, rows: list[PromptRow], batches: list[list[int]]) -> tuple[np.ndarray, list[str]]:
        """Greedy-generate the verbalized-confidence answer per row: (confidence or NaN, generated text)."""
        import torch

        model = self.model()
        texts = [""] * len(rows)
        for batch in batches:
            encoded = []
            for i in batch:
                text = self._prompt_text(rows[i].prompt, self.cfg.verbalized.template)
                ids = list(self.tokenizer(text, add_special_tokens=not self.cfg.use_chat_template,
                                          verbose=False)["input_ids"])
                encoded.append(ids[max(0, len(ids) - self.cfg.max_length):])
            width = max(len(ids) for ids in encoded)
            input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, ids in enumerate(encoded):  # left padding: generation continues every row at the end
                input_ids[b, width - len(ids):] = torch.tensor(ids)
                mask[b, width - len(ids):] = 1
            with torch.inference_mode():
                generated = model.generate(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                           max_new_tokens=self.cfg.verbalized.max_new_tokens, do_sample=False,
                                           pad_token_id=self.pad_id)
            for b, i in enumerate(batch):
                texts[i] = self.tokenizer.decode(generated[b, width:], skip_special_tokens=True)
        return np.array([parse_verbalized_confidence(t) for t in texts], dtype=np.float32), texts


# --------------------------------------------------------------------------------------------------
# The stage: plan, shards (resumable, one process per shard), index
# --------------------------------------------------------------------------------------------------
def _settings(cfg: HiddenStatesConfig, extractor: HiddenStateExtractor) -> dict:
    lm = config_to_dict(cfg.lm)
    return {"lm": {**lm, **extractor.describe(), "layers": extractor.layers},
            "shard_size": cfg.shard_size, "format": FORMAT, "format_version": FORMAT_VERSION}


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()


def _inputs_fingerprint(rows: list[PromptRow]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row.prompt_id, row.prompt, row.response]).encode("utf-8") + b"\n")
    return digest.hexdigest()


def default_output_dir(cfg: HiddenStatesConfig, dataset_dir: Path | None, extractor: HiddenStateExtractor) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir)
    assert dataset_dir is not None  # validated: a prompts file needs output_dir
    return dataset_dir / "hidden_states" / lm_slug(extractor.source, extractor.revision)


def _shard_metadata(handle) -> dict:
    return json.loads((handle.metadata() or {}).get(_META_KEY, "{}"))


def _shard_is_complete(path: Path, prompt_ids: list[str]) -> bool:
    from safetensors import safe_open

    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="np") as fh:
            return _shard_metadata(fh).get("prompt_ids") == prompt_ids
    except Exception as exc:  # noqa: BLE001 - a damaged shard is recomputed, whatever the damage
        logger.warning("shard %s is unreadable (%s); recomputing it", path, exc)
        return False


def _write_shard(path: Path, arrays: dict, prompt_ids: list[str], groups: list[str], storage_dtype: str,
                 verbalized_text: list[str] | None) -> None:
    from safetensors.numpy import save_file

    tensors = {}
    for name, value in arrays.items():
        arr = np.asarray(value)
        if name.startswith("hidden.") and storage_dtype == "float16":
            arr = arr.astype(np.float16)
        tensors[name] = np.ascontiguousarray(arr)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "prompt_ids": prompt_ids, "groups": groups}
    if verbalized_text is not None:
        meta["verbalized_text"] = verbalized_text
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    # ONE metadata key: safetensors writes its metadata map in a per-process random order, so several keys
    # would make the same shard's bytes differ between processes (and break the 2-vs-1-process equality).
    save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta, sort_keys=True)})
    os.replace(tmp, path)


@dataclass
class StageResult:
    output_dir: Path
    shards_total: int
    shards_computed: list[int] = field(default_factory=list)  # by this process
    shards_skipped: list[int] = field(default_factory=list)  # by this process (already complete)
    world_size: int = 1


def run_hidden_states(cfg: HiddenStatesConfig, progress: bool = True) -> StageResult:
    """Run the stage in this process; with accelerate / torchrun, every process calls this and shares the work."""
    import torch
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from routerforge.encoders import _avoid_cpu_oversubscription

    state = PartialState(cpu=not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:
        raise ConfigError(f"the launcher started {launched} processes but accelerate formed a world of "
                          f"{state.num_processes}; on CPU use `accelerate launch --multi_gpu --num_processes "
                          f"{launched}` with ACCELERATE_USE_CPU=true (or launch/accelerate/cpu_2proc.yaml).")
    _avoid_cpu_oversubscription(state)
    rows, dataset_dir = gather_prompts(cfg)
    extractor = HiddenStateExtractor(cfg.lm, device=str(state.device))
    out_dir = default_output_dir(cfg, dataset_dir, extractor)
    settings = _settings(cfg, extractor)
    prompt_ids = [r.prompt_id for r in rows]
    shards = [(s, min(s + cfg.shard_size, len(rows))) for s in range(0, len(rows), cfg.shard_size)]
    plan = {"format": FORMAT, "format_version": FORMAT_VERSION, "settings": settings,
            "settings_fingerprint": _fingerprint(settings), "inputs_fingerprint": _inputs_fingerprint(rows),
            "dataset": str(dataset_dir) if dataset_dir else None, "prompts_file": cfg.prompts_file,
            "n_rows": len(rows), "prompt_ids": prompt_ids, "groups": [r.group for r in rows],
            "shards": [{"file": _SHARD.format(j), "rows": [a, b]} for j, (a, b) in enumerate(shards)]}
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        plan_path = out_dir / PLAN_FILE
        if plan_path.is_file():
            old = json.loads(plan_path.read_text(encoding="utf-8"))
            for key, what in (("settings_fingerprint", "LM settings"), ("inputs_fingerprint", "prompts")):
                if old.get(key) != plan[key]:
                    raise DataError(f"{out_dir} holds hidden states of other {what} (its {PLAN_FILE} differs); "
                                    f"set features.output_dir to a new directory, or delete {out_dir}.")
        else:
            atomic_write_text(plan_path, json.dumps(plan, indent=1, sort_keys=True) + "\n")
    state.wait_for_everyone()
    result = StageResult(output_dir=out_dir, shards_total=len(shards), world_size=state.num_processes)
    if store_is_complete(out_dir):
        result.shards_skipped = list(range(state.process_index, len(shards), state.num_processes))
        return result
    mine = list(range(state.process_index, len(shards), state.num_processes))
    bar = tqdm(total=len(shards), desc="hidden states", unit="shard",
               disable=not (progress and state.is_main_process))
    for j in mine:
        start, end = shards[j]
        path = out_dir / _SHARD.format(j)
        shard_rows = rows[start:end]
        if _shard_is_complete(path, prompt_ids[start:end]):
            result.shards_skipped.append(j)
        else:
            batches = extractor.batches(shard_rows)
            arrays = extractor.extract(shard_rows, batches)
            texts = None
            if cfg.lm.verbalized.enabled:
                arrays["verbalized_confidence"], texts = extractor.verbalize(shard_rows, batches)
            _write_shard(path, arrays, prompt_ids[start:end], [r.group for r in shard_rows], cfg.lm.storage_dtype,
                         texts)
            result.shards_computed.append(j)
        bar.update(state.num_processes)
    bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        _write_index(out_dir, plan, extractor)
    state.wait_for_everyone()
    return result


def _write_index(out_dir: Path, plan: dict, extractor: HiddenStateExtractor) -> None:
    from safetensors import safe_open

    from routerforge.io.digest import sha256_file

    files, tensors = {}, {}
    for shard in plan["shards"]:
        path = out_dir / shard["file"]
        if not _shard_is_complete(path, plan["prompt_ids"][shard["rows"][0]:shard["rows"][1]]):
            raise DataError(f"{path} is missing or incomplete after every process finished; re-run the stage.")
        files[shard["file"]] = sha256_file(path)
        with safe_open(str(path), framework="np") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open has keys(), not __iter__
                t = fh.get_slice(name)
                tensors[name] = {"dtype": str(t.get_dtype()), "shape_per_row": list(t.get_shape()[1:])}
    index = {**{k: v for k, v in plan.items() if k not in ("prompt_ids", "groups")}, "lm": extractor.describe(),
             "layers": extractor.layers, "poolings": list(extractor.cfg.poolings),
             "option_tokens": list(extractor.cfg.option_tokens), "tensors": tensors, "files": files}
    atomic_write_text(out_dir / INDEX_FILE, json.dumps(index, indent=1, sort_keys=True) + "\n")
    atomic_write_text(out_dir / COMPLETE_MARKER, "ok\n")


# --------------------------------------------------------------------------------------------------
# Reading the stage's output
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class HiddenStates:
    """A complete hidden-state store: the prompt ids in row order and every stored tensor, concatenated."""

    path: Path
    index: dict
    prompt_ids: list[str]
    groups: list[str]
    arrays: dict[str, np.ndarray]
    verbalized_text: list[str] | None

    @property
    def lm(self) -> dict:
        return dict(self.index["lm"])

    @property
    def layers(self) -> list[int]:
        return list(self.index["layers"])

    @property
    def poolings(self) -> list[str]:
        return list(self.index["poolings"])

    def rows(self, prompt_ids: list[str], where: str = "") -> np.ndarray:
        """Row positions of `prompt_ids`; DataError naming the first one the store lacks."""
        position = {pid: i for i, pid in enumerate(self.prompt_ids)}
        missing = [pid for pid in prompt_ids if pid not in position]
        if missing:
            raise DataError(f"{self.path}: no hidden states for {len(missing)} prompt(s){where}, e.g. {missing[0]}; "
                            f"re-run data_prep/hidden_states.py over the same dataset.")
        return np.array([position[pid] for pid in prompt_ids], dtype=np.int64)

    def features(self, pooling: str) -> np.ndarray:
        """[rows, stored layers, hidden size] float32 for one pooling."""
        key = f"hidden.{pooling}"
        if key not in self.arrays:
            raise DataError(f"{self.path}: pooling '{pooling}' was not stored (has {', '.join(self.poolings)}).")
        return self.arrays[key].astype(np.float32, copy=False)

    def get(self, name: str) -> np.ndarray | None:
        return self.arrays.get(name)


def load_hidden_states(path: str | Path, verify: bool = True) -> HiddenStates:
    """Read a complete store (all shards concatenated in plan order); `verify` checks every shard's sha256."""
    from safetensors import safe_open

    from routerforge.io.digest import sha256_file

    path = Path(path)
    if not store_is_complete(path):
        raise DataError(f"{path} is not a complete hidden-state store (no {COMPLETE_MARKER}); run "
                        f"data_prep/hidden_states.py (it resumes where it stopped).")
    index = json.loads((path / INDEX_FILE).read_text(encoding="utf-8"))
    if index.get("format") != FORMAT or index.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: hidden-state format {index.get('format_version')} but this RouterForge reads "
                        f"{FORMAT_VERSION}; re-run data_prep/hidden_states.py.")
    parts: dict[str, list[np.ndarray]] = {}
    prompt_ids: list[str] = []
    groups: list[str] = []
    texts: list[str] = []
    has_text = True
    for shard in index["shards"]:
        file = path / shard["file"]
        if verify and sha256_file(file) != index["files"][shard["file"]]:
            raise DataError(f"{file}: sha256 differs from {INDEX_FILE}; the store was modified. Re-run the stage "
                            f"into a new directory.")
        with safe_open(str(file), framework="np") as fh:
            meta = _shard_metadata(fh)
            prompt_ids += meta["prompt_ids"]
            groups += meta["groups"]
            if "verbalized_text" in meta:
                texts += meta["verbalized_text"]
            else:
                has_text = False
            for name in fh.keys():  # noqa: SIM118
                parts.setdefault(name, []).append(fh.get_tensor(name))
    arrays = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    return HiddenStates(path=path, index=index, prompt_ids=prompt_ids, groups=groups, arrays=arrays,
                        verbalized_text=texts if has_text and texts else None)


def store_is_complete(path: str | Path) -> bool:
    """Whether `path` holds a finished store (its COMPLETE marker is written last, after the index)."""
    return (Path(path) / COMPLETE_MARKER).is_file()


def store_dir_for(cfg: HiddenStatesConfig) -> Path:
    """Where `run_hidden_states(cfg)` writes, without loading the LM weights (config + tokenizer only)."""
    if cfg.output_dir:
        return Path(cfg.output_dir)
    from routerforge.data.dataset_io import resolve_version_dir
    from routerforge.encoders.model_source import resolve_model_source, resolve_revision

    source = resolve_model_source(cfg.lm.model, cfg.lm.revision)

    def fill_cache() -> None:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(source.load_from, revision=cfg.lm.revision)

    revision = resolve_revision(source, fill_cache)
    return resolve_version_dir(cfg.dataset) / "hidden_states" / lm_slug(source, revision)


_CONFIDENCE_NUMBER = re.compile(r"(\d+(?:\.\d+)?)\s*(%?)")


def parse_verbalized_confidence(text: str) -> float:
    """The first number in `text` as a probability: '85', '85%' and '0.85' all give 0.85; NaN if none fits.

    A number above 1 (or with a percent sign) is read on the 0-100 scale; values outside it are NaN.
    """
    match = _CONFIDENCE_NUMBER.search(text or "")
    if not match:
        return float("nan")
    value, percent = float(match.group(1)), match.group(2)
    if percent or value > 1.0:
        value /= 100.0
    return value if 0.0 <= value <= 1.0 else float("nan")
