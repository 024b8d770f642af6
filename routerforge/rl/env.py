"""The multi-turn routing environment: policy text, candidate calls, inserted information, reward.

    env = RoutingEnv(pool, RewardConfig(), CostNormalizer(), EnvConfig(max_turns=4))
    rollouts = env.rollout_many(tasks, policy)      # policy(list of contexts) -> list of generated texts

One episode, as Router-R1 runs it (``router_r1/llm_agent/generation.py``, ``run_llm_loop``):

1. The policy continues the context (prompt + response so far). Its text is cut at the first
   ``</search>`` or ``</answer>`` (`protocol.cut_at_stop`) and appended as a POLICY segment.
2. A ``</search>`` within the first `max_turns` turns is executed: the pool answers the call and the
   environment appends ``\\n\\n<information>answer</information>\\n\\n`` as an ENV segment. A call
   that cannot be executed (no ``Name: query``, unknown model, empty query) gets an information
   block that says why, at no cost; the format check later scores the episode -1 for it (Router-R1
   inserts "None" there).
3. ``</answer>``, a segment without a stop tag (EOS or length limit), or a ``</search>`` after
   `max_turns` calls end the episode. The last case leaves a search without information, a format
   violation, as Router-R1's final no-route turn does.
4. The finished response is validated (`protocol.validate_format`) and scored
   (`reward.score_trajectory`; the cost normaliser's window is updated with every episode's cost).

All episodes of a batch advance turn by turn and each turn's calls go to the pool in one
`answer_many`, so an API pool serves them concurrently. Env segments are what the trainer masks
out of the policy loss and the KL ("state masking"): `Rollout.token_ids_and_mask` turns the
segments into token ids and a per-token mask (1 policy, 0 env).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from routerforge.config import doc
from routerforge.rl.pools import CandidateAnswer, CandidateCall, CandidatePool
from routerforge.rl.protocol import (
    FormatCheck,
    cut_at_stop,
    extract_answer,
    information_block,
    last_open_search,
    parse_search,
    render_prompt,
    validate_format,
)
from routerforge.rl.reward import CostNormalizer, RewardBreakdown, RewardConfig, score_trajectory
from routerforge.rl.tasks import RoutingTask

POLICY, ENV = "policy", "env"


@dataclass(frozen=True)
class EnvConfig:
    """Episode limits."""

    max_turns: int = doc("candidate calls per episode at most (Router-R1: 4); the policy gets max_turns + 1 "
                         "generation turns", default=4)
    max_information_chars: int = doc("truncate a candidate answer to this many characters before inserting it "
                                     "(about 4 per token; Router-R1 cuts at 600 tokens); 0 = no limit",
                                     default=2400)

    def __post_init__(self) -> None:
        if self.max_turns < 0:
            raise ValueError(f"env.max_turns must be >= 0 calls, got {self.max_turns}")
        if self.max_information_chars < 0:
            raise ValueError(f"env.max_information_chars must be >= 0, got {self.max_information_chars}")


@dataclass(frozen=True)
class PolicyOutput:
    """A generated segment; `token_ids` are the sampled ids when the policy has them (kept if not cut)."""

    text: str
    token_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Segment:
    text: str
    source: str  # "policy" or "env"
    token_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class CallRecord:
    turn: int
    model: str
    query: str
    answer: CandidateAnswer | None  # None when the call could not be executed
    problem: str | None = None


@dataclass
class Rollout:
    """One finished episode."""

    task: RoutingTask
    prompt: str
    segments: list[Segment] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    end_reason: str = ""  # answer | no_stop | max_turns
    format_check: FormatCheck | None = None
    answer: str | None = None
    reward: RewardBreakdown | None = None

    @property
    def response(self) -> str:
        """Everything after the prompt: policy and env segments, in order."""
        return "".join(segment.text for segment in self.segments)

    @property
    def cost_usd(self) -> float:
        return sum(call.answer.cost_usd for call in self.calls if call.answer is not None)

    @property
    def executed_calls(self) -> int:
        return sum(1 for call in self.calls if call.answer is not None)

    def char_spans(self) -> list[tuple[int, int, str]]:
        """(start, end, source) of each segment in `response` (character offsets)."""
        spans, position = [], 0
        for segment in self.segments:
            spans.append((position, position + len(segment.text), segment.source))
            position += len(segment.text)
        return spans

    def token_ids_and_mask(self, tokenizer) -> tuple[list[int], list[int]]:
        """Response token ids and the policy mask (1 on policy tokens, 0 on env-inserted tokens).

        Each segment is tokenised on its own (no special tokens), so a token never straddles a
        policy/env boundary; a policy segment with the ids the policy sampled uses those ids as is.
        """
        ids: list[int] = []
        mask: list[int] = []
        for segment in self.segments:
            segment_ids = list(segment.token_ids) if segment.token_ids is not None else \
                tokenizer(segment.text, add_special_tokens=False)["input_ids"]
            ids.extend(segment_ids)
            mask.extend([1 if segment.source == POLICY else 0] * len(segment_ids))
        return ids, mask


Policy = Callable[[list[str]], Sequence["str | PolicyOutput"]]
CostGather = Callable[[list[float]], tuple[list[float], int]]


def _as_output(value: str | PolicyOutput) -> PolicyOutput:
    if isinstance(value, PolicyOutput):
        return value
    if isinstance(value, str):
        return PolicyOutput(value)
    raise TypeError(f"a policy must return str or PolicyOutput per context, got {type(value).__name__}")


class RoutingEnv:
    """Drives multi-turn episodes against a candidate pool and scores them; see the module docstring."""

    def __init__(self, pool: CandidatePool, reward_cfg: RewardConfig, normalizer: CostNormalizer,
                 cfg: EnvConfig | None = None, cost_gather: CostGather | None = None) -> None:
        """cost_gather: in a multi-process run, `costs of this process's batch -> (every process's costs in
        rank order, offset of this process's first)`; every process then feeds the same sequence into its
        normaliser, so the cost window is one window over the whole batch, identical on every process (as
        in veRL, whose single driver scores the global batch), and the main process's checkpointed window
        is every process's. None: this process's costs only."""
        self.pool = pool
        self.reward_cfg = reward_cfg
        self.normalizer = normalizer
        self.cfg = cfg or EnvConfig()
        self.cost_gather = cost_gather
        self.model_names = list(pool.cards)

    def prompt_for(self, task: RoutingTask) -> str:
        """The prompt of an episode: the protocol, the pool's model descriptors, the question."""
        return render_prompt(task.question, [(card.name, card.descriptor()) for card in self.pool.cards.values()])

    def _clip(self, text: str) -> str:
        limit = self.cfg.max_information_chars
        return text if not limit or len(text) <= limit else text[:limit] + " ..."

    def rollout(self, task: RoutingTask, policy: Policy) -> Rollout:
        return self.rollout_many([task], policy)[0]

    def rollout_many(self, tasks: Sequence[RoutingTask], policy: Policy) -> list[Rollout]:
        rollouts = [Rollout(task=task, prompt=self.prompt_for(task)) for task in tasks]
        active = list(range(len(rollouts)))
        for turn in range(self.cfg.max_turns + 1):
            if not active:
                break
            outputs = policy([rollouts[i].prompt + rollouts[i].response for i in active])
            if len(outputs) != len(active):
                raise ValueError(f"the policy returned {len(outputs)} segments for {len(active)} contexts")
            pending: list[tuple[int, CandidateCall]] = []
            still_active = []
            for i, raw in zip(active, outputs, strict=True):
                output = _as_output(raw)
                kept, stop = cut_at_stop(output.text)
                token_ids = output.token_ids if kept == output.text else None  # cut text: re-tokenise later
                rollout = rollouts[i]
                if kept:
                    rollout.segments.append(Segment(kept, POLICY, token_ids))
                if stop != "search":
                    rollout.end_reason = "answer" if stop == "answer" else "no_stop"
                    continue
                if turn == self.cfg.max_turns:
                    rollout.end_reason = "max_turns"
                    continue
                still_active.append(i)
                call, problem = self._parse_call(last_open_search(kept) or "", rollout.task)
                if problem:
                    rollout.calls.append(CallRecord(turn, call.model if call else "", call.query if call else "",
                                                    None, problem))
                    rollout.segments.append(Segment(information_block(f"Call not executed: {problem}."), ENV))
                else:
                    pending.append((i, call))
            if pending:
                answers = self.pool.answer_many([call for _, call in pending])
                for (i, call), answer in zip(pending, answers, strict=True):
                    rollouts[i].calls.append(CallRecord(turn, call.model, call.query, answer))
                    rollouts[i].segments.append(Segment(information_block(self._clip(answer.text)), ENV))
            active = still_active
        costs = [rollout.cost_usd for rollout in rollouts]
        every_cost, offset = self.cost_gather(costs) if self.cost_gather is not None else (costs, 0)
        if every_cost[offset:offset + len(costs)] != costs:
            raise RuntimeError("cost_gather returned a sequence that does not hold this process's costs at its offset")
        # Every cost enters the window in order; each episode is scaled against the window that includes it.
        cost_rewards = [self.normalizer.normalize(cost) for cost in every_cost][offset:offset + len(costs)]
        for rollout, cost_reward in zip(rollouts, cost_rewards, strict=True):
            self._score(rollout, cost_reward)
        return rollouts

    def _parse_call(self, content: str, task: RoutingTask) -> tuple[CandidateCall | None, str | None]:
        call = parse_search(content)
        if call is None:
            return None, f"'{content.strip()[:60]}' is not 'Model-Name: query'"
        if call.model not in self.pool.cards:
            return CandidateCall(call.model, call.query, task.question), \
                f"unknown model '{call.model}'; the pool has {', '.join(self.model_names)}"
        if not call.query:
            return CandidateCall(call.model, call.query, task.question), "the query is empty"
        return CandidateCall(call.model, call.query, task.question), None

    def _score(self, rollout: Rollout, cost_reward: float) -> None:
        response = rollout.response
        rollout.format_check = validate_format(response, self.model_names)
        rollout.answer = extract_answer(response)
        rollout.reward = score_trajectory(format_ok=rollout.format_check.ok, answer=rollout.answer,
                                          golds=rollout.task.answers, cost_usd=rollout.cost_usd,
                                          cfg=self.reward_cfg, cost_reward=cost_reward)
