"""Spectrum, rank and memory of a gradient computed from its factors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graddecomp import (
    Factors,
    capture,
    dense_gradient_bytes,
    factor_bytes,
    gradient_rank,
    gradient_singular_values,
    weight_grad,
)


@pytest.mark.parametrize(("n", "d_in", "d_out"), [(3, 40, 30), (12, 8, 20), (50, 16, 9), (1, 5, 5)])
def test_singular_values_match_dense(n, d_in, d_out):
    g = torch.Generator().manual_seed(n)
    f = Factors(torch.randn(n, d_in, generator=g), torch.randn(n, d_out, generator=g))
    dense = f.delta.double().T @ f.u.double()
    ours = gradient_singular_values(f)
    ref = torch.linalg.svdvals(dense)[: ours.numel()]
    assert ours.shape[0] == min(n, d_in, d_out)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
    assert gradient_rank(f) == int(torch.linalg.matrix_rank(dense.float()))


def test_rank_of_repeated_rows_is_detected():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 16, generator=g).repeat(4, 1)  # 8 rows spanning 2 directions
    delta = torch.randn(2, 12, generator=g).repeat(4, 1)
    f = Factors(u, delta)
    assert gradient_rank(f) == int(torch.linalg.matrix_rank(delta.T @ u)) == 2
    assert gradient_rank(Factors(torch.zeros(0, 4), torch.zeros(0, 3))) == 0


def test_rank_of_a_captured_gradient():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 8))
    x = torch.randn(5, 32)
    with capture(lin, "0") as cap:
        cap.backward(lin(x).pow(2).mean())
    f = cap.factors["0"]
    dense = weight_grad(lin[0], f)
    assert gradient_rank(f) == int(torch.linalg.matrix_rank(dense)) == 5
    torch.testing.assert_close(
        gradient_singular_values(f).float(), torch.linalg.svdvals(dense)[:5], rtol=1e-4, atol=1e-6
    )


def test_bytes():
    lin = nn.Linear(768, 3072)
    f = Factors(torch.zeros(64, 768), torch.zeros(64, 3072))
    assert factor_bytes(f) == 64 * (768 + 3072) * 4
    assert dense_gradient_bytes(lin) == 768 * 3072 * 4
    assert dense_gradient_bytes(lin, torch.bfloat16) == 768 * 3072 * 2
