"""An edit as data: low-rank factors and step sizes per layer, applied in place or in the forward.

For an edited linear layer with pseudo-factors ``u~`` ``[r, d_in]`` and ``delta~`` ``[r, d_out]``
and step size ``alpha``, the edit is ``W' = W - alpha * sum_i delta~_i u~_i^T`` (a gradient
descent step on the pseudo-gradient). ``apply_delta`` does this in place and returns a snapshot
of the touched weights (``editor_nets.state.restore_weights`` puts them back bitwise);
``applied(model, *deltas)`` does the same for the length of a block. ``lowrank_edit`` applies
the same update inside the layers' forward (``y' = y - alpha * (x @ u~^T) @ delta~``) without
ever building a ``d_out x d_in`` matrix, so gradients reach ``u~``, ``delta~`` and ``alpha``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from editor_nets.state import WeightSnapshot, restoring
from graddecomp import Factors, layer_shape, weight_grad

if TYPE_CHECKING:
    from edit_data import EditRecord

__all__ = ["EditDelta", "Editor", "LayerDelta", "applied", "apply_delta", "lowrank_edit"]


@dataclass
class LayerDelta:
    """One layer's edit: ``u`` ``[r, d_in]`` pseudo-inputs, ``delta`` ``[r, d_out]`` pseudo-deltas,
    ``alpha`` the step size. The weight update is ``-alpha * delta^T @ u`` (``[d_out, d_in]``).
    During meta-training the factors and ``alpha`` (a 0-d tensor then) carry gradients.

    ``keys`` ``[n, d_in]`` (optional) are the layer inputs a least-squares edit was solved for
    (``editor_nets.ridge``), followed, with ``MendConfig.neighbour_memory``, by rows standing for
    the neighbour prompts it held (``editor_nets.ridge.held_rows``): later edits protect them
    (their ``k k^T``), and a rollback recomputes the protection of the edits that remain from them."""

    u: Tensor
    delta: Tensor
    alpha: float | Tensor
    keys: Tensor | None = None


@dataclass
class EditDelta:
    """Per-layer low-rank factors and step sizes (keyed by module name) plus provenance."""

    layers: dict[str, LayerDelta]
    provenance: dict[str, str] = field(default_factory=dict)

    def dense(self, name: str, module: nn.Module) -> Tensor:
        """``-alpha * sum_i delta~_i u~_i^T`` in ``module``'s weight layout
        (``[d_out, d_in]`` for ``nn.Linear``, ``[d_in, d_out]`` for GPT-2's ``Conv1D``)."""
        layer = self.layers[name]
        return weight_grad(module, Factors(layer.u, layer.delta)).mul_(-float(layer.alpha))

    def squared_norm(self) -> Tensor:
        """``||update||_F^2`` over every layer, from the factors alone (differentiable):
        ``||alpha * D^T U||_F^2 = alpha^2 * sum((U U^T) * (D D^T))`` with ``r x r`` Gram matrices."""
        parts = [
            layer.alpha**2 * ((layer.u @ layer.u.T) * (layer.delta @ layer.delta.T)).sum()
            for layer in self.layers.values()
        ]
        return torch.stack(parts).sum() if parts else torch.zeros(())

    def norm(self) -> float:
        """Frobenius norm of the whole update (float64, from the factors alone)."""
        total = 0.0
        for layer in self.layers.values():
            u, d = layer.u.detach().double(), layer.delta.detach().double()
            total += float(layer.alpha) ** 2 * float(((u @ u.T) * (d @ d.T)).sum().clamp_min(0))
        return math.sqrt(total)

    def is_finite(self) -> bool:
        """True when every factor and step size is finite."""
        return all(
            math.isfinite(float(layer.alpha))
            and bool(torch.isfinite(layer.u).all())
            and bool(torch.isfinite(layer.delta).all())
            for layer in self.layers.values()
        )

    def to_tensors(self) -> dict[str, Tensor]:
        """Flat ``{"<layer>.u", "<layer>.delta", "<layer>.alpha"[, "<layer>.keys"]}`` tensors
        (contiguous, CPU)."""
        out: dict[str, Tensor] = {}
        for name, layer in self.layers.items():
            out[f"{name}.u"] = layer.u.detach().cpu().contiguous()
            out[f"{name}.delta"] = layer.delta.detach().cpu().contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(layer.alpha), dtype=torch.float64)
            if layer.keys is not None:
                out[f"{name}.keys"] = layer.keys.detach().cpu().contiguous()
        return out

    @classmethod
    def combine(cls, deltas: Sequence[EditDelta], provenance: Mapping[str, str] | None = None) -> EditDelta:
        """One edit equal to applying ``deltas`` together: per layer the factors are stacked (each
        step size folded into its ``delta``, so ``alpha`` is 1) and the keys concatenated."""
        layers: dict[str, LayerDelta] = {}
        for name in dict.fromkeys(n for d in deltas for n in d.layers):
            parts = [d.layers[name] for d in deltas if name in d.layers]
            keys = [p.keys for p in parts if p.keys is not None]
            layers[name] = LayerDelta(
                torch.cat([p.u for p in parts]),
                torch.cat([p.delta * p.alpha for p in parts]),
                1.0,
                torch.cat(keys) if keys else None,
            )
        return cls(layers, dict(provenance or {}))

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, Tensor], provenance: Mapping[str, str] | None = None
    ) -> EditDelta:
        """Inverse of ``to_tensors``. Raises ``ValueError`` naming a layer with missing parts."""
        names: list[str] = []
        for key in tensors:
            base, _, part = key.rpartition(".")
            if part not in ("u", "delta", "alpha", "keys") or not base:
                raise ValueError(f"unexpected tensor key {key!r}: expected '<layer>.u|delta|alpha|keys'")
            if base not in names:
                names.append(base)
        layers: dict[str, LayerDelta] = {}
        for name in names:
            missing = [p for p in ("u", "delta", "alpha") if f"{name}.{p}" not in tensors]
            if missing:
                raise ValueError(f"layer {name!r} lacks {missing}")
            layers[name] = LayerDelta(
                tensors[f"{name}.u"],
                tensors[f"{name}.delta"],
                float(tensors[f"{name}.alpha"]),
                tensors.get(f"{name}.keys"),
            )
        return cls(layers, dict(provenance or {}))

    def save(self, path: str | Path) -> None:
        """Write a safetensors file; provenance goes into its string metadata."""
        meta = {"provenance": json.dumps(self.provenance)}
        save_file(self.to_tensors(), str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> EditDelta:
        """Read a file written by ``save``."""
        tensors: dict[str, Tensor] = {}
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensors[key] = f.get_tensor(key)
        return cls.from_tensors(tensors, json.loads(meta.get("provenance", "{}")))


class Editor(Protocol):
    """Anything that edits a model in place for a batch of records: MEND, FT, FT+KL, ..."""

    name: str

    def edit(self, model: nn.Module, tokenizer, records: Sequence[EditRecord]) -> WeightSnapshot:
        """Apply ONE update for all ``records`` in place; return the originals of touched weights."""
        ...


def _check_fits(model: nn.Module, delta: EditDelta) -> dict[str, nn.Module]:
    modules: dict[str, nn.Module] = {}
    for name, layer in delta.layers.items():
        try:
            module = model.get_submodule(name)
        except AttributeError as err:
            raise KeyError(f"edit names layer {name!r}, which the model does not have") from err
        d_out, d_in = layer_shape(module)
        if layer.u.dim() != 2 or layer.delta.dim() != 2 or layer.u.shape[0] != layer.delta.shape[0]:
            raise ValueError(
                f"layer {name!r}: factors must be u [r, d_in] and delta [r, d_out], got "
                f"{tuple(layer.u.shape)} and {tuple(layer.delta.shape)}"
            )
        if layer.u.shape[1] != d_in or layer.delta.shape[1] != d_out:
            raise ValueError(
                f"layer {name!r}: factors u {tuple(layer.u.shape)}, delta {tuple(layer.delta.shape)} "
                f"do not fit its (d_out, d_in) = ({d_out}, {d_in})"
            )
        modules[name] = module
    return modules


def _compute_dtype(w: Tensor) -> torch.dtype:
    """fp32 for half-precision weights, the weight's own dtype otherwise."""
    return torch.promote_types(w.dtype, torch.float32)


def apply_delta(model: nn.Module, delta: EditDelta, *, max_norm: float | None = None) -> WeightSnapshot:
    """Apply ``delta`` in place: ``W <- W - alpha * sum delta~ u~^T`` for each edited layer.

    Returns the snapshot ``{"<layer>.weight": clone of W before}`` of the touched weights.
    A delta that does not fit the model, has non-finite values, or (with ``max_norm``) a
    norm above the bound raises ``ValueError``/``KeyError`` and changes nothing.
    """
    modules = _check_fits(model, delta)
    if not delta.is_finite():
        raise ValueError("edit has non-finite factors or step sizes; nothing was changed")
    if max_norm is not None and delta.norm() > max_norm:
        raise ValueError(
            f"edit norm {delta.norm():.4g} exceeds the bound {max_norm:.4g}; nothing was changed"
        )
    return write_delta(modules, delta)


def write_delta(modules: dict[str, nn.Module], delta: EditDelta) -> WeightSnapshot:
    """The unchecked part of :func:`apply_delta` (``modules`` by layer name, as ``_check_fits``
    returns them): one layer at a time, so only one dense ``d_out x d_in`` update (fp32 for
    half-precision weights) exists at once. Should a layer fail, those already written are put
    back before the error propagates. Returns the snapshot of the touched weights."""
    snapshot: WeightSnapshot = {}
    try:
        with torch.no_grad():
            for name, module in modules.items():
                layer, w = delta.layers[name], module.weight
                factors = Factors(
                    *(t.detach().to(w.device, _compute_dtype(w)) for t in (layer.u, layer.delta))
                )
                update = weight_grad(module, factors).mul_(-float(layer.alpha))
                snapshot[f"{name}.weight"] = w.detach().clone()
                w.copy_((w.to(_compute_dtype(w)) + update).to(w.dtype))
                del update
    except BaseException:
        with torch.no_grad():
            for name, module in modules.items():
                if f"{name}.weight" in snapshot:
                    module.weight.copy_(snapshot[f"{name}.weight"])
        raise
    return snapshot


@contextmanager
def applied(model: nn.Module, *deltas: EditDelta) -> Iterator[nn.Module]:
    """``model`` with ``deltas`` applied in place, in order, for the length of the block; on exit
    (also on exceptions) the touched weights are bitwise what they were before."""
    with restoring(model) as keep:
        for delta in deltas:
            keep(apply_delta(model, delta))
        yield model


def _lowrank_hook(u: Tensor, d: Tensor, alpha: Tensor | float):
    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> Tensor:
        x = args[0] if args else next(iter(kwargs.values()))
        coeff = x.to(u.dtype) @ u.transpose(0, 1)  # [..., r]
        return output - (alpha * (coeff @ d)).to(output.dtype)  # [..., d_out]

    return hook


@contextmanager
def lowrank_edit(model: nn.Module, delta: EditDelta) -> Iterator[nn.Module]:
    """Run ``model`` as if each edited layer's weight were ``W - alpha * delta~^T u~``.

    The update is added to the layer output in its forward, ``y - alpha * (x @ u~^T) @ delta~``,
    so memory is ``O(r * (d_in + d_out))`` per layer and gradients flow to the factors and
    ``alpha``. Works for ``nn.Linear`` and GPT-2's ``Conv1D`` (both produce ``[..., d_out]``);
    the factors move to each layer's device. The hooks are removed on exit, also on exceptions.
    """
    handles = []
    try:
        for name, layer in delta.layers.items():
            module = model.get_submodule(name)
            d_out, d_in = layer_shape(module)
            u, d, alpha = layer.u, layer.delta, layer.alpha
            if u.shape[-1] != d_in or d.shape[-1] != d_out:
                raise ValueError(
                    f"layer {name!r}: u {tuple(u.shape)} / delta {tuple(d.shape)} do not fit (d_out, d_in) = "
                    f"({d_out}, {d_in})"
                )
            device = module.weight.device
            if isinstance(alpha, Tensor):
                alpha = alpha.to(device)
            hook = _lowrank_hook(u.to(device), d.to(device), alpha)
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        yield model
    finally:
        for h in handles:
            h.remove()
