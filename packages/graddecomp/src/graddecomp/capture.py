"""Capture the rank-1 factors of linear-layer gradients through autograd hooks.

For a linear layer ``y = W x`` applied to the rows ``x_i`` of a batch, the gradient of
a loss ``L`` with respect to ``W`` is a sum of outer products::

    dL/dW = sum_i delta_i u_i^T        u_i = x_i (layer input),  delta_i = dL/dy_i

``capture`` records ``u`` with a forward hook and obtains ``delta`` with one call to
``torch.autograd.grad`` on the layer outputs, so no parameter ``.grad`` is ever allocated.

How the backward pass is kept short:

* While the block is open every parameter of the model has ``requires_grad=False``
  (the previous flags are restored on exit, also on exceptions). Autograd therefore
  records nothing until a tensor that requires grad appears.
* The forward hook of each targeted layer makes its output require grad: the first
  targeted layer that runs turns its output into a fresh leaf, so the graph starts
  there; later targeted layers already depend on it. ``Capture.backward`` asks autograd
  for the gradients of exactly these outputs, so backward stops at the first targeted
  layer and never touches the embeddings or the earlier blocks.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

__all__ = [
    "Capture",
    "Factors",
    "capture",
    "is_supported",
    "layer_shape",
    "resolve_targets",
    "weight_grad",
]

Target = str | nn.Module


class Factors(NamedTuple):
    """The factors of one layer's weight gradient, one row per real token.

    ``u`` is ``[n_rows, d_in]`` (the layer inputs) and ``delta`` is ``[n_rows, d_out]``
    (the gradient of the loss with respect to the layer outputs).
    """

    u: Tensor
    delta: Tensor


def _is_conv1d(module: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D, recognised without importing transformers:
    # weight is [d_in, d_out] and ``nf`` is d_out.
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2


def is_supported(module: nn.Module) -> bool:
    """True for ``nn.Linear`` and GPT-2's ``Conv1D``, the layers whose gradient is ``sum delta u^T``."""
    return isinstance(module, nn.Linear) or _is_conv1d(module)


def layer_shape(module: nn.Module) -> tuple[int, int]:
    """``(d_out, d_in)`` of a supported layer, whatever its weight layout."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if _is_conv1d(module):
        d_in, d_out = module.weight.shape
        return int(d_out), int(d_in)
    raise TypeError(
        f"graddecomp supports nn.Linear and transformers' Conv1D, not {type(module).__module__}."
        f"{type(module).__qualname__}"
    )


def weight_grad(module: nn.Module, factors: Factors) -> Tensor:
    """``sum_i delta_i u_i^T`` in the module's own weight layout.

    Returns ``[d_out, d_in]`` for ``nn.Linear`` and ``[d_in, d_out]`` for GPT-2's ``Conv1D``.
    """
    d_out, d_in = layer_shape(module)
    u, delta = factors
    if u.shape[-1] != d_in or delta.shape[-1] != d_out:
        raise ValueError(
            f"factors of shape u={tuple(u.shape)}, delta={tuple(delta.shape)} do not fit a layer "
            f"with d_in={d_in}, d_out={d_out}"
        )
    if _is_conv1d(module):
        return u.transpose(0, 1) @ delta  # [d_in, d_out], contiguous like Conv1D's weight
    return delta.transpose(0, 1) @ u  # [d_out, d_in]


def resolve_targets(model: nn.Module, targets: Target | Iterable[Target]) -> dict[str, nn.Module]:
    """Map ``targets`` (exact names, globs such as ``"transformer.h.*.mlp.c_fc"``, or module
    objects) to ``{qualified name: module}`` in the model's order.

    Raises ``KeyError`` for a name or glob that matches nothing, and ``TypeError`` for a
    matched module that is not a supported linear layer.
    """
    if isinstance(targets, str | nn.Module):
        targets = [targets]
    named = dict(model.named_modules())
    by_id = {id(m): n for n, m in named.items()}
    chosen: set[str] = set()
    for target in targets:
        if isinstance(target, nn.Module):
            if id(target) not in by_id:
                raise KeyError(f"module {type(target).__name__} is not part of the model")
            chosen.add(by_id[id(target)])
        elif any(ch in target for ch in "*?["):
            hits = [n for n in named if n and fnmatch.fnmatchcase(n, target)]
            if not hits:
                raise KeyError(f"target glob {target!r} matches no module of the model")
            chosen.update(hits)
        elif target in named and target:
            chosen.add(target)
        else:
            close = [n for n in named if n and target.split(".")[-1] in n][:5]
            raise KeyError(
                f"no module named {target!r} in the model" + (f"; similar: {close}" if close else "")
            )
    resolved = {n: named[n] for n in named if n in chosen}
    for name, module in resolved.items():
        if not is_supported(module):
            raise TypeError(
                f"target {name!r} is a {type(module).__qualname__}; graddecomp supports nn.Linear "
                f"and transformers' Conv1D"
            )
    return resolved


@dataclass
class Capture:
    """What a ``capture`` block records. ``factors`` is filled by ``backward``."""

    modules: dict[str, nn.Module]
    mask: Tensor | None = None
    dtype: torch.dtype | None = torch.float32
    factors: dict[str, Factors] = field(default_factory=dict)
    _calls: dict[str, list[tuple[Tensor, Tensor]]] = field(default_factory=dict, repr=False)

    def backward(self, loss: Tensor, *, retain_graph: bool = False) -> dict[str, Factors]:
        """Compute ``delta`` for every recorded call of every targeted layer and fill ``factors``.

        No parameter gradient is allocated. Rows masked out by ``mask`` (when its shape
        matches the layer's leading dimensions) and rows whose ``delta`` is exactly zero
        (padding the loss never sees) are dropped.
        """
        if self.factors:
            raise RuntimeError("Capture.backward was already called for this block")
        if loss.dim() != 0:
            raise ValueError(f"loss must be a scalar, got shape {tuple(loss.shape)}")
        flat = [(name, u, y) for name, calls in self._calls.items() for u, y in calls]
        if not flat:
            raise RuntimeError(
                "no targeted layer ran inside the capture block: run the forward pass before backward"
            )
        grads = torch.autograd.grad(
            loss, [y for _, _, y in flat], retain_graph=retain_graph, allow_unused=True
        )
        rows: dict[str, list[Factors]] = {name: [] for name in self.modules}
        for (name, u, y), g in zip(flat, grads, strict=True):
            if g is None:
                g = torch.zeros_like(y)
            keep = None
            if self.mask is not None and tuple(self.mask.shape) == tuple(u.shape[:-1]):
                keep = rearrange(self.mask, "... -> (...)").to(device=u.device, dtype=torch.bool)
            u2 = rearrange(u, "... d -> (...) d")
            g2 = rearrange(g, "... d -> (...) d")
            nonzero = g2.ne(0).any(dim=-1)
            keep = nonzero if keep is None else keep & nonzero
            u2, g2 = u2[keep], g2[keep]
            if self.dtype is not None:
                u2, g2 = u2.to(self.dtype), g2.to(self.dtype)
            rows[name].append(Factors(u2, g2))
        for name, parts in rows.items():
            if parts:
                self.factors[name] = Factors(
                    torch.cat([p.u for p in parts]), torch.cat([p.delta for p in parts])
                )
            else:  # a targeted layer that never ran: an empty gradient
                d_out, d_in = layer_shape(self.modules[name])
                w = self.modules[name].weight
                dtype = self.dtype or w.dtype
                self.factors[name] = Factors(
                    torch.zeros(0, d_in, dtype=dtype, device=w.device),
                    torch.zeros(0, d_out, dtype=dtype, device=w.device),
                )
        self._calls.clear()  # frees the graph and the stored activations
        return self.factors


def _record_hook(cap: Capture, name: str):
    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            raise RuntimeError(
                f"layer {name!r} ran with gradients disabled (torch.no_grad / inference_mode) "
                "inside a capture block; run the forward pass with gradients enabled"
            )
        x = args[0]
        returned = output
        if not output.requires_grad:
            # First targeted layer on this path: start the graph here. The clone keeps
            # the leaf itself safe from in-place operations further down the model.
            output = output.detach().requires_grad_(True)
            returned = output.clone()
        cap._calls.setdefault(name, []).append((x.detach(), output))
        return returned

    return hook


@contextmanager
def capture(
    model: nn.Module,
    targets: Target | Iterable[Target],
    *,
    mask: Tensor | None = None,
    dtype: torch.dtype | None = torch.float32,
) -> Iterator[Capture]:
    """Record ``(u, delta)`` for the targeted linear layers of ``model``.

    Args:
        model: any ``nn.Module``.
        targets: layer names, globs, or module objects (see ``resolve_targets``).
        mask: optional ``[batch, seq]`` mask of real tokens (1 = keep), applied to every
            layer whose input has those leading dimensions.
        dtype: dtype of the returned factors (``None`` keeps the model's dtype). fp32 by
            default, so fp16/bf16 models give fp32 factors.

    Example::

        with capture(model, "transformer.h.*.mlp.c_fc") as cap:
            loss = model(**batch).loss
            cap.backward(loss)
        u, delta = cap.factors["transformer.h.0.mlp.c_fc"]

    Hooks are removed and ``requires_grad`` flags restored when the block exits, also on
    exceptions; nothing is left on any module or tensor.
    """
    modules = resolve_targets(model, targets)
    cap = Capture(modules=modules, mask=mask, dtype=dtype)
    trainable = [p for p in model.parameters() if p.requires_grad]
    handles = []
    try:
        for p in trainable:
            p.requires_grad_(False)
        for name, module in modules.items():
            handles.append(module.register_forward_hook(_record_hook(cap, name)))
        yield cap
    finally:
        for h in handles:
            h.remove()
        for p in trainable:
            p.requires_grad_(True)
        cap._calls.clear()
