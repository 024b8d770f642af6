"""`routerforge serve` end to end: the real `openai` client -> the proxy (uvicorn, loopback) -> two loopback
OpenAI-compatible upstreams (tests/support/fake_chat_upstream.py), routed by a real MF router trained by its
recipe on RouteLLM MMLU outcomes (tests/fixtures/registry_routers.py) and calibrated by `routerforge calibrate`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from routerforge.config import load_config
from routerforge.errors import CheckpointError, ConfigError
from routerforge.eval.cli import calibrate_main
from routerforge.registry.register import finalize_export
from routerforge.router import Router
from routerforge.serve.app import build_state, create_app
from routerforge.serve.config import ServeConfig
from routerforge.serve.protocol import RequestError, routing_text
from routerforge.serve.upstream import resolve_upstream
from tests.fixtures import registry_routers as rr
from tests.support.fake_chat_upstream import FakeChatUpstream, serving

pytestmark = pytest.mark.slow  # the first use trains the tiny MF router (shared with tests/unit/test_router.py)

TOKEN = "client-token-for-tests"
UPSTREAM_KEYS = {"strong": "sk-strong-test-key", "weak": "sk-weak-test-key"}
SHARE = 0.3
SERVE_YAML = """\
auth_token_env: RF_TEST_SERVE_TOKEN
max_body_bytes: 65536
presets:
  balanced: {{strong_share: {share}}}
  always-strong: {{threshold: -1.0}}
strong:
  model: {strong}
  base_url_env: RF_TEST_STRONG_URL
  api_key_env: RF_TEST_STRONG_KEY
  upstream_model: strong-upstream-v1
  timeout_s: 2.0
weak:
  model: {weak}
  base_url_env: RF_TEST_WEAK_URL
  api_key_env: RF_TEST_WEAK_KEY
  upstream_model: weak-upstream-v1
  timeout_s: 20.0
"""


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> list[str]:
    base = tmp_path_factory.getbasetemp()
    return [p for subject in rr.SUBJECTS for p in rr.read_eval_prompts(rr.eval_table(base, subject))]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, prompts) -> Path:
    """The MF router exported and calibrated on held-out MMLU prompts (as a user calibrates on their traffic)."""
    base = tmp_path_factory.getbasetemp()
    root = tmp_path_factory.mktemp("serve-registry")
    version_dir = finalize_export(rr.trained_export(base, "mf"), root)
    prompts_file = root / "traffic.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    assert calibrate_main([str(version_dir), "--prompts", str(prompts_file), "--strong-share", str(SHARE), "0.5",
                           "--strong", rr.STRONG, "--weak", rr.WEAK, "--embedding-cache", str(rr.cache_dir(base))]) == 0
    return version_dir


@pytest.fixture(scope="module")
def upstreams():
    fakes = {"strong": FakeChatUpstream("strong"), "weak": FakeChatUpstream("weak")}
    with serving(fakes["strong"].app) as (_, strong_url), serving(fakes["weak"].app) as (_, weak_url):
        yield fakes, {"strong": strong_url + "/v1", "weak": weak_url + "/v1"}


@pytest.fixture(scope="module")
def serve_env(upstreams, tmp_path_factory):
    _, urls = upstreams
    config_path = tmp_path_factory.mktemp("serve-config") / "serve.yaml"
    config_path.write_text(SERVE_YAML.format(share=SHARE, strong=rr.STRONG, weak=rr.WEAK), encoding="utf-8")
    env = {"RF_TEST_SERVE_TOKEN": TOKEN, "RF_TEST_STRONG_URL": urls["strong"], "RF_TEST_WEAK_URL": urls["weak"],
           "RF_TEST_STRONG_KEY": UPSTREAM_KEYS["strong"], "RF_TEST_WEAK_KEY": UPSTREAM_KEYS["weak"]}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        yield config_path, env


@pytest.fixture(scope="module")
def router(checkpoint, tmp_path_factory) -> Router:
    """The served router. Its embedding cache already holds the MMLU prompts' vectors (data prep embedded them),
    so the 200-request share test spends its time in the proxy, not in MiniLM; new prompts are embedded."""
    base = tmp_path_factory.getbasetemp()
    return Router.from_pretrained(checkpoint, embedding_cache_dir=rr.cache_dir(base))


@pytest.fixture(scope="module")
def library(checkpoint, tmp_path_factory) -> Router:
    """The same checkpoint loaded again, to compute expected decisions with the library's own `Router.route`
    (its own SQLite connection: the served router's belongs to the proxy's encoder thread)."""
    base = tmp_path_factory.getbasetemp()
    return Router.from_pretrained(checkpoint, embedding_cache_dir=rr.cache_dir(base))


@pytest.fixture(scope="module")
def proxy(router, serve_env):
    config_path, _ = serve_env
    state = build_state(router, load_config(ServeConfig, config_path), strong_share=0.5)
    with serving(create_app(state)) as (_, url):
        yield state, url


@pytest.fixture
def fakes(upstreams):
    fakes, _ = upstreams
    for fake in fakes.values():
        fake.reset()
    yield fakes
    for fake in fakes.values():
        fake.reset()


def client(url: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=TOKEN, max_retries=0, **kwargs)


def histogram_totals(histogram) -> tuple[float, float]:
    """(observations, their sum) of a prometheus_client Histogram."""
    samples = {s.name.rsplit("_", 1)[-1]: s.value for family in histogram.collect() for s in family.samples
               if s.name.endswith(("_count", "_sum"))}
    return samples["count"], samples["sum"]


def ask(prompt: str) -> list[dict]:
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": prompt}]


def test_openai_client_traffic_is_routed_at_the_calibrated_share(proxy, fakes, library, prompts):
    state, url = proxy

    async def send_all() -> list:
        clients = asyncio.Semaphore(16)  # 16 concurrent clients
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=TOKEN, max_retries=0) as aclient:
            async def send(prompt: str):
                async with clients:
                    return await aclient.chat.completions.with_raw_response.create(
                        model="router-balanced", messages=ask(prompt), temperature=0.0)
            return await asyncio.gather(*[send(p) for p in prompts])

    calls_before, batched_before = histogram_totals(state.metrics.batch_size)
    raws = asyncio.run(send_all())
    served = [raw.headers["x-router-model"] for raw in raws]
    assert not any("x-router-fallback-from" in raw.headers for raw in raws)
    # Every decision is the library's own calibrated decision for that prompt ...
    assert served == library.route(prompts, strong_share=SHARE, strong=rr.STRONG, weak=rr.WEAK)
    # ... so the share sent to the strong model is the calibrated one (calibrated on this traffic, with the
    # held-out quarter included: within the held-out interval's width).
    share = served.count(rr.STRONG) / len(served)
    assert abs(share - SHARE) <= 0.06, share
    # Each request reached exactly the upstream it was routed to, once, under that upstream's model name and key;
    # the answer came back unchanged.
    for role, name, upstream_model in (("strong", rr.STRONG, "strong-upstream-v1"),
                                       ("weak", rr.WEAK, "weak-upstream-v1")):
        got = sorted(body["messages"][-1]["content"] for body in fakes[role].received)
        assert got == sorted(p for p, m in zip(prompts, served, strict=True) if m == name)
        assert {body["model"] for body in fakes[role].received} == {upstream_model}
        assert all(body["temperature"] == 0.0 and body["messages"][0]["role"] == "system"
                   for body in fakes[role].received)
        assert set(fakes[role].authorization) == {f"Bearer {UPSTREAM_KEYS[role]}"}
    for prompt, raw in zip(prompts, raws, strict=True):
        completion = raw.parse()
        role = "strong" if raw.headers["x-router-model"] == rr.STRONG else "weak"
        assert completion.choices[0].message.content == fakes[role].answer(prompt)
        assert completion.model == f"{role}-upstream-v1" and raw.headers["x-router-preset"] == "balanced"
        assert raw.headers["x-request-id"].startswith(f"chatcmpl-{role}-")
    # Concurrent requests were scored together: fewer encoder calls than requests.
    calls, batched = histogram_totals(state.metrics.batch_size)
    assert batched - batched_before == len(prompts) and calls - calls_before < len(prompts)


def test_streaming_default_preset_and_threshold_header(proxy, fakes, library, prompts):
    _, url = proxy
    api = client(url)
    prompt = prompts[0]
    with api.chat.completions.with_streaming_response.create(model="router", messages=ask(prompt),
                                                             stream=True) as response:
        expected = library.route([prompt], strong_share=0.5, strong=rr.STRONG, weak=rr.WEAK)[0]
        assert response.headers["x-router-model"] == expected and response.headers["x-router-preset"] == "default"
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["server-timing"].startswith("routing;dur=")
        chunks = list(response.parse())
    role = "strong" if expected == rr.STRONG else "weak"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == fakes[role].answer(prompt)
    assert chunks[-1].choices[0].finish_reason == "stop" and fakes[role].received[0]["stream"] is True

    score = float(library.score([prompt], rr.STRONG, rr.WEAK)[0])
    for threshold, model in ((score - 1e-3, rr.STRONG), (score + 1e-3, rr.WEAK)):
        raw = api.chat.completions.with_raw_response.create(
            model="router-balanced", messages=ask(prompt), extra_headers={"X-Router-Threshold": str(threshold)})
        assert raw.headers["x-router-model"] == model and raw.headers["x-router-preset"] == "header"
        assert abs(float(raw.headers["x-router-score"]) - score) < 1e-5
    assert [m.id for m in api.models.list().data] == ["router", "router-balanced", "router-always-strong",
                                                      "router-default"]


def test_upstream_5xx_and_timeout_fall_back_to_the_other_model(proxy, fakes):
    state, url = proxy
    api = client(url)
    fakes["strong"].status_override = 503
    raw = api.chat.completions.with_raw_response.create(model="router-always-strong",
                                                        messages=ask("capital of France?"))
    assert raw.headers["x-router-model"] == rr.WEAK and raw.headers["x-router-fallback-from"] == rr.STRONG
    assert raw.parse().choices[0].message.content == fakes["weak"].answer("capital of France?")
    assert len(fakes["strong"].received) == 1 and len(fakes["weak"].received) == 1

    fakes["strong"].status_override, fakes["strong"].delay_s = None, 2.5  # the strong timeout is 2 s
    with api.chat.completions.with_streaming_response.create(model="router-always-strong", stream=True,
                                                             messages=ask("slow one")) as response:
        assert response.headers["x-router-model"] == rr.WEAK
        assert "".join(c.choices[0].delta.content or "" for c in response.parse()) == fakes["weak"].answer("slow one")

    fakes["strong"].delay_s, fakes["strong"].status_override, fakes["weak"].status_override = 0.0, 500, 502
    with pytest.raises(openai.InternalServerError) as failed:
        api.chat.completions.create(model="router-always-strong", messages=ask("both down"))
    assert failed.value.status_code == 502
    assert failed.value.body["message"] == f"upstream failed: {rr.STRONG}: HTTP 500; then {rr.WEAK}: HTTP 502"

    text = httpx.get(url + "/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    errors = "routerforge_serve_upstream_errors_total"
    assert samples[(errors, (("kind", "http_5xx"), ("model", rr.STRONG)))] == 2
    assert samples[(errors, (("kind", "timeout"), ("model", rr.STRONG)))] == 1
    assert samples[(errors, (("kind", "http_5xx"), ("model", rr.WEAK)))] == 1
    assert samples[("routerforge_serve_fallbacks_total", (("from_model", rr.STRONG), ("to_model", rr.WEAK)))] == 3
    routed = {m: samples[("routerforge_serve_routed_share", (("model", m),))] for m in (rr.STRONG, rr.WEAK)}
    assert abs(sum(routed.values()) - 1.0) < 1e-9 and routed[rr.STRONG] > 0
    assert samples[("routerforge_serve_requests_total", (("endpoint", "/v1/chat/completions"), ("status", "502")))] >= 1
    assert samples[("routerforge_serve_routing_seconds_count", ())] >= 3
    assert samples[("routerforge_serve_upstream_seconds_count", (("model", rr.WEAK),))] >= 2
    assert TOKEN not in text and UPSTREAM_KEYS["strong"] not in text


def test_bad_requests_get_openai_style_errors(proxy, fakes):
    state, url = proxy
    api = client(url)
    with pytest.raises(openai.AuthenticationError):
        client(url).with_options(api_key="wrong").chat.completions.create(model="router", messages=ask("hi"))
    assert httpx.post(url + "/v1/chat/completions", json={"model": "router"}).status_code == 401
    with pytest.raises(openai.BadRequestError, match="missing required parameter 'messages'"):
        api.chat.completions.create(model="router", messages=[])
    with pytest.raises(openai.NotFoundError, match="does not exist on this router; use one of router, "):
        api.chat.completions.create(model="gpt-4o", messages=ask("hi"))
    with pytest.raises(openai.BadRequestError, match="X-Router-Threshold must be a finite number"):
        api.chat.completions.create(model="router", messages=ask("hi"), extra_headers={"X-Router-Threshold": "nan"})
    with pytest.raises(openai.APIStatusError, match="larger than this server accepts") as too_large:
        api.chat.completions.create(model="router", messages=ask("x" * 70_000))
    assert too_large.value.status_code == 413

    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    bad = httpx.post(url + "/v1/chat/completions", content=b'{"model": "router", "messages": [', headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    no_user = httpx.post(url + "/v1/chat/completions", headers=headers,
                         json={"model": "router", "messages": [{"role": "system", "content": "only system"}]})
    assert no_user.status_code == 400 and no_user.json()["error"]["param"] == "messages"
    assert fakes["strong"].received == [] and fakes["weak"].received == []
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["strong"] == rr.STRONG and health["weak"] == rr.WEAK


def test_routing_text_and_config_errors(router, serve_env, checkpoint):
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image_url"}]}]
    assert routing_text(messages, "last_user", 100) == "second"
    assert routing_text(messages, "conversation", 100) == "user: first\nassistant: ok\nuser: second"
    assert routing_text(messages, "conversation", 6) == "second"
    with pytest.raises(RequestError, match="no message with role 'user'"):
        routing_text(messages[1:2], "last_user", 100)

    example = load_config(ServeConfig, rr.REPO_ROOT / "configs" / "serve" / "example.yaml")  # the README's example
    assert example.presets["strict"].threshold == 0.6 and example.weak.api_key_env == ""
    assert (rr.REPO_ROOT / "configs/serve/example.yaml").read_text().split("\n", 1)[1] in \
        (rr.REPO_ROOT / "README.md").read_text()

    config_path, env = serve_env
    with pytest.raises(ConfigError, match="unknown config key 'routing.max_wait'. Did you mean 'max_wait_ms'"):
        load_config(ServeConfig, config_path, ["routing.max_wait=3"])
    with pytest.raises(ConfigError, match="fallback must be one of other_model, none"):
        load_config(ServeConfig, config_path, ["fallback=retry"])
    with pytest.raises(CheckpointError, match="strong_share 0.2 is not calibrated"):
        build_state(router, load_config(ServeConfig, config_path), strong_share=0.2)
    config = load_config(ServeConfig, config_path)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RF_TEST_WEAK_KEY")
        with pytest.raises(ConfigError,
                           match="weak model's API key: the environment variable RF_TEST_WEAK_KEY is not set"):
            build_state(router, config)
    assert UPSTREAM_KEYS["strong"] not in repr(resolve_upstream(rr.STRONG, config.strong, "strong"))


def test_shutdown_drains_in_flight_requests(checkpoint, serve_env, fakes, prompts, tmp_path_factory):
    """uvicorn's SIGTERM/SIGINT handler sets `should_exit`; here it is set directly while two requests (one a
    stream) wait on a slow upstream: both complete, then the server is gone. (bench/bench_serve.py stops the
    real `routerforge serve` process with SIGTERM.)"""
    config_path, _ = serve_env
    # a second app: its own router (and cache connection, owned by its own encoder thread)
    router = Router.from_pretrained(checkpoint, embedding_cache_dir=rr.cache_dir(tmp_path_factory.getbasetemp()))
    state = build_state(router, load_config(ServeConfig, config_path), threshold=-1.0)  # all to strong
    fakes["strong"].delay_s = 1.0  # in flight when shutdown starts; under the 2 s timeout
    results: dict = {}

    def plain(url: str) -> None:
        results["plain"] = client(url).chat.completions.create(model="router", messages=ask(prompts[1]))

    def streamed(url: str) -> None:
        chunks = client(url).chat.completions.create(model="router", messages=ask(prompts[2]), stream=True)
        results["stream"] = "".join(c.choices[0].delta.content or "" for c in chunks)

    with serving(create_app(state), timeout_graceful_shutdown=10) as (server, url):
        threads = [threading.Thread(target=f, args=(url,)) for f in (plain, streamed)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(fakes["strong"].received) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server.should_exit = True
        for thread in threads:
            thread.join(timeout=30)
    assert results["plain"].choices[0].message.content == fakes["strong"].answer(prompts[1])
    assert results["stream"] == fakes["strong"].answer(prompts[2])
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health")


def test_serve_command_line(checkpoint, serve_env, capsys):
    from routerforge.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "Serve a router as an OpenAI-compatible endpoint" in capsys.readouterr().out
    config_path, _ = serve_env
    assert main(["serve", str(checkpoint), "--strong-share", "0.2", "--config", str(config_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "strong_share 0.2 is not calibrated" in err
    assert main(["serve", str(checkpoint), "--config", str(config_path), "port=99999"]) == 2
    assert "port must be in [0, 65535]" in capsys.readouterr().err
