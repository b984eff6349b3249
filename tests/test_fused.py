"""Fused kernels: compiled and eager forms agree; a kernel that cannot be compiled runs eagerly."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from sparselab.fused import fused


def scaled_sum_in_place(total: torch.Tensor, x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    total.add_(x.abs() * y / (y.abs() + 1.0) * scale)
    return total.sum()


def test_compiled_kernel_matches_the_eager_one_for_every_size():
    kernel = fused(scaled_sum_in_place)
    g = torch.Generator().manual_seed(0)
    for size in (7, 1000, 4096):  # one compiled kernel serves every length (dynamic shapes)
        x, y = torch.randn(size, generator=g), torch.randn(size, generator=g)
        got_total, want_total = torch.ones(size), torch.ones(size)
        got = kernel(got_total, x, y, torch.tensor(0.5))
        want = scaled_sum_in_place(want_total, x, y, torch.tensor(0.5))
        torch.testing.assert_close(got_total, want_total)  # the in-place update reached the caller's tensor
        torch.testing.assert_close(got, want)


def breaks_the_graph(x: torch.Tensor) -> torch.Tensor:
    y = x * 2
    torch._dynamo.graph_break()  # fullgraph compilation refuses this
    return y + 1


def test_a_kernel_that_cannot_be_compiled_runs_op_by_op_with_one_warning(caplog):
    kernel = fused(breaks_the_graph)
    with caplog.at_level(logging.WARNING, logger="sparselab.fused"):
        first = kernel(torch.arange(3.0))
        second = kernel(torch.arange(4.0))
    torch.testing.assert_close(first, torch.tensor([1.0, 3.0, 5.0]))
    torch.testing.assert_close(second, torch.tensor([1.0, 3.0, 5.0, 7.0]))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "breaks_the_graph: cannot compile a fused kernel here" in warnings[0]


def test_an_error_of_the_inputs_is_raised_not_hidden():
    kernel = fused(scaled_sum_in_place)
    with pytest.raises(RuntimeError, match="size"):
        kernel(torch.ones(3), torch.ones(4), torch.ones(4), torch.tensor(1.0))


def test_importing_the_pipeline_does_not_load_the_compiler():
    """Every job script imports sparselab.pipeline; torch's compiler (~2 s of imports) loads only
    in a job that runs a fused kernel."""
    code = "import sys, sparselab.pipeline; print(sorted(m for m in ('torch._dynamo', 'torch._inductor') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
