"""Save and restore, as context managers: weights, ``requires_grad`` flags, train/eval mode.

Every restore is exact (bitwise for weights) and happens also when the block raises::

    with frozen(model), eval_mode(model):        # no parameter requires grad, every module in eval
        ...
    with restoring(model) as keep:               # undo in-place edits made inside the block
        keep(editor.edit(model, tokenizer, [record]))
        ...

``weights_digest`` is the one hash of a model's weights (all of them, or the named ones).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import Tensor, nn

__all__ = [
    "WeightSnapshot",
    "eval_mode",
    "frozen",
    "restore_weights",
    "restoring",
    "trainable",
    "weights_digest",
]

WeightSnapshot = dict[str, Tensor]
"""Parameter name -> clone of its value before the edit(s)."""


def restore_weights(model: nn.Module, snapshot: WeightSnapshot) -> None:
    """Copy the snapshot back into the model: the weights are bitwise those before the edit."""
    params = dict(model.named_parameters())
    missing = [k for k in snapshot if k not in params]
    if missing:
        raise KeyError(f"snapshot names parameters the model does not have: {missing[:5]}")
    with torch.no_grad():
        for key, value in snapshot.items():
            params[key].copy_(value)


@contextmanager
def restoring(model: nn.Module) -> Iterator[Callable[[WeightSnapshot], None]]:
    """Undo the in-place edits made inside the block.

    Yields ``keep(snapshot)``: give it the snapshot each edit returns (``apply_delta``,
    ``Editor.edit``). On exit, also on exceptions, the earliest original of every parameter
    kept is copied back, so the model is bitwise as it was when the block began."""
    originals: WeightSnapshot = {}

    def keep(snapshot: WeightSnapshot) -> None:
        for name, value in snapshot.items():
            originals.setdefault(name, value)

    try:
        yield keep
    finally:
        restore_weights(model, originals)


@contextmanager
def _requires_grad(model: nn.Module, flag: bool) -> Iterator[nn.Module]:
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(flag)
        yield model
    finally:
        for p, old in flags:
            p.requires_grad_(old)


def frozen(model: nn.Module) -> AbstractContextManager[nn.Module]:
    """No parameter of ``model`` requires grad inside the block; the flags come back on exit."""
    return _requires_grad(model, False)


def trainable(model: nn.Module) -> AbstractContextManager[nn.Module]:
    """Every parameter of ``model`` requires grad inside the block (a model loaded for serving has
    them off); the flags come back on exit."""
    return _requires_grad(model, True)


@contextmanager
def eval_mode(module: nn.Module, training: bool = False) -> Iterator[nn.Module]:
    """Every submodule in eval mode (``training=True``: train mode) inside the block; each one's
    own mode comes back on exit."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.train(training)
        yield module
    finally:
        for m, mode in modes:
            m.training = mode


def weights_digest(model: nn.Module, names: Iterable[str] | None = None) -> str:
    """sha256 over the name, dtype, shape and raw bytes of every parameter (or of the parameters
    ``names``, in that order): equal digests mean bitwise-equal weights."""
    params = dict(model.named_parameters())
    h = hashlib.sha256()
    for name in params if names is None else names:
        t = params[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
