"""graddecomp: capture the rank-1 factors ``(u, delta)`` of linear-layer gradients.

The gradient of a loss with respect to a linear layer's weight is ``sum_i delta_i u_i^T``;
``capture`` records ``u`` (layer inputs) and ``delta`` (gradients at the layer outputs)
without allocating any parameter gradient, and backward stops at the first targeted layer.
"""

from graddecomp.analysis import (
    dense_gradient_bytes,
    factor_bytes,
    gradient_rank,
    gradient_singular_values,
)
from graddecomp.capture import (
    Capture,
    Factors,
    capture,
    is_supported,
    layer_shape,
    resolve_targets,
    weight_grad,
)

__all__ = [
    "Capture",
    "Factors",
    "capture",
    "dense_gradient_bytes",
    "factor_bytes",
    "gradient_rank",
    "gradient_singular_values",
    "is_supported",
    "layer_shape",
    "resolve_targets",
    "weight_grad",
]
