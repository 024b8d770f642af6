"""Random-init DeBERTa-v2 backbones built in-process, for tests and benchmarks where nothing can be downloaded.

A backbone spec `random-deberta:<preset>:<dir>` (see `routerforge.models.difficulty.load_backbone`) names
one of these; the first use builds it into `<dir>` and every later use loads it from there:

    <dir>/config.json, model.safetensors    DebertaV2Model, random init (seeded), save_pretrained format
    <dir>/spm.model                         SentencePiece unigram model trained here (DeBERTa-v3's tokenizer kind)
    <dir>/tokenizer.json, tokenizer_config.json   DebertaV2Tokenizer built from spm.model
    <dir>/build.json                        preset, seed, corpus file and its sha256

so `AutoModel.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)` read it like any Hub model.
The tokenizer is trained on REAL prompts: the first user turn of the 1,135 Chatbot Arena battles shipped
in data/chatbot_arena/arena_battles_1k.jsonl.

Presets:
  tiny              hidden 32, 2 layers, 2 heads, 2,000-piece vocabulary: recipe tests run in seconds on CPU.
  deberta-v3-small  microsoft/deberta-v3-small's architecture (hidden 768, 6 layers, 12 heads, FFN 3072,
                    relative attention with 256 position buckets, 128,100-row embedding table), random init,
                    for throughput benchmarks on a GPU without the Hub. Its tokenizer is our small
                    SentencePiece model (4,000 pieces), so texts split into more tokens than with the real
                    128k vocabulary; truncation at model.max_seq_tokens bounds the difference.
  deberta-v3-base   microsoft/deberta-v3-base's architecture: the same with 12 layers (184M parameters, 98M of
                    them the embedding table), same tokenizer caveat; the GPU check's larger-encoder run.

Build is deterministic (SentencePiece with one thread, weights from a fixed seed in a forked RNG that leaves
the caller's RNG untouched) and atomic (a temporary sibling directory renamed into place), so two processes
that race to build the same directory end with identical files.

    python -m routerforge.models.tiny_backbones tiny checkpoints/backbones/tiny-deberta
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import torch

from routerforge.errors import ConfigError
from routerforge.io.atomic import DestinationExistsError, atomic_directory
from routerforge.io.digest import sha256_file

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_CORPUS = REPO_ROOT / "data" / "chatbot_arena" / "arena_battles_1k.jsonl"
BUILD_FILE = "build.json"
INIT_SEED = 1234

# DebertaV2Config overrides per preset. The fixed part is DeBERTa-v3's: relative attention, c2p + p2c
# disentangled attention, shared attention keys, LayerNorm on relative embeddings, no absolute positions.
_DEBERTA_V3 = {
    "relative_attention": True,
    "pos_att_type": ["p2c", "c2p"],
    "share_att_key": True,
    "norm_rel_ebd": "layer_norm",
    "max_relative_positions": -1,
    "position_biased_input": False,
    "max_position_embeddings": 512,
    "type_vocab_size": 0,
    "layer_norm_eps": 1e-7,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "pad_token_id": 0,
}
PRESETS: dict[str, dict] = {
    "tiny": {"spm_vocab_size": 2000, "model_vocab_size": None, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 64, "position_buckets": 32},
    "deberta-v3-small": {"spm_vocab_size": 4000, "model_vocab_size": 128100, "hidden_size": 768,
                         "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 3072,
                         "position_buckets": 256},
    "deberta-v3-base": {"spm_vocab_size": 4000, "model_vocab_size": 128100, "hidden_size": 768,
                        "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                        "position_buckets": 256},
}
# DeBERTa-v3's special-token ids: [PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3; [MASK] is a user-defined piece.
_SPM_SPECIALS = {"pad_id": 0, "pad_piece": "[PAD]", "bos_id": 1, "bos_piece": "[CLS]", "eos_id": 2,
                 "eos_piece": "[SEP]", "unk_id": 3, "unk_piece": "[UNK]", "user_defined_symbols": ["[MASK]"]}


def corpus_prompts(path: Path = TOKENIZER_CORPUS) -> list[str]:
    """The first user turn of every battle in the bundled Chatbot Arena sample."""
    prompts = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            turns = json.loads(line).get("turns") or []
            if turns and turns[0].strip():
                prompts.append(turns[0])
    return prompts


def train_sentencepiece(texts: list[str], vocab_size: int) -> bytes:
    """A SentencePiece unigram model (bytes of spm.model) with DeBERTa-v3's special tokens."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buffer, model_type="unigram", vocab_size=vocab_size,
        character_coverage=0.9995, max_sentence_length=100_000, num_threads=1, shuffle_input_sentence=False,
        minloglevel=2, **_SPM_SPECIALS)
    return buffer.getvalue()


def deberta_config(preset: str, tokenizer_vocab_size: int):
    from transformers import DebertaV2Config

    spec = PRESETS[preset]
    arch = {k: v for k, v in spec.items() if k not in ("spm_vocab_size", "model_vocab_size")}
    vocab_size = spec["model_vocab_size"] or tokenizer_vocab_size
    return DebertaV2Config(vocab_size=vocab_size, **arch, **_DEBERTA_V3)


def _check_existing(target: Path, preset: str) -> None:
    build = target / BUILD_FILE
    if not build.is_file():
        raise ConfigError(f"{target} exists but is not a random-deberta backbone (no {BUILD_FILE}); point the "
                          f"spec at an empty or new directory.")
    built = json.loads(build.read_text(encoding="utf-8")).get("preset")
    if built != preset:
        raise ConfigError(f"{target} holds a '{built}' random-deberta backbone, not '{preset}'; use another "
                          f"directory for the '{preset}' preset.")


def ensure_random_deberta(preset: str, target: str | Path) -> Path:
    """Build the preset into `target` unless it is already there; return the directory."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown random-deberta preset '{preset}'; use one of {', '.join(PRESETS)}.")
    target = Path(target)
    if target.exists():
        _check_existing(target, preset)
        return target
    from transformers import AutoModel, DebertaV2Tokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_directory(target, replace=False) as tmp:
            texts = corpus_prompts()
            spm_bytes = train_sentencepiece(texts, PRESETS[preset]["spm_vocab_size"])
            (tmp / "spm.model").write_bytes(spm_bytes)
            # transformers 5: DebertaV2Tokenizer(vocab_file=...) ignores the file; from_pretrained(dir) converts it.
            tokenizer = DebertaV2Tokenizer.from_pretrained(str(tmp))
            tokenizer.model_max_length = 512
            tokenizer.save_pretrained(str(tmp))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(INIT_SEED)
                model = AutoModel.from_config(deberta_config(preset, len(tokenizer)))
            model.save_pretrained(str(tmp))
            (tmp / BUILD_FILE).write_text(json.dumps({
                "preset": preset, "init_seed": INIT_SEED, "architecture": PRESETS[preset],
                "tokenizer_corpus": str(TOKENIZER_CORPUS.relative_to(REPO_ROOT)),
                "tokenizer_corpus_sha256": sha256_file(TOKENIZER_CORPUS),
                "tokenizer_corpus_prompts": len(texts),
            }, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    except DestinationExistsError:  # another process finished the same build first: its files are identical
        _check_existing(target, preset)
    return target


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: python -m routerforge.models.tiny_backbones {{{'|'.join(PRESETS)}}} <dir>")
    print(ensure_random_deberta(sys.argv[1], sys.argv[2]))
