"""Fused elementwise kernels: chains of elementwise tensor ops compiled into one pass.

SEVEN's score update and PST's per-step work are chains of a dozen elementwise operations over
every prunable weight. Run op by op, each is a pass over memory (tens of MB per pass for MiniLM,
hundreds for BERT-base); compiled with torch.compile (C++ on a CPU, Triton on a GPU) the chain is
one pass, ~10-30x faster. Shapes are dynamic, so one compiled kernel serves every matrix size.
Compiled code is cached on disk by torch (a warm start costs ~1 s per kernel, a cold one ~20 s).

Where compiling is impossible (no C++ compiler on a node, an unsupported platform), the kernel
runs op by op instead, with one warning: the results are the same, only slower.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, TypeVar

import torch

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable)


def fused(function: F) -> F:
    """`function` compiled on first use (fullgraph, dynamic shapes), or run eagerly if it cannot be.

    `function` must be pure tensor code: its compiled and eager forms compute the same values.
    Scalars that change between calls (a step's bias correction) go in as 0-d tensors, so that
    a new value does not trigger a recompilation.
    """
    compiled = None
    use_compiled = True

    @functools.wraps(function)
    def run(*args, **kwargs):
        nonlocal compiled, use_compiled
        if use_compiled:
            if compiled is None:  # torch.compile imports torch's compiler (~2 s): only jobs that fuse pay it
                compiled = torch.compile(function, fullgraph=True, dynamic=True)
            try:
                return compiled(*args, **kwargs)
            except Exception as error:
                if not _is_compile_failure(error):
                    raise
                result = function(*args, **kwargs)  # raises the real error if the inputs are at fault
                use_compiled = False
                log.warning("%s: cannot compile a fused kernel here (%s); running it op by op",
                            function.__qualname__, str(error).strip().splitlines()[0])
                return result
        return function(*args, **kwargs)

    return run  # type: ignore[return-value]


def _is_compile_failure(error: Exception) -> bool:
    """Whether `error` came from torch.compile's machinery rather than from the function's values."""
    from torch._dynamo.exc import BackendCompilerFailed, TorchDynamoException

    return isinstance(error, (BackendCompilerFailed, TorchDynamoException)) or type(error).__module__.startswith(
        ("torch._inductor", "torch._dynamo")
    )
