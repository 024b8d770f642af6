"""Scheduling the calls: answers from every candidate, then the judge; the spend cap; progress.

    path, stats = run_label(cfg)    # raises SpendCapReached (exit 3) when the cap stops the run

Every call goes through `Labeler.call`: a cache hit returns the stored reply (its token cost counts
toward the label set's spend, but nothing is called); a miss first reserves the call's worst-case
cost (input tokens <= UTF-8 bytes of the messages + 16 per message, since a BPE token covers at least
one byte; output tokens <= max_tokens) and is only made if spent + reserved + that estimate stays
within `spend_cap_usd`. So the cap is hard: it holds even with many calls in flight. Once a call does
not fit, no new call starts, the calls in flight finish and are cached, and the run ends with
`SpendCapReached`; re-running with a higher cap continues from the cache.

Prompts are labeled by a bounded pool of workers (twice the largest endpoint concurrency), so the
reservations and memory stay bounded however long the prompts file is.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path

from routerforge.data.report import Ledger
from routerforge.errors import RouterForgeError
from routerforge.io.digest import sha256_file
from routerforge.label import templates
from routerforge.label.cache import CachedReply, CallCache, call_key
from routerforge.label.client import CallFailed, open_endpoint
from routerforge.label.config import EndpointConfig, LabelConfig
from routerforge.label.label_set import write_label_set
from routerforge.label.prompts import PromptRow, read_prompts
from routerforge.label.results import Results, RunStats


class SpendCapReached(RouterForgeError):
    """The spend cap stopped the run before every call was made (finished calls are cached)."""

    exit_code = 3


def _worst_case_cost(cfg: EndpointConfig, messages: list[dict], max_tokens: int) -> float:
    input_bound = sum(len(m["content"].encode("utf-8")) + 16 for m in messages)
    return cfg.cost_usd(input_bound, max_tokens)


class Labeler:
    def __init__(self, cfg: LabelConfig, cache: CallCache, progress) -> None:
        self.cfg = cfg
        self.cache = cache
        self.progress = progress
        self.stats = RunStats()
        self.results = Results()
        self.endpoints = {c.name: open_endpoint(c) for c in cfg.candidates}
        self.judge = open_endpoint(cfg.judge.endpoint) if cfg.judge.mode != "reference" else None
        self._reserved_usd = 0.0
        self._stopped = False
        self._in_flight: dict[str, asyncio.Future] = {}
        self._started = time.monotonic()

    def _tick(self) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        self.progress.set_postfix_str(f"{self.stats.new_calls / elapsed:.1f} new calls/s, "
                                      f"${self.stats.spent_usd:.4f} spent", refresh=False)
        self.progress.update(1)

    async def call(self, ep_cfg: EndpointConfig, endpoint, messages: list[dict], template_version: str
                   ) -> CachedReply | None:
        generation = ep_cfg.generation.request_params()
        key = call_key(ep_cfg.kind, endpoint.model_id, messages, generation, template_version)
        if key in self._in_flight:  # the same call for another prompt (a repeated prompt text): share it
            return await self._in_flight[key]
        future = asyncio.ensure_future(self._call_once(ep_cfg, endpoint, messages, generation, template_version, key))
        self._in_flight[key] = future
        future.add_done_callback(lambda _: self._in_flight.pop(key, None))
        return await future

    async def _call_once(self, ep_cfg: EndpointConfig, endpoint, messages: list[dict], generation: dict,
                         template_version: str, key: str) -> CachedReply | None:
        cached = self.cache.get(key)
        if cached is not None:
            self.stats.cached_calls += 1
            self.stats.spent_usd += ep_cfg.cost_usd(cached.input_tokens, cached.output_tokens)
            self._tick()
            return cached
        estimate = _worst_case_cost(ep_cfg, messages, generation["max_tokens"])
        if self._stopped or self.stats.spent_usd + self._reserved_usd + estimate > self.cfg.spend_cap_usd:
            self._stopped = True
            self.stats.skipped_calls += 1
            return None
        self._reserved_usd += estimate
        try:
            reply = await endpoint.chat(messages, generation)
        except CallFailed as exc:
            self.stats.failures.append({"endpoint": ep_cfg.name, "error": exc.detail})
            return None
        finally:
            self._reserved_usd -= estimate
        # Spent moves up in the same step the reservation goes (no await between): the cap check never
        # sees this call's cost missing.
        cost = ep_cfg.cost_usd(reply.input_tokens, reply.output_tokens)
        self.stats.spent_usd += cost
        self.stats.new_spent_usd += cost
        stored = await self.cache.put(key, endpoint.model_id, template_version, reply.text, reply.input_tokens,
                                      reply.output_tokens)
        self.stats.new_calls += 1
        self._tick()
        return stored

    async def label_prompt(self, row: PromptRow) -> None:
        user = [{"role": "user", "content": row.prompt}]
        replies = await asyncio.gather(*(self.call(c, self.endpoints[c.name], user, templates.ANSWER_VERSION)
                                         for c in self.cfg.candidates))
        answers = {c.name: r for c, r in zip(self.cfg.candidates, replies, strict=True) if r is not None}
        for name, reply in answers.items():
            self.results.answers[(row.prompt_id, name)] = reply
        judge_cfg = self.cfg.judge.endpoint
        jobs: list[tuple[tuple, list[dict], str]] = []
        if self.cfg.judge.mode == "single":
            version = templates.SINGLE_TEMPLATE_VERSION
            jobs = [((row.prompt_id, name), templates.single_messages(row.prompt, reply.text), version)
                    for name, reply in answers.items()]
        elif self.cfg.judge.mode == "pairwise":
            version = templates.PAIR_TEMPLATE_VERSION
            names = [c.name for c in self.cfg.candidates if c.name in answers]
            for i, first in enumerate(names):
                for second in names[i + 1:]:
                    a, b = answers[first].text, answers[second].text
                    jobs.append(((row.prompt_id, first, second, 1), templates.pair_messages(row.prompt, a, b), version))
                    jobs.append(((row.prompt_id, first, second, 2), templates.pair_messages(row.prompt, b, a), version))
        judged = await asyncio.gather(*(self.call(judge_cfg, self.judge, messages, version)
                                        for _, messages, version in jobs))
        for (key, messages, _), reply in zip(jobs, judged, strict=True):
            if reply is not None:
                self.results.judgments[key] = (messages, reply)

    async def run(self, prompts: list[PromptRow]) -> None:
        queue: asyncio.Queue[PromptRow] = asyncio.Queue()
        for row in prompts:
            queue.put_nowait(row)
        concurrency = max([c.max_concurrency for c in self.cfg.candidates] + [self.cfg.judge.endpoint.max_concurrency])

        async def worker() -> None:
            while not queue.empty() and not self._stopped:
                await self.label_prompt(queue.get_nowait())

        try:
            await asyncio.gather(*(worker() for _ in range(2 * concurrency)))
        finally:
            for endpoint in [*self.endpoints.values(), self.judge]:
                if endpoint is not None:
                    self.stats.retries += endpoint.retries
                    await endpoint.aclose()
        if self._stopped:
            # Calls of prompts never started were not counted as skipped: say how many prompts remain.
            self.stats.skipped_calls += queue.qsize() * calls_per_prompt(self.cfg)


def calls_per_prompt(cfg: LabelConfig) -> int:
    n = len(cfg.candidates)
    return n + {"single": n, "pairwise": n * (n - 1), "reference": 0}[cfg.judge.mode]


def label_set_version(cfg: LabelConfig, prompts_sha256: str, model_ids: dict[str, str]) -> str:
    """A fingerprint of everything that determines the labels (not the spend cap, cache or progress)."""
    judge = cfg.judge
    material = {
        "prompts_sha256": prompts_sha256, "max_prompts": cfg.max_prompts,
        "candidates": [[c.name, c.kind, model_ids[c.name], c.generation.request_params(),
                        c.input_usd_per_m, c.output_usd_per_m] for c in cfg.candidates],
        "judge": [judge.mode, judge.inconsistent, judge.numeric_tolerance, templates.template_version(judge.mode)]
        + ([judge.endpoint.kind, model_ids["__judge__"], judge.endpoint.generation.request_params()]
           if judge.mode != "reference" else []),
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode("utf-8")).hexdigest()
    return f"v-{digest[:12]}"


def run_label(cfg: LabelConfig) -> tuple[Path, RunStats]:
    """Label `cfg.prompts`; returns (label set directory, what this run did)."""
    from tqdm import tqdm

    ledger = Ledger()
    prompts = read_prompts(cfg.prompts, ledger, cfg.max_prompts, need_reference=cfg.judge.mode == "reference")
    cache = CallCache(cfg.cache_path)
    progress = tqdm(total=len(prompts) * calls_per_prompt(cfg), unit="call", file=sys.stderr,
                    disable=not cfg.progress, desc=f"label {cfg.name}")
    started = time.monotonic()
    try:
        labeler = Labeler(cfg, cache, progress)
        model_ids = {name: ep.model_id for name, ep in labeler.endpoints.items()}
        if labeler.judge is not None:
            model_ids["__judge__"] = labeler.judge.model_id
        version = cfg.version or label_set_version(cfg, sha256_file(Path(cfg.prompts)), model_ids)
        asyncio.run(labeler.run(prompts))
    finally:
        progress.close()
        cache.close()
    stats = labeler.stats
    stats.elapsed_s = time.monotonic() - started
    if stats.skipped_calls:
        raise SpendCapReached(
            f"spend cap reached: the label set has used ${stats.spent_usd:.4f} of spend_cap_usd "
            f"${cfg.spend_cap_usd:.4f} ({stats.new_calls} calls made by this run, ${stats.new_spent_usd:.4f}); "
            f"{stats.skipped_calls} calls were not made. Finished calls are cached: re-run with a higher "
            f"spend_cap_usd to continue.")
    path = write_label_set(cfg, version, prompts, labeler.results, stats, ledger)
    return path, stats
