"""Micro-batching of concurrent routing requests into one encoder call.

Each request awaits `score(text)`. One worker task takes the first waiting text, then everything already
queued, then waits at most `max_wait_s` for more (up to `max_batch_size`), and scores the batch in one call of
`score_batch` on a single worker thread (the encoder is torch: one call at a time uses all its intra-op
threads; the event loop stays free to accept and forward other requests meanwhile). Requests that arrive while
a batch is being encoded form the next batch, so under load batches grow by themselves and an idle server adds
no wait beyond `max_wait_s`. This is the dynamic batching of inference servers (e.g. Triton's
`max_queue_delay_microseconds`); it is a few lines on asyncio, so no serving framework is pulled in for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class MicroBatcher:
    def __init__(self, score_batch: Callable[[Sequence[str]], np.ndarray], *, max_batch_size: int,
                 max_wait_s: float, on_batch: Callable[[int, float], None] | None = None) -> None:
        self._score_batch = score_batch
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._on_batch = on_batch  # (batch size, encoder seconds), for metrics
        self._queue: asyncio.Queue[tuple[str, asyncio.Future]] | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="routerforge-encoder")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name="routerforge-micro-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        self._executor.shutdown(wait=True)

    async def score(self, text: str) -> float:
        """The router's score of `text`, computed in a batch with whatever else is waiting."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((text, future))
        return await future

    async def _run(self) -> None:
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self._max_wait_s
            while len(batch) < self._max_batch_size:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            batch = [(text, future) for text, future in batch if not future.done()]  # callers gone: skip
            if not batch:
                continue
            texts = [text for text, _ in batch]
            started = time.perf_counter()
            try:
                scores = await loop.run_in_executor(self._executor, self._score_batch, texts)
            except Exception as err:  # the encoder failed: every caller of this batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            if self._on_batch is not None:
                self._on_batch(len(batch), time.perf_counter() - started)
            for (_, future), score in zip(batch, scores, strict=True):
                if not future.done():
                    future.set_result(float(score))
