"""Per-request timeouts: every request has a deadline -- the server's ``request_timeout``, or the request's own
``timeout`` when shorter -- and the work stops when it passes. Text generation checks it between tokens; image
sampling and edits check it before each network evaluation of the model (a forward pre-hook on the model and its
top-level modules), so a diffusion sampler stops between steps. The request gets a 504 in OpenAI's error format, the
store records it, and the model's lock is released for the next request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

from genzoo.serve.errors import APIError


class RequestTimeoutError(APIError):
    """A request ran past its deadline (504)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(504, f"the request took longer than its timeout of {seconds:g} s and was stopped",
                         kind="timeout_error", param="timeout", code="timeout")


class Deadline:
    """When a request must be done by: ``seconds`` from now on ``clock``."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.clock = seconds, clock
        self.at = clock() + seconds

    @classmethod
    def of(cls, server_limit: float, requested: float | None) -> Deadline:
        """The deadline of a request asking for ``requested`` seconds (None: the server's), capped by the server's."""
        return cls(server_limit if requested is None else min(requested, server_limit))

    def check(self) -> None:
        """Raise :class:`RequestTimeoutError` once the deadline has passed."""
        if self.clock() > self.at:
            raise RequestTimeoutError(self.seconds)

    @contextmanager
    def watching(self, model: nn.Module) -> Iterator[None]:
        """Check the deadline before every forward call of ``model`` and of its top-level modules."""
        hooks = [m.register_forward_pre_hook(lambda *_: self.check()) for m in [model, *model.children()]]
        try:
            self.check()
            yield
        finally:
            for hook in hooks:
                hook.remove()
