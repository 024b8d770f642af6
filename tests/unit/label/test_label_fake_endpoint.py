"""`routerforge label` against a loopback OpenAI-compatible endpoint (tests/support/fake_chat_endpoint.py):
labels in each judging mode, read back by the project's own readers; cache hits; 429/5xx retries;
unparseable judge output; the spend cap and its resume; no key in any written file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from label_testlib import (
    API_KEY,
    BASE_URL_ENV,
    KEY_ENV,
    PROMPTS,
    endpoint,
    tree_bytes,
    write_config,
    write_prompts,
)

from routerforge.cli import main as cli_main
from routerforge.config import load_config
from routerforge.data.config import ConvertConfig, SourceConfig
from routerforge.data.readers.fastchat_judge import read_fastchat_pair_judge, read_fastchat_single_judge
from routerforge.data.readers.outcome_tables import read_outcomes
from routerforge.data.report import Ledger
from routerforge.label.config import LabelConfig
from routerforge.label.run import SpendCapReached, run_label
from tests.support.fake_chat_endpoint import FakeChatEndpoint

N_PROMPTS = len(PROMPTS)


@pytest.fixture
def fake(monkeypatch):
    with FakeChatEndpoint(API_KEY) as server:
        monkeypatch.setenv(BASE_URL_ENV, server.base_url)
        monkeypatch.setenv(KEY_ENV, API_KEY)
        yield server


def _load(path: Path, *overrides: str) -> LabelConfig:
    return load_config(LabelConfig, path, list(overrides))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_single_mode_labels_read_back_and_rerun_calls_nothing(tmp_path, fake, capsys):
    cfg_path = write_config(tmp_path, write_prompts(tmp_path / "prompts.jsonl"), mode="single")
    assert cli_main(["label", "--config", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    label_dir = Path(out.strip().splitlines()[-1].removeprefix("label set written to "))
    # Every prompt answered by both models, every answer judged once: 2 x 5 + 2 x 5 calls.
    assert fake.calls_by_model() == {"strong-model": N_PROMPTS, "weak-model": N_PROMPTS, "judge-model": 2 * N_PROMPTS}

    outcomes = {(r["prompt_id"], r["model"]): r for r in _jsonl(label_dir / "outcomes.jsonl")}
    # p4's judge output holds no rating: no label for it, and both judgements are kept in the report.
    assert sorted(outcomes) == sorted((p["prompt_id"], m) for p in PROMPTS if p["prompt_id"] != "p4"
                                      for m in ("strong-model", "weak-model"))
    assert outcomes[("p1", "strong-model")]["score"] == pytest.approx(7 / 9)  # grade 8 -> (8 - 1) / 9
    assert outcomes[("p1", "weak-model")]["score"] == pytest.approx(2 / 9)  # grade 3
    row = outcomes[("p2", "strong-model")]
    prompt_words = len("What is 17+25?".split())
    assert (row["input_tokens"], row["output_tokens"], row["task"]) == (prompt_words, 5, "math")
    assert row["cost"] == pytest.approx((prompt_words * 1000 + 5 * 2000) / 1e6)
    report = json.loads((label_dir / "report.json").read_text())
    assert report["unparseable_judgments"] == 2
    assert {u["model"] for u in report["unparseable"]} == {"strong-model", "weak-model"}
    assert all("cannot settle" in u["judgment"] for u in report["unparseable"])
    manifest = json.loads((label_dir / "manifest.json").read_text())
    assert manifest["judge"]["model"] == "judge-model" and manifest["template_version"] == "fastchat-single-v1/1"
    assert "4 unparseable judge outputs" not in out and "2 unparseable judge outputs" in out

    # The project's own readers take the files as they are.
    ledger = Ledger(echo=None)
    src = SourceConfig(name="mine", kind="outcomes", path=str(label_dir / "outcomes.jsonl"),
                       convert=ConvertConfig(rule="outcome_pairs"))
    assert len(list(read_outcomes(src, ledger))) == len(outcomes) and not ledger.bad_rows
    judge_src = SourceConfig(name="mine_judge", kind="fastchat_single_judge",
                             path=str(label_dir / "judgments" / "single.jsonl"),
                             questions_path=str(label_dir / "questions.jsonl"),
                             convert=ConvertConfig(rule="judge_score_pairs"))
    scores = list(read_fastchat_single_judge(judge_src, ledger))
    assert not ledger.bad_rows
    assert {(s["source_id"], s["model"], s["judge_score"]) for s in scores} == {
        (pid, m, 8.0 if m == "strong-model" else 3.0) for pid, m in outcomes}
    assert {s["judge"] for s in scores} == {"judge-model/single-v1"}

    # A re-run calls nothing (every call is in the cache) and writes the same bytes.
    before, calls = tree_bytes(label_dir), len(fake.answered)
    path, stats = run_label(_load(cfg_path))
    assert len(fake.answered) == calls and stats.new_calls == 0 and stats.cached_calls == 4 * N_PROMPTS
    assert path == label_dir and tree_bytes(path) == before


def test_pairwise_both_orders_and_position_bias(tmp_path, fake):
    rows = [*PROMPTS[:3], {"prompt_id": "p9", "prompt": "POSITION_BIAS: which is better?"}]
    cfg_path = write_config(tmp_path, write_prompts(tmp_path / "prompts.jsonl", rows), mode="pairwise",
                            candidates=[endpoint("strong-model"), endpoint("weak-model"), endpoint("other-model")])
    path, stats = run_label(_load(cfg_path))
    # 3 pairs per prompt, each judged in both answer orders.
    assert fake.calls_by_model()["judge-model"] == 4 * 3 * 2 and stats.new_calls == 4 * 3 + 4 * 6
    pairs = _jsonl(path / "judgments" / "pair.jsonl")
    by_key = {(p["question_id"], p["model_1"], p["model_2"]): p for p in pairs}
    assert (by_key[("p1", "strong-model", "weak-model")]["g1_winner"],
            by_key[("p1", "strong-model", "weak-model")]["g2_winner"]) == ("model_1", "model_1")
    assert (by_key[("p1", "weak-model", "other-model")]["g1_winner"]) == "tie"
    biased = by_key[("p9", "strong-model", "weak-model")]
    assert (biased["g1_winner"], biased["g2_winner"]) == ("model_1", "model_2")  # [[A]] in both orders
    outcomes = {(r["prompt_id"], r["model"]): r["score"] for r in _jsonl(path / "outcomes.jsonl")}
    assert outcomes[("p1", "strong-model")] == 1.0 and outcomes[("p1", "weak-model")] == 0.25
    assert outcomes[("p9", "strong-model")] == 0.5  # inconsistent verdicts count as ties (judge.inconsistent)

    # The FastChat pair reader drops the order-inconsistent verdicts (convert.inconsistent: drop) and names them.
    ledger = Ledger(echo=None)
    src = SourceConfig(name="mine_pairs", kind="fastchat_pair_judge", path=str(path / "judgments" / "pair.jsonl"),
                       questions_path=str(path / "questions.jsonl"))
    read = list(read_fastchat_pair_judge(src, ledger))
    assert len(read) == 3 * 3 and {b.reason for b in ledger.bad_rows} == {"inconsistent_verdict"}
    assert len(ledger.bad_rows) == 3


def test_reference_mode_makes_no_judge_call(tmp_path, fake):
    rows = [p for p in PROMPTS if "reference" in p]
    cfg_path = write_config(tmp_path, write_prompts(tmp_path / "prompts.jsonl", rows), mode="reference")
    path, _ = run_label(_load(cfg_path))
    assert "judge-model" not in fake.calls_by_model()
    outcomes = {(r["prompt_id"], r["model"]): r["score"] for r in _jsonl(path / "outcomes.jsonl")}
    # GSM8K-style final-number match: "#### 42" reference, "The answer is 42." answer.
    assert outcomes == {("p2", "strong-model"): 1.0, ("p2", "weak-model"): 0.0,
                        ("p5", "strong-model"): 1.0, ("p5", "weak-model"): 0.0}
    assert not (path / "judgments").exists()


def test_429_retry_after_and_5xx_are_retried(tmp_path, fake):
    rows = [p for p in PROMPTS if "reference" in p]
    cfg_path = write_config(tmp_path, write_prompts(tmp_path / "prompts.jsonl", rows), mode="reference")
    fake.rate_limit_next, fake.retry_after_s = 2, 0.4
    started = time.monotonic()
    path, stats = run_label(_load(cfg_path))
    waited = time.monotonic() - started
    # Backoff alone would wait 0.01 + 0.02 s; the server's Retry-After (0.4 s) is waited instead.
    assert fake.refused == [429, 429] and stats.retries == 2 and waited >= 0.4
    assert len(_jsonl(path / "outcomes.jsonl")) == 4
    fake.fail_next = 3
    _, stats = run_label(_load(cfg_path, "version=again", f"cache_path={tmp_path / 'other.sqlite'}"))
    assert fake.refused[2:] == [503, 503, 503] and stats.retries == 3 and stats.new_calls == 4
    assert not stats.failures


def test_slow_replies_time_out_are_retried_and_reported_then_a_rerun_fills_them(tmp_path, fake):
    rows = [p for p in PROMPTS if "reference" in p]
    cfg_path = write_config(tmp_path, write_prompts(tmp_path / "prompts.jsonl", rows), mode="reference",
                            candidates=[endpoint("strong-model", timeout_s=0.1, max_retries=1)])
    fake.delay_s = 0.4  # every reply comes after the 0.1 s request timeout
    path, stats = run_label(_load(cfg_path))
    assert fake.requests == 2 * len(rows) and stats.retries == len(rows) and stats.new_calls == 0
    report = json.loads((path / "report.json").read_text())
    assert report["failed_calls"] == len(rows) and "ReadTimeout" in report["failures"][0]["error"]
    assert _jsonl(path / "outcomes.jsonl") == []
    fake.delay_s = 0.0
    path, stats = run_label(_load(cfg_path))  # the failed calls were not cached: made again
    assert stats.new_calls == len(rows) and len(_jsonl(path / "outcomes.jsonl")) == len(rows)


def test_spend_cap_stops_cleanly_and_a_rerun_resumes(tmp_path, fake):
    cfg_path = write_config(tmp_path, write_prompts(tmp_path / "prompts.jsonl"), mode="single")
    # One answer call reserves at most (bytes + 16) x $1000/M + 64 x $2000/M ~ $0.16: a $0.5 cap lets
    # only a few calls start, and none may push the total over the cap.
    with pytest.raises(SpendCapReached, match="re-run with a higher spend_cap_usd") as stopped:
        run_label(_load(cfg_path, "spend_cap_usd=0.5"))
    assert stopped.value.exit_code == 3
    first = len(fake.answered)
    assert 0 < first < 4 * N_PROMPTS
    assert not (tmp_path / "labels" / "mine").exists()  # no partial label set
    spent = float(str(stopped.value).split("used $")[1].split()[0])
    assert 0 < spent <= 0.5

    path, stats = run_label(_load(cfg_path, "spend_cap_usd=100"))
    # The resumed run made exactly the calls the first one had not: no call was made twice.
    assert stats.cached_calls == first and stats.new_calls == 4 * N_PROMPTS - first
    keys = [json.dumps([c["model"], c["messages"]]) for c in fake.answered]
    assert len(keys) == len(set(keys)) == 4 * N_PROMPTS
    assert len(_jsonl(path / "outcomes.jsonl")) == 2 * (N_PROMPTS - 1)


def test_api_key_is_written_nowhere(tmp_path, fake, monkeypatch, capsys):
    cfg_path = write_config(tmp_path, write_prompts(tmp_path / "prompts.jsonl"), mode="pairwise")
    assert cli_main(["label", "--config", str(cfg_path)]) == 0
    fake.fail_next = 100  # a failing call's error text must not carry the key either
    assert cli_main(["label", "--config", str(cfg_path), "version=failing",
                     f"cache_path={tmp_path / 'c2.sqlite'}", "candidates.0.max_retries=0",
                     "candidates.1.max_retries=0"]) == 0
    report = json.loads((tmp_path / "labels" / "mine" / "failing" / "report.json").read_text())
    assert report["failed_calls"] == 2 * N_PROMPTS
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in written) and len(written) > 10
    for path in written:
        assert API_KEY.encode() not in path.read_bytes(), path
    captured = capsys.readouterr()
    assert API_KEY not in captured.out + captured.err
    # A refused key stops the run with one line that names the variable, not the value.
    monkeypatch.setenv(KEY_ENV, API_KEY + "-wrong")
    assert cli_main(["label", "--config", str(cfg_path), f"cache_path={tmp_path / 'c3.sqlite'}"]) == 2
    err = capsys.readouterr().err
    assert KEY_ENV in err and API_KEY not in err


def test_config_errors_name_the_key(tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    cfg_path = write_config(tmp_path, prompts)
    with pytest.raises(Exception, match="Did you mean 'spend_cap_usd'"):
        _load(cfg_path, "spend_cap=3")
    with pytest.raises(Exception, match="base_url_env must be the NAME of an environment variable"):
        _load(cfg_path, "candidates.0.base_url_env=http://localhost:8000/v1")
    with pytest.raises(Exception, match="pairwise needs at least two candidates"):
        _load(cfg_path, "judge.mode=pairwise", f"candidates=[{json.dumps(endpoint('solo'))}]")


def test_a_repeated_prompt_text_is_called_once(tmp_path, fake):
    rows = [PROMPTS[1], {**PROMPTS[1], "prompt_id": "p2-again"}, {**PROMPTS[1], "prompt_id": "p2"}]
    cfg_path = write_config(tmp_path, write_prompts(tmp_path / "prompts.jsonl", rows), mode="reference",
                            candidates=[endpoint("strong-model")])
    path, stats = run_label(_load(cfg_path))
    assert fake.calls_by_model() == {"strong-model": 1} and stats.new_calls == 1
    assert [r["prompt_id"] for r in _jsonl(path / "outcomes.jsonl")] == ["p2", "p2-again"]
    report = json.loads((path / "report.json").read_text())
    assert report["bad_prompt_rows"] == {"prompts": {"duplicate_id": 1}}
    [listed] = report["bad_prompt_row_list"]  # with file, line and field
    assert listed.startswith(f"{tmp_path / 'prompts.jsonl'}:3: field 'prompt_id': duplicate_id: prompt_id p2 repeated")


def test_csv_prompts_with_bad_rows_reported_by_line(tmp_path, fake, capsys):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text('prompt_id,prompt,task,reference\n'
                       'a,"What is 2+2?\nThink step by step.",math,4\n'  # a quoted prompt over two lines
                       'b,,math,5\n'
                       'c,What is 3+4?,math,\n'
                       'd,What is 10+5?,math,15\n', encoding="utf-8")
    cfg_path = write_config(tmp_path, prompts, mode="reference", candidates=[endpoint("strong-model")])
    path, _ = run_label(_load(cfg_path))
    assert [(r["prompt_id"], r["score"]) for r in _jsonl(path / "outcomes.jsonl")] == [("a", 1.0), ("d", 1.0)]
    report = json.loads((path / "report.json").read_text())
    assert report["bad_prompt_rows"] == {"prompts": {"missing_field": 2}}
    assert [line.split(": ", 1)[0] for line in report["bad_prompt_row_list"]] == [f"{prompts}:4", f"{prompts}:5"]
    assert "needs a `reference`" in report["bad_prompt_row_list"][1]


def test_help_says_what_the_command_does(capsys):
    with pytest.raises(SystemExit) as done:
        cli_main(["label", "--help"])
    assert done.value.code == 0
    assert "label the answers with an LLM judge" in " ".join(capsys.readouterr().out.split())
