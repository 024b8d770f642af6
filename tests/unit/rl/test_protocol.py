"""The Router-R1 text protocol: stop at the closing tag, call parsing, format rules, answer extraction."""

from __future__ import annotations

import pytest

from routerforge.rl.protocol import (
    blocks,
    cut_at_stop,
    extract_answer,
    information_block,
    last_open_search,
    parse_search,
    render_prompt,
    validate_format,
)

MODELS = ["Mixtral-8x7B", "GPT-4-Turbo"]

VALID = (
    "<think>I should ask a strong model.</think>\n"
    "<search>GPT-4-Turbo: How many eggs are left after 3 + 4 are used from 16?</search>"
    "\n\n<information>16 - 7 = 9 eggs are left.</information>\n\n"
    "<think>9 eggs at $2 each.</think>\n<answer> 18 </answer>"
)


def test_cut_at_stop_keeps_text_up_to_the_first_closing_search_or_answer():
    text = "<think>a</think><search>GPT-4-Turbo: q</search>hallucinated <information>x</information>"
    assert cut_at_stop(text) == ("<think>a</think><search>GPT-4-Turbo: q</search>", "search")
    assert cut_at_stop("<think>a</think><answer>5</answer> trailing") == ("<think>a</think><answer>5</answer>",
                                                                          "answer")
    # the first stop wins, whichever tag it is
    assert cut_at_stop("<answer>1</answer><search>A: b</search>")[1] == "answer"
    assert cut_at_stop("<think>no stop yet") == ("<think>no stop yet", None)


def test_parse_search_splits_at_the_first_colon_and_strips():
    call = parse_search(" GPT-4-Turbo :  What is 3:00 pm plus 2 hours? ")
    assert (call.model, call.query) == ("GPT-4-Turbo", "What is 3:00 pm plus 2 hours?")
    assert parse_search("no colon here") is None
    assert last_open_search("<think>t</think><search>Mixtral-8x7B: hi</search>") == "Mixtral-8x7B: hi"
    assert last_open_search("<think>t</think>") is None


def test_a_well_formed_trajectory_passes_and_its_answer_is_extracted():
    check = validate_format(VALID, MODELS)
    assert check.ok, check.reason
    assert extract_answer(VALID) == "18"
    assert [b.tag for b in blocks(VALID)] == ["think", "search", "information", "think", "answer"]
    # answering directly, without any call, is allowed
    assert validate_format("<think>easy</think><answer>4</answer>", MODELS).ok


@pytest.mark.parametrize("text, reason_part", [
    ("<answer>18</answer>", "does not start with <think>"),
    ("<think>x</think>", "does not end with </answer>"),
    ("<think>x</think><think>y</think><answer>1</answer>", "<think> after <think>"),
    ("<think>x</think><search>GPT-4-Turbo: q</search><think>y</think><answer>1</answer>", "<think> after <search>"),
    ("<think>x</think><search>GPT-4-Turbo: q</search><information>i</information><answer>1</answer>",
     "<answer> after <information>"),
    ("<think>x</think>stray words<answer>1</answer>", "text outside tags"),
    ("<think>x <answer>1</answer></think><answer>1</answer>", "nested"),
    ("<think>...</think><answer>1</answer>", "empty <think>"),
    ("<think>x</think><search>no colon</search><information>i</information><think>y</think><answer>1</answer>",
     "is not 'Model-Name: query'"),
    ("<think>x</think><search>Claude: q</search><information>i</information><think>y</think><answer>1</answer>",
     "unknown model 'Claude'"),
    ("<think>x</think><search>GPT-4-Turbo:  </search><information>i</information><think>y</think><answer>1</answer>",
     "empty query"),
    ("<think>x</think><search>Model-Name: Your-Query</search><information>i</information><think>y</think>"
     "<answer>1</answer>", "placeholder"),
    ("<think>x</think><answer>1</answer><answer>2</answer>", "<answer> after <answer>"),
    ("<think>x</think><search>GPT-4-Turbo: q</search><think>y</think><answer>1</answer>", "<think> after <search>"),
    ("<think>x</think><answer>1</answer></think>", "does not end with </answer>"),
    ("<think>x</think><information>i</information><answer>1</answer>", "<information> after <think>"),
])
def test_format_violations_are_caught_with_a_reason(text, reason_part):
    check = validate_format(text, MODELS)
    assert not check.ok
    assert reason_part in check.reason


def test_unbalanced_tags_are_a_violation():
    check = validate_format("<think>x</think><search>GPT-4-Turbo: q<answer>1</answer>", MODELS)
    assert not check.ok and "<search>" in check.reason


def test_any_model_name_is_accepted_without_a_pool():
    text = "<think>x</think><search>Anything: q</search><information>i</information><think>y</think><answer>1</answer>"
    assert validate_format(text).ok
    assert not validate_format(text, MODELS).ok


def test_information_block_strips_protocol_tags_from_the_candidate_answer():
    block = information_block("<think>let me think</think> The answer is <answer>9</answer>.")
    assert block == "\n\n<information>let me think The answer is 9.</information>\n\n"
    # so a reasoning candidate cannot break the policy's format
    text = "<think>x</think><search>GPT-4-Turbo: q</search>" + block + "<think>y</think><answer>9</answer>"
    assert validate_format(text, MODELS).ok


def test_extract_answer_takes_the_last_answer_block_and_none_without_one():
    assert extract_answer("<answer>1</answer> <answer>\n 2 \n</answer>") == "2"
    assert extract_answer("<think>no answer</think>") is None


def test_render_prompt_names_every_model_with_its_descriptor_and_ends_with_the_question():
    prompt = render_prompt("What is 2+2?", [("A", "cheap. Price: $1"), ("B", "strong. Price: $9")])
    assert "- A: cheap. Price: $1" in prompt and "- B: strong. Price: $9" in prompt
    assert "exactly one of: A, B" in prompt
    assert prompt.rstrip().endswith("Question: What is 2+2?")
