"""The difficulty router's labels, losses, data conversion, LoRA wiring, tiny backbone and export format."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from safetensors.torch import load_file

from routerforge.data.records import OUTCOME_FEATURES, PAIR_FEATURES, make_outcome, make_pair
from routerforge.errors import ConfigError, DataError
from routerforge.models.difficulty import (
    Candidate,
    DifficultyHeads,
    DifficultyRouter,
    HeadSpec,
    LossWeights,
    apply_lora,
    best_of_n_match_probability,
    candidate_match_loss,
    difficulty_regression_loss,
    difficulty_router_loss,
    difficulty_target,
    freeze_unused_parameters,
    load_backbone,
    load_router,
    lora_target_modules,
    pairwise_win_loss,
    save_backbone_files,
)
from routerforge.models.difficulty_data import (
    build_examples,
    candidates_for,
    choose_reference_model,
    collate_examples,
    outcome_samples,
)
from routerforge.models.tiny_backbones import ensure_random_deberta
from routerforge.train.final_export import export_router
from tests.fixtures.tiny_deberta import tiny_deberta_dir, tiny_deberta_spec
from tests.fixtures.tiny_outcomes_dataset import read_mmlu_outcomes

SMALL, LARGE, MID = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview", "gpt-3.5-turbo"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    backbone, tokenizer, info = load_backbone(tiny_deberta_spec(tmp_path_factory))
    return backbone, tokenizer, info


# ----------------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------------
def best_route_match_prob(small: list[float], large: list[float], t: float) -> float:
    """BEST-Route's `NClassReranker._match_prob`, written out: mean over (i, j) of 1[s_i >= l_j - t]."""
    return sum(sum(s >= lj - t for lj in large) / len(large) for s in small) / len(small)


def brute_force_best_of_n(candidate: list[float], reference: list[float], n: int, t: float) -> float:
    """Enumerate every n-subset of the samples and every reference sample."""
    hits = total = 0
    for subset in itertools.combinations(candidate, n):
        for ref in reference:
            hits += max(subset) >= ref - t
            total += 1
    return hits / total


def test_single_sample_labels_are_best_routes_match_probability():
    candidate, reference = [0.2, 0.6, 0.9], [0.5, 0.8]
    assert best_of_n_match_probability(candidate, reference, 1, 0.0) == pytest.approx(0.5)  # (2/3 + 1/3) / 2
    assert best_of_n_match_probability(candidate, reference, 1, 0.25) == pytest.approx(2 / 3)
    rng = random.Random(0)
    for _ in range(50):
        cand = [rng.random() for _ in range(rng.randint(1, 6))]
        ref = [rng.random() for _ in range(rng.randint(1, 4))]
        t = rng.choice([0.0, 0.05, 0.2])
        assert best_of_n_match_probability(cand, ref, 1, t) == pytest.approx(best_route_match_prob(cand, ref, t))
    # One 0/1 sample each (MMLU correctness): the hard label 1[small right or large wrong].
    assert [best_of_n_match_probability([s], [r], 1, 0.0) for s, r in [(1, 1), (0, 1), (1, 0), (0, 0)]] == [1, 0, 1, 1]


def test_best_of_n_labels_match_enumeration_of_every_subset():
    rng = random.Random(1)
    for _ in range(40):
        k = rng.randint(2, 6)
        cand = [round(rng.random(), 1) for _ in range(k)]
        ref = [round(rng.random(), 1) for _ in range(rng.randint(1, 3))]
        for n in range(1, k + 1):
            got = best_of_n_match_probability(cand, ref, n, 0.1)
            assert got == pytest.approx(brute_force_best_of_n(cand, ref, n, 0.1))
    # More samples never lower the chance to match the reference.
    cand, ref = [0.1, 0.4, 0.7, 0.3], [0.6, 0.35]
    probs = [best_of_n_match_probability(cand, ref, n, 0.0) for n in range(1, 5)]
    assert probs == sorted(probs) and probs[-1] == 1.0 and probs[0] == pytest.approx(0.375)
    with pytest.raises(ValueError, match="best of 5 needs at least 5 samples"):
        best_of_n_match_probability(cand, ref, 5, 0.0)


def test_difficulty_target_is_one_minus_mean_of_model_means():
    assert difficulty_target({SMALL: [1.0, 0.0], LARGE: [1.0]}) == pytest.approx(0.25)
    assert difficulty_target({SMALL: [0.0], LARGE: [0.0]}) == 1.0


def test_reference_is_the_strongest_model_unless_configured():
    samples = {"p1": {SMALL: [1.0], LARGE: [1.0], MID: [0.0]}, "p2": {SMALL: [0.0], LARGE: [1.0], MID: [1.0]}}
    pool = [LARGE, SMALL, MID]
    assert choose_reference_model(samples, pool, None, "x") == LARGE
    assert choose_reference_model(samples, pool, SMALL, "x") == SMALL
    tied = {"p": {SMALL: [1.0], MID: [1.0]}}
    assert choose_reference_model(tied, [MID, SMALL], None, "x") == MID  # pool order breaks ties
    with pytest.raises(DataError, match="labels.reference_model='claude-1' has no outcomes"):
        choose_reference_model(samples, pool, "claude-1", "x")


def test_candidates_skip_only_the_references_single_sample():
    samples = {"p": {SMALL: [1.0, 0.0], LARGE: [1.0, 1.0]}}
    got = candidates_for([LARGE, MID, SMALL], samples, LARGE, [2, 1])
    assert got == [Candidate(LARGE, 2), Candidate(SMALL, 1), Candidate(SMALL, 2)]  # MID has no outcomes
    assert got[0].name == f"{LARGE}@best-of-2"


# ----------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------
def test_candidate_loss_is_best_routes_two_way_soft_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 3), torch.rand(5, 3)
    mask = torch.ones(5, 3)
    # BEST-Route: per head a 2-way softmax trained with cross-entropy against [p, 1 - p], averaged over heads.
    two_way = torch.stack([logits, torch.zeros_like(logits)], dim=-1)  # softmax([z, 0]) = [sigmoid(z), ...]
    reference = sum(F.cross_entropy(two_way[:, c], torch.stack([labels[:, c], 1 - labels[:, c]], -1))
                    for c in range(3)) / 3
    assert candidate_match_loss(logits, labels, mask) == pytest.approx(reference.item(), rel=1e-6)
    # Missing labels do not count, whatever value they hold.
    mask[1, 2] = mask[4, 0] = 0
    changed = labels.clone()
    changed[1, 2], changed[4, 0] = 0.0, 1.0
    assert torch.equal(candidate_match_loss(logits, labels, mask), candidate_match_loss(logits, changed, mask))
    assert candidate_match_loss(logits, labels, torch.zeros(5, 3)) == 0


def test_difficulty_and_pairwise_losses():
    logit, target, mask = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([0.5, 1.0, 0.3]), torch.tensor([1.0, 1.0, 0.0])
    expected = ((0.5 - 0.5) ** 2 + (torch.sigmoid(torch.tensor(2.0)).item() - 1.0) ** 2) / 2
    assert difficulty_regression_loss(logit, target, mask).item() == pytest.approx(expected)

    strengths = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    a, b = torch.tensor([[0, 2], [2, 0]]), torch.tensor([[1, 0], [1, 0]])
    target, weight = torch.tensor([[1.0, 0.0], [0.5, 0.0]]), torch.tensor([[2.0, 1.0], [1.0, 0.0]])
    # Pairs: (0 beats 1, logit 1, w 2), (2 vs 0 lost: logit -2, target 0, w 1), (2 vs 1 tie: logit 1.5, w 1), padding.
    manual = (2 * F.binary_cross_entropy_with_logits(torch.tensor(1.0), torch.tensor(1.0))
              + F.binary_cross_entropy_with_logits(torch.tensor(-2.0), torch.tensor(0.0))
              + F.binary_cross_entropy_with_logits(torch.tensor(1.5), torch.tensor(0.5))) / 4
    assert pairwise_win_loss(strengths, a, b, target, weight).item() == pytest.approx(manual.item(), rel=1e-6)
    # A strength shift common to all models changes nothing (only differences matter).
    assert pairwise_win_loss(strengths + 3.0, a, b, target, weight).item() == pytest.approx(manual.item(), rel=1e-6)


# ----------------------------------------------------------------------------------------------------
# Data: outcome samples and pairs -> per-prompt examples
# ----------------------------------------------------------------------------------------------------
def outcome_table(rows: list[tuple[str, str, float]]) -> Dataset:
    records = [make_outcome(prompt=p, model=m, score=s, source="test", source_file="f", source_line=i,
                            source_id=str(i)) for i, (p, m, s) in enumerate(rows)]
    return Dataset.from_dict({k: [r[k] for r in records] for k in OUTCOME_FEATURES}, features=OUTCOME_FEATURES)


def test_examples_from_several_samples_per_model(tiny):
    _, tokenizer, _ = tiny
    q1, q2, q3 = (r["prompt"] for r in read_mmlu_outcomes(("world_religions",), 3)[::2])  # 3 real questions
    outcomes = outcome_table(
        [(q1, SMALL, 1.0), (q1, SMALL, 0.0), (q1, SMALL, 0.0), (q1, LARGE, 1.0), (q1, LARGE, 0.0),  # 3 + 2 samples
         (q2, SMALL, 1.0), (q2, LARGE, 1.0),  # one sample each: no best-of-2 label
         (q3, SMALL, 0.0), (q3, SMALL, 1.0)])  # no reference answer
    votes = [make_pair(prompt=q1, model_a=SMALL, model_b=LARGE, winner="model_b", source="t", kind="arena",
                       source_file="f", source_line=1, source_id="1", weight=2.0),
             make_pair(prompt=q1, model_a=LARGE, model_b=SMALL, winner="tie", source="t", kind="arena",
                       source_file="f", source_line=2, source_id="2")]
    pairs = Dataset.from_dict({k: [r[k] for r in votes] for k in PAIR_FEATURES}, features=PAIR_FEATURES)
    _, samples = outcome_samples(outcomes)
    assert samples[outcomes[0]["prompt_id"]] == {SMALL: [1.0, 0.0, 0.0], LARGE: [1.0, 0.0]}
    pool = [LARGE, SMALL]
    candidates = candidates_for(pool, samples, LARGE, [1, 2])
    assert [c.name for c in candidates] == [f"{LARGE}@best-of-2", f"{SMALL}@best-of-1", f"{SMALL}@best-of-2"]
    ex = build_examples(outcomes, pairs, tokenizer=tokenizer, max_seq_tokens=16, model_index={LARGE: 0, SMALL: 1},
                        candidates=candidates, reference=LARGE, tolerance=0.0, ties="half",
                        use_source_weights=True, where="test")
    row = {pid: i for i, pid in enumerate(ex.prompt_ids)}
    r1, r2, r3 = (row[outcomes[i]["prompt_id"]] for i in (0, 5, 7))
    # q1: SMALL best-of-1 vs LARGE's samples [1, 0]: (1/3 + 1) / 2; best-of-2 of [1, 0, 0]: (2/3 + 1) / 2.
    assert ex.candidate_labels[r1].tolist() == pytest.approx([1.0, 2 / 3, 5 / 6])
    assert ex.candidate_mask[r1].tolist() == [1, 1, 1]
    assert ex.candidate_mask[r2].tolist() == [0, 1, 0] and ex.candidate_labels[r2, 1] == 1.0
    assert ex.candidate_mask[r3].tolist() == [0, 0, 0]
    assert ex.difficulty[r1].item() == pytest.approx(1 - (1 / 3 + 1 / 2) / 2)
    assert ex.difficulty_mask.tolist() == [1, 1, 1]
    assert ex.stats["candidate_labels_dropped"] == {"fewer_samples_than_n": 2, "reference_missing": 2,
                                                    "candidate_model_missing": 1}
    assert ex.stats["candidate_labels"] == {f"{LARGE}@best-of-2": 1, f"{SMALL}@best-of-1": 2, f"{SMALL}@best-of-2": 1}
    assert ex.pairs[r1] == ([1, 0], [0, 1], [0.0, 0.5], [2.0, 1.0]) and ex.pairs[r2] == ([], [], [], [])
    assert all(len(ids) <= 16 for ids in ex.input_ids) and ex.input_ids[r1][0] == tokenizer.cls_token_id

    batch = collate_examples(tokenizer.pad_token_id)([ex[r1], ex[r2]])
    lengths = [len(ex.input_ids[r1]), len(ex.input_ids[r2])]
    assert batch["input_ids"].shape == (2, max(lengths)) and batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    assert batch["pair_weight"].tolist() == [[2.0, 1.0], [0.0, 0.0]]  # q2's padding pairs weigh nothing
    assert batch["candidate_labels"].shape == (2, 3)


# ----------------------------------------------------------------------------------------------------
# Module, LoRA, export format
# ----------------------------------------------------------------------------------------------------
def tiny_router(backbone, lora: bool = False) -> DifficultyRouter:
    spec = HeadSpec(hidden_size=backbone.config.hidden_size, num_candidates=2, difficulty=True, num_models=3,
                    dropout=0.0)
    if lora:
        backbone = apply_lora(backbone, "deberta-v2", r=4, alpha=8.0, dropout=0.0, target_modules=None)
    return DifficultyRouter(backbone, DifficultyHeads(spec), "cls")


def test_lora_targets_per_family_and_only_adapters_train(tmp_path_factory):
    assert lora_target_modules("deberta-v2", None) == ["query_proj", "key_proj", "value_proj"]
    assert lora_target_modules("bert", None) == ["query", "key", "value"]
    assert lora_target_modules("gpt2", ["c_attn"]) == ["c_attn"]
    with pytest.raises(ConfigError, match="no default target modules for backbone family 'gpt2'"):
        lora_target_modules("gpt2", None)
    backbone, _, _ = load_backbone(tiny_deberta_spec(tmp_path_factory))
    with pytest.raises(ConfigError, match=r"\['qkv'\] are not modules"):
        apply_lora(backbone, "deberta-v2", 4, 8.0, 0.0, ["qkv"])
    router = tiny_router(backbone, lora=True)
    trainable = {n for n, p in router.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("heads.") for n in trainable)
    assert sum(".query_proj.lora_A" in n for n in trainable) == 2  # both layers adapted


def test_export_loads_with_automodel_and_reproduces_the_lora_router(tmp_path_factory, tmp_path, tiny):
    from transformers import AutoModel, DebertaV2Model

    backbone, tokenizer, _ = load_backbone(tiny_deberta_spec(tmp_path_factory))
    router = tiny_router(backbone, lora=True)
    with torch.no_grad():  # LoRA B starts at zero: make the adapters matter
        for name, p in router.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    config = {"router_type": "difficulty", "heads": router.heads.spec.to_dict(), "pooling": "cls"}
    # The recipe's export: heads + config.json by export_router, backbone/ and tokenizer/ as its extra files.
    export_router(tmp_path, router.heads.state_dict(), config, {},
                  extra_files=lambda directory: save_backbone_files(router, tokenizer, directory))
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["backbone/config.json", "backbone/model.safetensors", "config.json", "manifest.json",
                     "model.safetensors", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"]
    plain = AutoModel.from_pretrained(str(tmp_path / "backbone"))
    assert type(plain) is DebertaV2Model
    assert not any("lora" in k for k in load_file(str(tmp_path / "backbone" / "model.safetensors")))
    loaded, loaded_tokenizer, loaded_config = load_router(tmp_path)
    assert loaded_config == config
    batch = tokenizer(["What can murtis be translated as?", "Write me a python script"], padding=True,
                      return_tensors="pt")
    router.eval()
    with torch.no_grad():
        want = router(batch["input_ids"], batch["attention_mask"])
        got = loaded(batch["input_ids"], batch["attention_mask"])
    assert want.keys() == got.keys() == {"candidate_logits", "difficulty_logit", "model_strengths"}
    for key in want:  # merged LoRA weights compute what the adapters did
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)
    assert loaded_tokenizer("What can murtis be translated as?")["input_ids"] == tokenizer(
        "What can murtis be translated as?")["input_ids"]


def test_unused_parameters_are_frozen_without_touching_the_rng():
    backbone, tokenizer, info = load_backbone("packaged:all-MiniLM-L6-v2")
    assert info.name == "sentence-transformers/all-MiniLM-L6-v2" and info.model_type == "bert"
    router = DifficultyRouter(backbone, DifficultyHeads(HeadSpec(backbone.config.hidden_size, 1, True, 2, 0.1)), "mean")
    batch = dict(tokenizer(["What is 2 + 2?", "Name a Babylonian festival."], padding=True, return_tensors="pt"))
    torch.manual_seed(3)
    before = torch.get_rng_state()
    frozen = freeze_unused_parameters(router, batch)
    assert torch.equal(before, torch.get_rng_state())
    assert frozen == ["backbone.pooler.dense.weight", "backbone.pooler.dense.bias"]  # BERT's pooler feeds nothing
    assert all(p.grad is None for p in router.parameters()) and router.training


def test_loss_combines_the_heads_by_weight(tiny):
    backbone, tokenizer, _ = tiny
    router = tiny_router(backbone)
    batch = dict(tokenizer(["a b c", "d e"], padding=True, return_tensors="pt"))
    batch.update(candidate_labels=torch.tensor([[1.0, 0.5], [0.0, 1.0]]), candidate_mask=torch.ones(2, 2),
                 difficulty=torch.tensor([0.2, 0.9]), difficulty_mask=torch.ones(2),
                 pair_model_a=torch.tensor([[0], [1]]), pair_model_b=torch.tensor([[2], [0]]),
                 pair_target=torch.tensor([[1.0], [0.0]]), pair_weight=torch.tensor([[1.0], [1.0]]))
    router.eval()
    outputs = router(batch["input_ids"], batch["attention_mask"])
    total, parts = difficulty_router_loss(outputs, batch, LossWeights(2.0, 0.5, 1.0))
    assert parts.keys() == {"candidates", "difficulty", "win"}
    assert total.item() == pytest.approx(2 * parts["candidates"] + 0.5 * parts["difficulty"] + parts["win"])


def test_tiny_deberta_build_is_deterministic_and_loads_with_auto_classes(tmp_path_factory, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    first = tiny_deberta_dir(tmp_path_factory)
    second = ensure_random_deberta("tiny", tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "spm.model"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    build = json.loads((first / "build.json").read_text())
    assert build["preset"] == "tiny" and build["tokenizer_corpus_prompts"] == 1135
    tokenizer = AutoTokenizer.from_pretrained(str(first))
    model = AutoModel.from_pretrained(str(first))
    assert type(tokenizer).__name__ == "DebertaV2Tokenizer" and model.config.model_type == "deberta-v2"
    assert (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id) == (0, 1, 2)
    assert model.config.vocab_size == len(tokenizer) == 2000 and model.config.hidden_size == 32
    ids = tokenizer("Using RANSAC, ORB and AffineTransform in python")["input_ids"]
    assert ids[0] == 1 and ids[-1] == 2 and tokenizer.unk_token_id not in ids  # real-prompt vocabulary
    with pytest.raises(ConfigError, match="holds a 'tiny' random-deberta backbone, not 'deberta-v3-small'"):
        ensure_random_deberta("deberta-v3-small", first)
    with pytest.raises(ConfigError, match="unknown random-deberta preset 'huge'"):
        ensure_random_deberta("huge", tmp_path / "x")
    with pytest.raises(ConfigError, match="write random-deberta:<preset>:<directory>"):
        load_backbone("random-deberta:tiny")


def test_attention_dropout_is_replaced_only_when_asked(tmp_path_factory, tmp_path):
    """The MiniLM default turns attention dropout off (a 1.6x faster CPU step); null keeps the backbone's own."""
    from transformers import T5Config

    from routerforge.models.difficulty import attention_dropout_override

    spec = tiny_deberta_spec(tmp_path_factory)
    own, _, _ = load_backbone(spec)
    off, _, _ = load_backbone(spec, attention_dropout=0.0)
    assert own.config.attention_probs_dropout_prob == 0.1 and off.config.attention_probs_dropout_prob == 0.0
    assert own.config.hidden_dropout_prob == off.config.hidden_dropout_prob == 0.1  # only attention changes
    minilm, _, _ = load_backbone("packaged:all-MiniLM-L6-v2", attention_dropout=0.05)
    assert minilm.config.attention_probs_dropout_prob == 0.05
    # a family without an attention-dropout setting is a config error naming the key and the way out
    T5Config().save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"model.attention_dropout: the 't5' backbone .* set model.attention_dropout"
                                          r"=null"):
        attention_dropout_override(str(tmp_path), 0.0)
