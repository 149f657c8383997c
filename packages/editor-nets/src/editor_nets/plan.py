"""Memory plans: what editing, meta-training and serving a model need, read before renting a GPU.

:func:`memory_plan` builds the model from its configuration on the meta device (no weights are
loaded or allocated), builds the MEND editor for it, and runs the project's own code paths on
meta tensors under :class:`TensorPeak`, which follows every tensor those paths create and keeps
the peak of the bytes alive at once:

* **edit**: the edit loss's forward and backward with ``(u, delta)`` captured
  (``editor_nets.mend.edit_factors``), the editor networks, and applying the update (the dense
  ``d_out x d_in`` update of each layer in turn and the snapshot of the touched weights that
  rollback keeps);
* **meta-training step**: ``editor_nets.train.meta_loss`` (edit pass, in-scope and locality passes
  of the edited model, KL) and its backward into the editor, then an Adam step (gradients and the
  two moment buffers of every editor parameter);
* **serving**: the weights plus one edit plus the forward of one ``seq_len`` prompt that keeps its
  key/value cache (the start of a generation).

The figures are tensor bytes (an allocator rounds up and caches on top of them) at one prompt of
``seq_len`` tokens. Split over ``n`` GPUs, the weights divide evenly and everything else is placed
on the GPU that holds the edited (last) blocks, which is what :func:`load_model`'s device map does
for a causal model; that GPU's total is the one reported. Configurations of published models ship
with the package (:data:`MODEL_CONFIGS`: Llama-2-7B/13B, Llama-3-8B, GPT-J-6B, T5-XXL).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "MODEL_CONFIGS",
    "MemoryPlan",
    "ResidentPeak",
    "TensorPeak",
    "format_plan",
    "memory_plan",
    "meta_model",
    "model_config",
]

CONFIG_DIR = Path(__file__).parent / "model_configs"
MODEL_CONFIGS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GIB = 2**30


class TensorPeak:
    """``with TensorPeak() as peak:`` follows every tensor storage the block creates (on any
    device, the meta device included) until it is freed; ``peak.peak`` is the most bytes alive at
    once and ``peak.current`` what is still alive. Storages that existed before (weights) and
    in-place results are not counted."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker._record(args, kwargs, out)
                return out

        self._mode = _Mode()
        self._live: dict[int, tuple[Any, int]] = {}
        self.current = 0
        self.peak = 0

    def _record(self, args: Any, kwargs: Any, out: Any) -> None:
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._pytree import tree_flatten

        for key, (ref, nbytes) in list(self._live.items()):
            if ref.expired():
                del self._live[key]
                self.current -= nbytes
        inputs = {
            StorageWeakRef(t.untyped_storage()).cdata
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            ref = StorageWeakRef(t.untyped_storage())
            nbytes = t.untyped_storage().nbytes()
            if ref.cdata in inputs or ref.cdata in self._live or nbytes == 0:
                continue
            self._live[ref.cdata] = (ref, nbytes)
            self.current += nbytes
            self.peak = max(self.peak, self.current)

    def __enter__(self) -> TensorPeak:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class ResidentPeak:
    """``with ResidentPeak() as rss:`` resets the process's resident high-water mark (Linux,
    ``/proc/self/clear_refs``) on entry; afterwards ``rss.above`` is the peak resident bytes during
    the block minus the resident bytes at its start (allocator caching included, unlike
    :class:`TensorPeak`), and ``rss.reset`` says whether the reset worked (else the peak may be older)."""

    def __enter__(self) -> ResidentPeak:
        self.base = _status_kib("VmRSS") * 1024
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset = True
        except OSError:
            self.reset = False
        return self

    def __exit__(self, *exc: Any) -> None:
        self.above = _status_kib("VmHWM") * 1024 - self.base


def model_config(source: str | Path) -> Any:
    """A ``transformers`` config from a bundled name, a ``config.json`` file or a model directory."""
    import transformers

    path = Path(source)
    if str(source) in MODEL_CONFIGS:
        path = CONFIG_DIR / f"{source}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        if "model_type" not in data:
            raise ValueError(f"{path}: the config has no 'model_type' field")
        data = {k: v for k, v in data.items() if not k.startswith("_")}
        return transformers.AutoConfig.for_model(data.pop("model_type"), **data)
    if path.is_dir():
        return transformers.AutoConfig.from_pretrained(str(path))
    raise FileNotFoundError(
        f"{source}: not a bundled model config ({', '.join(MODEL_CONFIGS)}), a config.json file or a "
        "model directory"
    )


def meta_model(source: str | Path, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """The model of ``source`` (see :func:`memory_plan`) on the meta device in ``dtype``, frozen and
    in eval mode: shapes and dtypes only, no memory."""
    from editor_nets.models import auto_model_class

    config = model_config(source)
    auto = auto_model_class(config)
    with torch.device("meta"):
        # eager attention: the SDPA mask path asks whether the mask can be skipped (a data-dependent
        # check that meta tensors cannot answer); at planning lengths the T x T scores are small
        model = auto.from_config(config, dtype=dtype, attn_implementation="eager")
    return model.eval().requires_grad_(False)


@dataclass
class MemoryPlan:
    """Bytes needed to edit, meta-train and serve one model (see the module docstring).

    ``*_work_bytes`` are the traced peaks above the weights and the editor's parameters; the
    ``*_total`` methods add those for ``n_gpus``."""

    model: str
    architecture: str
    dtype: str
    n_parameters: int
    weights_bytes: int
    targets: list[str]
    rank: int
    seq_len: int
    editor_parameters: int
    editor_bytes: int
    edit_work_bytes: int
    meta_step_work_bytes: int
    generate_work_bytes: int

    def edit_total(self, n_gpus: int = 1) -> int:
        return self.weights_bytes // n_gpus + self.editor_bytes + self.edit_work_bytes

    def meta_step_total(self, n_gpus: int = 1) -> int:
        return self.weights_bytes // n_gpus + self.editor_bytes + self.meta_step_work_bytes

    def serve_total(self, n_gpus: int = 1) -> int:
        return self.edit_total(n_gpus) + self.generate_work_bytes

    def to_dict(self, gpus: Sequence[int] = (1, 2, 4, 8)) -> dict[str, Any]:
        out = asdict(self)
        out["per_gpu"] = {
            str(n): {
                "edit": self.edit_total(n),
                "meta_train": self.meta_step_total(n),
                "serve": self.serve_total(n),
            }
            for n in gpus
        }
        return out


@contextmanager
def _full_masks() -> Iterator[None]:
    """Answer the data-dependent questions code asks of meta tensors as for the unpadded prompts
    traced here: a boolean selection (``x[mask]``: the captured tokens, the answer positions) keeps
    every element (exact for the tokens; the few answer rows of the logits are then over-counted,
    an upper bound), and a boolean ``.item()`` (``mask.all()``, ``isfinite(x).all()``) is true."""
    from torch.fx.experimental import _config
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Answer(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
                if args[0].dtype != torch.bool:
                    raise RuntimeError(
                        f"the traced code reads a {args[0].dtype} value of a meta tensor; edit-plan can "
                        "only assume boolean answers (masks are full, values are finite)"
                    )
                return True
            return func(*args, **(kwargs or {}))

    with _config.patch(meta_nonzero_assume_all_nonzero=True), _Answer():
        yield


def _records(seq_len: int, target_len: int, n_rephrases: int, n_locality: int, kind: str) -> list[Any]:
    """Two edits whose every prompt is ``seq_len - target_len`` words and target ``target_len``
    words, for a one-token-per-word tokenizer."""
    from edit_data import EditRecord, LocalityExample

    prompt, target = " ".join(["w"] * (seq_len - target_len)), " ".join(["w"] * target_len)
    if kind == "classifier":
        target = "1"  # a label
    loc = [LocalityExample(prompt, target) for _ in range(n_locality)]
    return [EditRecord(prompt, target, [prompt] * n_rephrases, loc) for _ in range(2)]


def memory_plan(
    source: str | Path,
    *,
    dtype: str = "bf16",
    targets: Sequence[str] | None = None,
    rank: int = 1920,
    seq_len: int = 32,
    target_len: int = 4,
) -> MemoryPlan:
    """The plan for the model ``source`` (a bundled config name, a ``config.json`` or a model
    directory) in ``dtype`` (``fp32``, ``bf16``, ``fp16``), the MEND editor of ``rank`` on
    ``targets`` (default ``editor_nets.models.default_targets``), prompts of ``seq_len`` tokens
    with answers of ``target_len`` tokens, and meta-training with ``MetaTrainConfig``'s defaults
    (one edit per step, its prompt and 3 rephrasings in scope, 3 locality prompts)."""
    from edit_data import train_tokenizer
    from editor_nets.delta import EditDelta, LayerDelta, write_delta
    from editor_nets.mend import MendConfig, MendEditor, ModelSpec, edit_factors
    from editor_nets.scoring import edit_batch
    from editor_nets.train import MetaTrainConfig, meta_loss

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if not 0 < target_len < seq_len:
        raise ValueError(f"need 0 < target_len < seq_len, got target_len={target_len}, seq_len={seq_len}")
    model = meta_model(source, DTYPES[dtype])
    spec = ModelSpec.of(model, targets, str(source), digest=False)
    with torch.device("meta"):
        editor = MendEditor(MendConfig(rank=rank, targets=spec.targets), spec)
    editor_params = sum(p.numel() for p in editor.parameters())
    editor_bytes = sum(t.numel() * t.element_size() for t in [*editor.parameters(), *editor.buffers()])
    tokenizer = train_tokenizer(["w"])
    config = MetaTrainConfig()
    kind = spec.kind
    records = _records(seq_len, target_len, config.n_rephrases, config.n_locality, kind)

    editor.eval()  # the running normalisers' update is data-dependent; its memory is negligible
    with _full_masks(), TensorPeak() as edit, torch.no_grad():
        batch = edit_batch(model, tokenizer, [records[0].prompt], [records[0].target], kind=kind)
        delta = editor.transform(edit_factors(model, batch, spec.targets, kind=kind))
        # a meta step size has no value to read: apply with 1.0 (the memory is the same)
        delta = EditDelta({n: LayerDelta(x.u, x.delta, 1.0) for n, x in delta.layers.items()})
        snapshot = write_delta({n: model.get_submodule(n) for n in spec.targets}, delta)
        del delta, snapshot

    editor.requires_grad_(True)
    opt = torch.optim.Adam(editor.parameters(), lr=1e-4, foreach=False)
    with _full_masks(), TensorPeak() as step:
        loss, _, _ = meta_loss(editor, model, tokenizer, records[:1], config, random.Random(0))
        loss.backward()
        opt.step()

    with _full_masks(), TensorPeak() as serve, torch.no_grad():
        ids = torch.zeros(1, seq_len, dtype=torch.long, device="meta")
        if kind == "seq2seq":
            model(input_ids=ids, decoder_input_ids=ids, use_cache=True)
        else:
            model(input_ids=ids, **({"use_cache": True} if kind == "causal" else {}))

    return MemoryPlan(
        model=str(source),
        architecture=type(model).__name__,
        dtype=dtype,
        n_parameters=sum(p.numel() for p in model.parameters()),
        weights_bytes=sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]),
        targets=list(spec.targets),
        rank=rank,
        seq_len=seq_len,
        editor_parameters=int(editor_params),
        editor_bytes=int(editor_bytes),
        edit_work_bytes=edit.peak,
        meta_step_work_bytes=step.peak,
        generate_work_bytes=serve.peak,
    )


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def format_plan(plan: MemoryPlan, gpus: Sequence[int] = (1, 2, 4, 8)) -> str:
    """The plan as the table ``edit-plan`` prints."""
    lines = [
        f"{plan.model}: {plan.architecture}, {plan.n_parameters / 1e9:.2f}B parameters in {plan.dtype} "
        f"= {_gib(plan.weights_bytes)} of weights",
        f"editor: rank {plan.rank} on {len(plan.targets)} layers ({plan.targets[0]} ... {plan.targets[-1]}): "
        f"{plan.editor_parameters / 1e6:.1f}M parameters = {_gib(plan.editor_bytes)} (fp32)",
        f"at one prompt of {plan.seq_len} tokens, above the weights and the editor:",
        f"  one edit (capture, editor, apply, rollback snapshot)   {_gib(plan.edit_work_bytes)}",
        f"  one meta-training step (incl. grads and Adam state)   {_gib(plan.meta_step_work_bytes)}",
        f"  one generation's forward and key/value cache           {_gib(plan.generate_work_bytes)}",
        "",
        f"{'GPUs':>5} {'edit':>12} {'meta-train':>12} {'serve':>12}   (per GPU: weights split evenly, the rest on the GPU of the edited blocks)",
    ]
    for n in gpus:
        lines.append(
            f"{n:>5} {_gib(plan.edit_total(n)):>12} {_gib(plan.meta_step_total(n)):>12} {_gib(plan.serve_total(n)):>12}"
        )
    return "\n".join(lines)
