"""Research helpers: the spectrum and memory of a gradient, from its factors alone.

The gradient ``G = D^T U`` (``D = delta [n, d_out]``, ``U = u [n, d_in]``) has rank at most
``n``. With reduced QR decompositions of the transposed factors, ``D^T = P_d T_d`` and
``U^T = P_u T_u`` (``P`` with orthonormal columns, ``T`` at most ``n x n``)::

    G = P_d (T_d T_u^T) P_u^T

Multiplying by matrices with orthonormal columns keeps singular values, so those of
``G`` are the singular values of the small ``k x k'`` matrix ``T_d T_u^T``
(``k, k' <= min(n, d)``). Nothing of size ``d_out x d_in`` is formed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from graddecomp.capture import Factors, layer_shape

__all__ = ["dense_gradient_bytes", "factor_bytes", "gradient_rank", "gradient_singular_values"]


def gradient_singular_values(factors: Factors) -> Tensor:
    """Singular values of ``sum_i delta_i u_i^T``, descending, shape ``[min(n, d_out, d_in)]``.

    Computed in float64 from the factors (``u [n, d_in]``, ``delta [n, d_out]``).
    """
    u, delta = factors.u.double(), factors.delta.double()
    if u.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64, device=u.device)
    _, t_d = torch.linalg.qr(delta.transpose(0, 1))  # delta^T = p_d t_d, t_d [k, n]
    _, t_u = torch.linalg.qr(u.transpose(0, 1))  # u^T = p_u t_u, t_u [k', n]
    small = t_d @ t_u.transpose(0, 1)  # [k, k']
    return torch.linalg.svdvals(small)


def gradient_rank(factors: Factors, *, rtol: float | None = None) -> int:
    """Numerical rank of the gradient, with ``torch.linalg.matrix_rank``'s default tolerance
    (``rtol = eps * max(d_out, d_in)`` of the factors' dtype) unless ``rtol`` is given."""
    s = gradient_singular_values(factors)
    if s.numel() == 0 or s[0] == 0:
        return 0
    if rtol is None:
        d_out, d_in = factors.delta.shape[-1], factors.u.shape[-1]
        rtol = torch.finfo(factors.u.dtype).eps * max(d_out, d_in)
    return int((s > rtol * s[0]).sum())


def factor_bytes(factors: Factors) -> int:
    """Bytes held by the factors ``u`` and ``delta``."""
    return sum(t.numel() * t.element_size() for t in factors)


def dense_gradient_bytes(module: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes a dense ``d_out x d_in`` gradient of ``module`` would take (in ``dtype``, default
    the weight's dtype)."""
    d_out, d_in = layer_shape(module)
    dtype = dtype or module.weight.dtype
    return d_out * d_in * torch.empty(0, dtype=dtype).element_size()
