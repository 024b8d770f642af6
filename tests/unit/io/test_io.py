"""routerforge/io: real files on disk and a real loopback HTTP server (tests/support/fake_chat_endpoint.py)."""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from safetensors.numpy import save_file

from routerforge.io.atomic import DestinationExistsError, atomic_directory, atomic_write_text
from routerforge.io.digest import HASH_CHUNK_BYTES, sha256_and_scan, sha256_file, tree_sha256
from routerforge.io.http_json import (
    HTTPStatusError,
    RetriesExhaustedError,
    backoff_wait_s,
    post_json,
    retry_after_s,
)
from routerforge.io.safetensors_file import UnsafeWeightsError, load_safetensors, safetensors_problem
from tests.support.fake_chat_endpoint import FakeChatEndpoint

KEY = "sk-io-test-0123456789"
CHAT = {"model": "strong-a", "messages": [{"role": "user", "content": "What is 2+3?"}]}


# ------------------------------------------------------------------------------------------- digests


def test_sha256_of_a_multi_block_file_and_a_secret_across_the_block_boundary(tmp_path):
    data = b"x" * (HASH_CHUNK_BYTES - 3) + b"SECRET" + b"y" * 100  # the secret straddles the first block's end
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_and_scan(path, b"SECRET") == (hashlib.sha256(data).hexdigest(), True)
    assert sha256_and_scan(path, b"ABSENT")[1] is False


def test_tree_sha256_walks_sub_directories_and_leaves_out_the_excluded_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    for rel, text in {"a.json": "{}", "sub/b.txt": "b", "manifest.json": "m", "COMPLETE": "ok"}.items():
        (tmp_path / rel).write_text(text)
    assert tree_sha256(tmp_path) == {"a.json": hashlib.sha256(b"{}").hexdigest(),
                                     "sub/b.txt": hashlib.sha256(b"b").hexdigest()}
    assert list(tree_sha256(tmp_path, exclude=())) == ["COMPLETE", "a.json", "manifest.json", "sub/b.txt"]


# -------------------------------------------------------------------------------------- atomic writes


def test_atomic_write_text_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "deep" / "LATEST"
    atomic_write_text(path, "1.0.0\n")
    atomic_write_text(path, "1.1.0\n")
    assert path.read_text() == "1.1.0\n"
    assert [p.name for p in path.parent.iterdir()] == ["LATEST"]


def test_atomic_directory_swaps_in_only_a_complete_directory(tmp_path):
    final = tmp_path / "final"
    with atomic_directory(final) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
        (tmp / "v").write_text("half-written")
        raise RuntimeError("killed mid-write")
    assert (final / "v").read_text() == "1"  # the failed build left the good directory alone
    with atomic_directory(final) as tmp:
        (tmp / "v").write_text("2")
    assert (final / "v").read_text() == "2"
    with pytest.raises(DestinationExistsError), atomic_directory(final, replace=False) as tmp:
        (tmp / "v").write_text("3")
    assert (final / "v").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no .tmp-* / .old-* left behind


# ------------------------------------------------------------------------------------------ safetensors


def test_safetensors_problem_names_what_a_file_really_is(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, str(good))
    assert safetensors_problem(good) is None
    pickled = tmp_path / "pickle.safetensors"
    pickled.write_bytes(pickle.dumps({"w": [1, 2, 3]}, protocol=5))
    assert safetensors_problem(pickled) == "a Python pickle"
    zipped = tmp_path / "zip.safetensors"
    with zipfile.ZipFile(zipped, "w") as archive:  # torch.save's container
        archive.writestr("archive/data.pkl", pickle.dumps([1]))
    assert safetensors_problem(zipped).startswith("a zip archive")
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes((10**9).to_bytes(8, "little") + b"{}")  # header longer than the file
    assert safetensors_problem(huge) == "not safetensors (no valid header)"
    # A real file whose header length (a multiple of 8) ends in the byte 0x80, as a pickle's first byte does.
    aligned = tmp_path / "aligned.safetensors"
    name = "w"
    while True:
        save_file({name: np.zeros(1, dtype=np.float32)}, str(aligned))
        if aligned.read_bytes()[0] == 0x80:
            break
        name += "w"
    assert safetensors_problem(aligned) is None
    not_json = tmp_path / "text.safetensors"
    not_json.write_bytes((4).to_bytes(8, "little") + b"abcd")
    assert safetensors_problem(not_json) == "not safetensors (its header is not JSON)"


def test_load_safetensors_reads_tensors_and_refuses_a_pickle_unread(tmp_path):
    good = tmp_path / "model.safetensors"
    save_file({"w": np.ones((2, 2), dtype=np.float32)}, str(good))
    assert load_safetensors(good)["w"].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    marker = tmp_path / "UNPICKLED"
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(_Touch(str(marker)), protocol=5))
    with pytest.raises(UnsafeWeightsError, match=r"evil\.safetensors: refused, the file is a Python pickle"):
        load_safetensors(evil)
    assert not marker.exists()


class _Touch:
    """Unpickling this creates `path`: proof that a loader unpickled the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_io_imports_neither_torch_nor_the_rest_of_routerforge():
    code = ("import sys, routerforge.io.atomic, routerforge.io.digest, routerforge.io.http_json, "
            "routerforge.io.names, routerforge.io.safetensors_file\n"
            "ours = sorted(m for m in sys.modules\n"
            "              if m.startswith('routerforge') and not m.startswith('routerforge.io'))\n"
            "print(json.dumps(['torch' in sys.modules, ours]))")
    out = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [False, ["routerforge", "routerforge.errors"]]


# ---------------------------------------------------------------------------------------- retrying POST


def test_backoff_is_exponential_capped_and_honours_retry_after():
    assert [backoff_wait_s(a, 1.0, None, 30.0) for a in range(6)] == [1, 2, 4, 8, 16, 30]
    assert backoff_wait_s(0, 1.0, 5.0, 30.0) == 5.0  # the server asks for longer
    assert backoff_wait_s(3, 1.0, 120.0, 30.0) == 30.0  # ... but never beyond the cap
    assert retry_after_s("2.5") == 2.5 and retry_after_s(None) is None and retry_after_s("soon") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # an HTTP date in the past


def test_post_json_retries_429_and_503_with_backoff_then_returns_the_reply():
    with FakeChatEndpoint(KEY) as server:
        server.rate_limit_next, server.retry_after_s, server.fail_next = 1, 0.3, 1
        started = time.monotonic()
        reply = post_json(f"{server.base_url}/chat/completions", CHAT, token=KEY, max_retries=3, backoff_s=0.01)
        elapsed = time.monotonic() - started
    assert reply["choices"][0]["message"]["content"] == "strong-a: the answer is 5."
    assert server.refused == [429, 503] and server.requests == 3
    assert elapsed >= 0.3  # waited the 429's Retry-After, not just the 10 ms backoff


def test_post_json_gives_up_after_max_retries_naming_the_url_not_the_token():
    with FakeChatEndpoint(KEY) as server:
        server.fail_next = 10
        url = f"{server.base_url}/chat/completions"
        with pytest.raises(RetriesExhaustedError) as info:
            post_json(url, CHAT, token=KEY, max_retries=2, backoff_s=0.01)
    assert server.requests == 3 and info.value.attempts == 3 and info.value.status == 503
    assert url in str(info.value) and "HTTP 503" in str(info.value) and KEY not in str(info.value)


@pytest.mark.parametrize(("token", "payload", "status"), [
    ("sk-wrong-key-987", CHAT, 401),  # a bad key
    (KEY, {"model": "strong-a"}, 400),  # a bad request
])
def test_post_json_does_not_retry_a_4xx(token, payload, status):
    with FakeChatEndpoint(KEY) as server:
        url = f"{server.base_url}/chat/completions"
        with pytest.raises(HTTPStatusError) as info:
            post_json(url, payload, token=token, max_retries=3, backoff_s=0.01)
    assert info.value.status == status and info.value.attempts == 1
    assert url in str(info.value) and token not in str(info.value)


def test_post_json_retries_a_refused_connection_then_fails_clearly(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    with pytest.raises(RetriesExhaustedError, match="ConnectionError") as info:
        post_json(url, {"input": ["a"]}, token=KEY, max_retries=1, backoff_s=0.01, timeout_s=2)
    assert info.value.attempts == 2 and url in str(info.value) and KEY not in str(info.value)
