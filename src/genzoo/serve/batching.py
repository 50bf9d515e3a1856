"""Dynamic batching: concurrent requests to one model are answered by one model call.

A request puts its examples on the model's queue and waits; a worker thread takes what is queued -- up to
``max_batch`` examples, waiting at most ``max_wait_s`` after the first for more to arrive -- runs the function once
on all of them, and hands each request its rows. Used where batching cannot change an answer: scoring is a pure
function of each example, so a batched score equals the unbatched one exactly (sampling is not batched across
requests: each request's seed fixes its samples, and one generator cannot serve two seeds).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class _Job:
    x: Tensor
    future: Future = field(default_factory=Future)


class Batcher:
    """Batches calls of ``fn(x) -> per-example results`` (a tensor with one row per example of ``x``)."""

    def __init__(self, fn: Callable[[Tensor], Tensor], max_batch: int = 256, max_wait_s: float = 0.005,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.fn, self.max_batch, self.max_wait_s, self.on_batch = fn, max_batch, max_wait_s, on_batch
        self.jobs: queue.Queue[_Job] = queue.Queue()
        self.worker = threading.Thread(target=self._run, daemon=True, name="genzoo-batcher")
        self.worker.start()

    def __call__(self, x: Tensor) -> Tensor:
        """The results for ``x``, computed together with whatever other requests are waiting."""
        job = _Job(x)
        self.jobs.put(job)
        return job.future.result()

    def _run(self) -> None:
        later: list[_Job] = []  # jobs of another example shape: they start the next batch
        while True:
            batch = [later.pop(0) if later else self.jobs.get()]
            size, deadline = len(batch[0].x), time.monotonic() + self.max_wait_s
            while size < self.max_batch:
                try:
                    job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job.x.shape[1:] != batch[0].x.shape[1:]:
                    later.append(job)
                    continue
                batch.append(job)
                size += len(job.x)
            self._answer(batch)

    def _answer(self, batch: list[_Job]) -> None:
        if self.on_batch is not None:
            self.on_batch(sum(len(job.x) for job in batch))
        try:
            results = self.fn(torch.cat([job.x for job in batch]))
        except Exception as err:  # every waiting request gets the error (e.g. examples of the wrong shape)
            for job in batch:
                job.future.set_exception(err)
            return
        start = 0
        for job in batch:
            job.future.set_result(results[start : start + len(job.x)])
            start += len(job.x)
