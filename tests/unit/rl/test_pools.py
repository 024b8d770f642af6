"""Candidate pools: recorded answers on real GSM8K rows, a tiny local Qwen2 with its answer cache, and an
OpenAI-compatible chat endpoint served by a real loopback HTTP server (503 retry, timeouts, concurrency)."""

from __future__ import annotations

import csv
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from routerforge.config import load_config
from routerforge.data.config import EncoderConfig
from routerforge.errors import ConfigError, DataError
from routerforge.rl.pool_config import (
    CandidateModelConfig,
    HFPoolConfig,
    ModelCard,
    OpenAIPoolConfig,
    PoolConfig,
    RecordedPoolConfig,
    resolve_model_cards,
)
from routerforge.rl.pools import (
    CandidateCall,
    CandidatePool,
    HFCausalLMPool,
    OpenAIChatPool,
    PoolCallFailed,
    PoolError,
    RecordedPool,
    build_pool,
    read_recorded_answers,
)

REPO = Path(__file__).resolve().parents[3]
GSM8K = REPO / "data/routellm/gsm8k/gsm8k_responses.csv"
MIXTRAL, GPT4 = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"


def gsm8k_rows(n: int) -> list[dict]:
    with open(GSM8K, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        return [next(reader) for _ in range(n)]


# --------------------------------------------------------------------------------------------------
# pool config


def test_default_pool_config_resolves_real_prices_from_the_routerarena_table():
    cards = {card.name: card for card in resolve_model_cards(PoolConfig())}
    assert (cards["Mixtral-8x7B"].input_price, cards["Mixtral-8x7B"].output_price) == (0.6, 0.6)
    assert (cards["GPT-4-Turbo"].input_price, cards["GPT-4-Turbo"].output_price) == (10.0, 30.0)
    assert "$10 per million input tokens, $30 per million output tokens" in cards["GPT-4-Turbo"].descriptor()
    assert cards["GPT-4-Turbo"].cost_usd(1000, 2000) == pytest.approx((1000 * 10 + 2000 * 30) / 1e6)
    assert cards["GPT-4-Turbo"].cost_usd(1000, 2000, count_input_tokens=False) == pytest.approx(2000 * 30 / 1e6)


def test_llmrouter_table_gives_prices_and_descriptions(tmp_path):
    config = tmp_path / "pool.yaml"
    config.write_text("price_table: data/llmrouter/default_llm.json\n"
                      "models:\n  - name: Qwen-7B\n    model: qwen2.5-7b-instruct\n"
                      "  - name: Mine\n    input_price: 1.0\n    output_price: 3.0\n    description: my model\n")
    cards = resolve_model_cards(load_config(PoolConfig, config))
    assert (cards[0].input_price, cards[0].output_price) == (0.2, 0.2)
    assert cards[0].description.startswith("Qwen2.5-7B-Instruct")
    assert (cards[1].model, cards[1].description, cards[1].output_price) == ("Mine", "my model", 3.0)


def test_pool_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="must not contain ':'"):
        load_config(PoolConfig, overrides=["models=[{name: 'a:b', input_price: 1, output_price: 1}]"])
    with pytest.raises(ConfigError, match="duplicate name"):
        load_config(PoolConfig, overrides=["models=[{name: a, input_price: 1, output_price: 1},"
                                           " {name: a, input_price: 1, output_price: 1}]"])
    with pytest.raises(ConfigError, match="pool.backend"):
        load_config(PoolConfig, overrides=["backend=vllm"])
    cfg = load_config(PoolConfig, overrides=["models=[{name: Unpriced}]"])
    with pytest.raises(ConfigError, match="'Unpriced': no price"):
        resolve_model_cards(cfg)


# --------------------------------------------------------------------------------------------------
# recorded pool on real GSM8K rows


@pytest.fixture(scope="module")
def recorded_pool(tmp_path_factory) -> RecordedPool:
    cache = tmp_path_factory.mktemp("embeddings")
    cfg = PoolConfig(recorded=RecordedPoolConfig(table=str(GSM8K), match_threshold=0.8,
                                                 encoder=EncoderConfig(cache_dir=str(cache))))
    pool = build_pool(cfg, max_rows=12)
    assert isinstance(pool, CandidatePool)
    return pool


def test_recorded_pool_serves_the_recorded_answer_of_an_exact_question(recorded_pool):
    row = gsm8k_rows(3)[2]
    [gpt4, mixtral] = recorded_pool.answer_many([
        CandidateCall("GPT-4-Turbo", row["prompt"], question=row["prompt"]),
        CandidateCall("Mixtral-8x7B", "  " + row["prompt"].replace(" ", "\n", 1), question=row["prompt"]),
    ])
    assert gpt4.text == row[f"{GPT4}_response"].strip()
    assert mixtral.text == row[f"{MIXTRAL}_response"].strip()
    assert gpt4.similarity == 1.0 and mixtral.similarity == 1.0  # whitespace differences are ignored
    assert gpt4.recorded_score == (1.0 if row[GPT4] == "True" else 0.0)
    # no token counts in this table: estimated at 4 characters per token, priced at $10/$30 per M
    input_tokens = math.ceil(len(row["prompt"]) / 4)
    output_tokens = math.ceil(len(row[f"{GPT4}_response"]) / 4)
    assert (gpt4.input_tokens, gpt4.output_tokens) == (input_tokens, output_tokens)
    assert gpt4.cost_usd == pytest.approx((input_tokens * 10 + output_tokens * 30) / 1e6)
    assert mixtral.cost_usd < gpt4.cost_usd / 10


def test_recorded_pool_can_serve_only_the_final_number_at_the_full_exchange_cost(recorded_pool, tmp_path):
    from routerforge.rl.tasks import final_number

    rows = gsm8k_rows(12)
    cfg = PoolConfig(recorded=RecordedPoolConfig(table=str(GSM8K), serve="final_number",
                                                 encoder=EncoderConfig(cache_dir=str(tmp_path))))
    numbers_pool = build_pool(cfg, max_rows=12)
    calls = [CandidateCall(model, row["prompt"], question=row["prompt"])
             for row in rows for model in ("Mixtral-8x7B", "GPT-4-Turbo")]
    full, short = recorded_pool.answer_many(calls), numbers_pool.answer_many(calls)
    for full_answer, short_answer in zip(full, short, strict=True):
        assert short_answer.text == final_number(full_answer.text) and short_answer.text.lstrip("-")[0].isdigit()
        assert len(short_answer.text) < len(full_answer.text) / 10
        assert (short_answer.input_tokens, short_answer.output_tokens, short_answer.cost_usd) == \
            (full_answer.input_tokens, full_answer.output_tokens, full_answer.cost_usd)
    # Mixtral writes "#### n" at the end of its solution; the served number is that one
    mixtral_row = rows[0][f"{MIXTRAL}_response"]
    assert "####" in mixtral_row and short[0].text == mixtral_row.split("####")[1].split()[0].replace(",", "")
    with pytest.raises(ValueError, match="pool.recorded.serve"):
        RecordedPoolConfig(serve="number")


@pytest.mark.slow  # loads the real MiniLM encoder: ~15 s on a busy 2-core machine
def test_recorded_pool_matches_a_paraphrased_sub_query_to_its_nearest_prompt(recorded_pool):
    rows = gsm8k_rows(12)
    janet = rows[0]["prompt"]
    paraphrase = ("Janet's ducks lay 16 eggs each day; she eats 3 for breakfast and uses 4 to bake muffins. "
                  "She sells the rest at $2 per egg. How much money does she make daily at the farmers' market?")
    unrelated = "Who painted the ceiling of the Sistine Chapel?"
    question = rows[5]["prompt"]
    [near, far] = recorded_pool.answer_many([CandidateCall("Mixtral-8x7B", paraphrase, question=question),
                                             CandidateCall("Mixtral-8x7B", unrelated, question=question)])
    assert near.matched_prompt == janet and 0.8 <= near.similarity < 1.0
    assert near.text == rows[0][f"{MIXTRAL}_response"].strip()
    # nothing close: the episode's own question is answered instead
    assert far.similarity < 0.8
    assert far.matched_prompt == question and far.text == rows[5][f"{MIXTRAL}_response"].strip()
    # a question that is not in the table cannot be the fallback
    with pytest.raises(PoolError, match="question is not in"):
        recorded_pool.answer_many([CandidateCall("Mixtral-8x7B", "Who painted the Sistine Chapel?",
                                                 question="What is the capital of France?")])


def test_recorded_pool_refuses_unknown_models(recorded_pool):
    with pytest.raises(PoolError, match="'Claude' is not in the pool"):
        recorded_pool.answer_many([CandidateCall("Claude", "q", "q")])


def test_recorded_pool_needs_answers_for_every_pool_model(tmp_path):
    cards = [ModelCard("Other", "some/other-model", "", 1.0, 1.0)]
    records = read_recorded_answers(GSM8K, max_rows=2)
    with pytest.raises(DataError, match="no answers for model"):
        RecordedPool(cards, records, RecordedPoolConfig(encoder=EncoderConfig(cache_dir=str(tmp_path))))


def test_long_outcome_table_with_token_counts(tmp_path):
    table = tmp_path / "outcomes.jsonl"
    lines = [
        {"prompt": "What is 2+2?", "model": "small", "response": "4", "score": 1, "input_tokens": 7,
         "output_tokens": 1},
        {"prompt": "What is 2+2?", "model": "big", "response": "It is 4.", "score": 1, "input_tokens": 7,
         "output_tokens": 4},
        {"prompt": "Name a prime above 10.", "model": "small", "response": "12", "score": 0},
        {"prompt": "Name a prime above 10.", "model": "big", "response": "11", "score": 1},
        {"prompt": "broken row without a response", "model": "big"},
    ]
    table.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    records = read_recorded_answers(table)
    assert len(records) == 4 and records[2].source_line == 3
    cards = [ModelCard("Small", "small", "", 1.0, 2.0), ModelCard("Big", "big", "", 10.0, 20.0)]
    pool = RecordedPool(cards, records, RecordedPoolConfig(table=str(table),
                                                           encoder=EncoderConfig(cache_dir=str(tmp_path))))
    [big] = pool.answer_many([CandidateCall("Big", "What is 2+2?", "What is 2+2?")])
    assert (big.text, big.input_tokens, big.output_tokens) == ("It is 4.", 7, 4)
    assert big.cost_usd == pytest.approx((7 * 10 + 4 * 20) / 1e6)
    [small] = pool.answer_many([CandidateCall("Small", "Name a prime above 10.", "Name a prime above 10.")])
    assert small.recorded_score == 0.0 and small.output_tokens == 1  # estimated: ceil(2 chars / 4)


def test_recorded_table_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="is not a file"):
        read_recorded_answers(tmp_path / "missing.csv")
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"prompt": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="no usable"):
        read_recorded_answers(empty)


# --------------------------------------------------------------------------------------------------
# local HF causal LM pool with its on-disk cache


def build_tiny_qwen2(directory: Path, seed: int) -> Path:
    """A random-init Qwen2 (2 layers, width 32) and a byte-level BPE tokenizer trained here, saved to `directory`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([row["prompt"] for row in gsm8k_rows(20)], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                        unk_token="<unk>")
    tokenizer.chat_template = "{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}<|assistant|>"
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_hf_pool_generates_once_then_serves_from_its_disk_cache(tmp_path):
    model_dir = build_tiny_qwen2(tmp_path / "tiny-qwen2", seed=0)
    card = ModelCard("Tiny", str(model_dir), "a tiny model", 1.0, 2.0)
    cfg = HFPoolConfig(cache_dir=str(tmp_path / "cache"), max_new_tokens=6, device="cpu")
    call = CandidateCall("Tiny", "How many eggs are left?", question="q")

    first_pool = HFCausalLMPool([card], cfg, agent_prompt="Question: {query}")
    [first] = first_pool.answer_many([call])
    assert first_pool.generations == 1 and not first.cached
    assert 1 <= first.output_tokens <= 6 and first.input_tokens > 5
    assert first.cost_usd == pytest.approx((first.input_tokens * 1.0 + first.output_tokens * 2.0) / 1e6)

    # a fresh pool (a new process, say) reads the answer back without generating
    second_pool = HFCausalLMPool([card], cfg, agent_prompt="Question: {query}")
    [second] = second_pool.answer_many([call])
    assert second.cached and second_pool.generations == 0
    assert (second.text, second.input_tokens, second.output_tokens) == (first.text, first.input_tokens,
                                                                        first.output_tokens)
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 1

    # other generation settings, another prompt, or other weights in the same directory: cache misses
    longer = HFCausalLMPool([card], HFPoolConfig(cache_dir=cfg.cache_dir, max_new_tokens=7, device="cpu"),
                            agent_prompt="Question: {query}")
    assert not longer.answer_many([call])[0].cached
    reworded = HFCausalLMPool([card], cfg, agent_prompt="Q: {query}")
    assert not reworded.answer_many([call])[0].cached
    build_tiny_qwen2(model_dir, seed=1)
    retrained = HFCausalLMPool([card], cfg, agent_prompt="Question: {query}")
    assert not retrained.answer_many([call])[0].cached and retrained.generations == 1
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 4


def test_hf_pool_reports_a_model_it_cannot_load(tmp_path):
    card = ModelCard("Missing", str(tmp_path / "no-such-model"), "", 1.0, 1.0)
    pool = HFCausalLMPool([card], HFPoolConfig(cache_dir=str(tmp_path)), agent_prompt="{query}")
    with pytest.raises(PoolError, match="cannot load"):
        pool.answer_many([CandidateCall("Missing", "q", "q")])


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible chat endpoint on a loopback server


class ChatServer:
    """A real HTTP server speaking /v1/chat/completions; scripted failures and a concurrency probe."""

    def __init__(self, fail_first: int = 0, fail_status: int = 503, delay_s: float = 0.0, key: str = "sk-test"):
        self.fail_first, self.fail_status, self.delay_s, self.key = fail_first, fail_status, delay_s, key
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                            "body": body})
                    attempt = len(server.requests)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay_s)
                    if self.headers.get("Authorization") != f"Bearer {server.key}":
                        return self._reply(401, {"error": f"bad key {self.headers.get('Authorization')}"})
                    if attempt <= server.fail_first:
                        return self._reply(server.fail_status, {"error": "overloaded"}, retry_after="0")
                    question = body["messages"][0]["content"]
                    self._reply(200, {"choices": [{"message": {"role": "assistant",
                                                               "content": f"{body['model']} says: {question}"}}],
                                      "usage": {"prompt_tokens": 11, "completion_tokens": 5}})
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _reply(self, status, payload, retry_after=None):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    if retry_after is not None:
                        self.send_header("Retry-After", retry_after)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left (the timeout test does that on purpose)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


CARDS = [ModelCard("Small", "small-model", "", 0.5, 1.5), ModelCard("Large", "large-model", "", 5.0, 15.0)]


def openai_pool(monkeypatch, server: ChatServer, key: str = "sk-test", **overrides) -> OpenAIChatPool:
    monkeypatch.setenv("RF_TEST_BASE_URL", server.url)
    monkeypatch.setenv("RF_TEST_KEY", key)
    settings = {"base_url_env": "RF_TEST_BASE_URL", "api_key_env": "RF_TEST_KEY", "timeout_s": 2.0,
                "max_retries": 2, "backoff_s": 0.01, **overrides}
    return OpenAIChatPool(CARDS, OpenAIPoolConfig(**settings), agent_prompt="Help with: {query}")


def test_openai_pool_retries_an_injected_503_and_bills_the_reported_usage(monkeypatch):
    with ChatServer(fail_first=1) as server:
        pool = openai_pool(monkeypatch, server)
        [answer] = pool.answer_many([CandidateCall("Large", "how many eggs?", "q")])
    assert len(server.requests) == 2  # one 503, one success
    assert all(r["path"] == "/v1/chat/completions" and r["auth"] == "Bearer sk-test" for r in server.requests)
    sent = server.requests[-1]["body"]
    assert sent["model"] == "large-model" and sent["messages"][0]["content"] == "Help with: how many eggs?"
    assert answer.text == "large-model says: Help with: how many eggs?"
    assert (answer.input_tokens, answer.output_tokens, answer.backend) == (11, 5, "openai")
    assert answer.cost_usd == pytest.approx((11 * 5.0 + 5 * 15.0) / 1e6)


def test_openai_pool_bounds_requests_in_flight_and_keeps_the_call_order(monkeypatch):
    with ChatServer(delay_s=0.15) as server:
        pool = openai_pool(monkeypatch, server, max_concurrency=2)
        calls = [CandidateCall("Small" if i % 2 else "Large", f"question {i}", "q") for i in range(6)]
        answers = pool.answer_many(calls)
    assert server.max_in_flight == 2
    assert [a.text for a in answers] == [f"{'small' if i % 2 else 'large'}-model says: Help with: question {i}"
                                         for i in range(6)]
    assert [a.model for a in answers] == [c.model for c in calls]


def test_openai_pool_gives_up_after_its_retries(monkeypatch):
    with ChatServer(fail_first=99) as server:
        pool = openai_pool(monkeypatch, server, on_failure="raise")
        with pytest.raises(PoolCallFailed, match="after 3 attempts .*HTTP 503"):
            pool.answer_many([CandidateCall("Small", "q", "q")])
        assert len(server.requests) == 3
        lenient = openai_pool(monkeypatch, server, on_failure="information")
        [answer] = lenient.answer_many([CandidateCall("Small", "q", "q")])
    assert answer.backend == "failed" and answer.cost_usd == 0.0 and "failed" in answer.text
    assert lenient.failed_calls == 1


def test_openai_pool_times_out_a_slow_server(monkeypatch):
    with ChatServer(delay_s=1.0) as server:
        pool = openai_pool(monkeypatch, server, timeout_s=0.2, max_retries=1, on_failure="raise")
        started = time.monotonic()
        with pytest.raises(PoolCallFailed, match="Timeout"):
            pool.answer_many([CandidateCall("Small", "q", "q")])
    assert time.monotonic() - started < 1.5


def test_openai_pool_does_not_retry_a_bad_key_and_never_shows_it(monkeypatch):
    with ChatServer() as server:
        pool = openai_pool(monkeypatch, server, key="sk-wrong-secret")
        with pytest.raises(PoolError) as raised:
            pool.answer_many([CandidateCall("Small", "q", "q")])
    assert len(server.requests) == 1
    assert "HTTP 401" in str(raised.value) and "sk-wrong-secret" not in str(raised.value)
    assert not isinstance(raised.value, PoolCallFailed)


def test_openai_pool_needs_its_environment_variables(monkeypatch):
    monkeypatch.delenv("RF_ABSENT_URL", raising=False)
    with pytest.raises(PoolError, match="RF_ABSENT_URL"):
        OpenAIChatPool(CARDS, OpenAIPoolConfig(base_url_env="RF_ABSENT_URL"), agent_prompt="{query}")
    monkeypatch.setenv("RF_PRESENT_URL", "http://127.0.0.1:9/v1")
    monkeypatch.delenv("RF_ABSENT_KEY", raising=False)
    with pytest.raises(PoolError, match="RF_ABSENT_KEY"):
        OpenAIChatPool(CARDS, OpenAIPoolConfig(base_url_env="RF_PRESENT_URL", api_key_env="RF_ABSENT_KEY"),
                       agent_prompt="{query}")


def test_build_pool_picks_the_backend(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    models = [CandidateModelConfig(name="M", model="m", input_price=1.0, output_price=1.0)]
    assert isinstance(build_pool(PoolConfig(backend="openai", models=models)), OpenAIChatPool)
    assert isinstance(build_pool(PoolConfig(backend="hf", models=models)), HFCausalLMPool)
