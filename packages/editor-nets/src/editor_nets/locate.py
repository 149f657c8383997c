"""Locate-then-edit editors: ROME, MEMIT, AlphaEdit and knowledge neurons, as low-rank edits.

All four treat an MLP output matrix ``W`` ``[d_out, d_in]`` (GPT-2's ``c_proj``, Llama's
``down_proj``, GPT-NeoX's ``dense_4h_to_h``) as a key-value memory: the layer's input ``k`` at the
subject's last token is the key, its output the value. Each returns an ``EditDelta`` whose factors
are the update (``W' = W - alpha * delta^T u``), so the journal, rollback and replay of MEND's edits
serve them unchanged.

* ROME (Meng et al., 2022): a vector ``s`` added to layer ``l``'s output at the subject's last token
  is optimised until the model gives the target (``optimise_shift``); the rank-one update
  ``dW = s (C^-1 k)^T / (k^T C^-1 k)`` makes ``W' k = W k + s`` while moving other keys as little as
  possible under their second moment ``C`` (``editor_nets.keystats``). Several records in one call
  are edited one after another.
* MEMIT (Meng et al., 2023): the shift is optimised on the residual stream after the last of the
  edited blocks, then spread over the edited layers from the first: layer ``i`` of ``L`` takes
  ``1/(L-i)`` of what is still missing, ``dW = R^T K (lam C_0 + K^T K)^-1`` for all edits at once.
* AlphaEdit (Fang et al., 2025): MEMIT's solve projected onto the null space of the preserved keys,
  ``dW = R^T K P (P (K_p^T K_p + K^T K) + lam I)^-1`` with ``P`` the projector on the eigenvectors of
  ``C_0`` below a threshold and ``K_p`` the keys of earlier edits (``KeyMemory``), so
  ``dW k_0 = 0`` for keys in that null space and earlier edits keep their outputs.
* Knowledge neurons (Dai et al., 2022): integrated gradients of the original answer's
  probability over each layer's MLP activations at the prompt's last token attribute the fact to
  a few neurons; their value vectors (columns of ``W``) move by ``lam (E[target] - E[original])``,
  ``E`` the output embeddings, with the smallest ``lam`` of a doubling search that makes the first
  target token the model's top prediction. Only the first token of an answer is addressed.

They edit causal LMs; for seq2seq models and classifiers they raise ``ValueError`` saying so.
Simplifications against the papers, each a setting or stated here: keys are taken on the edit
prompt itself (no random prefixes), the value optimisation has no essence-KL term (a norm penalty
and a norm clamp instead), and ROME and MEMIT edit fixed layers (``trace`` shows where a model
keeps a fact; pass ``layer``/``layers`` from it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from editor_nets.delta import EditDelta, LayerDelta, apply_delta
from editor_nets.keystats import KeyStatistics
from editor_nets.models import model_kind, output_projections
from editor_nets.ridge import KeyMemory, ridge_update
from editor_nets.scoring import edit_batch, score_batch
from editor_nets.state import WeightSnapshot, eval_mode, frozen, restoring

__all__ = [
    "AlphaEditEditor",
    "KnowledgeNeuronsEditor",
    "MemitEditor",
    "RomeEditor",
    "block_of",
    "mlp_output_layers",
    "null_space_projection",
    "optimise_shift",
    "subject_positions",
]


def require_causal(model: nn.Module, who: str) -> None:
    """``ValueError`` unless ``model`` is a causal LM (the locate-then-edit editors' domain)."""
    kind = model_kind(model)
    if kind != "causal":
        raise ValueError(
            f"{who} edits causal language models (GPT-2, GPT-NeoX, Llama, ...); this model is a {kind} "
            "model. Use MEND, LifelongMEND, FT or FT+KL for it."
        )


def mlp_output_layers(model: nn.Module) -> list[str]:
    """The MLP output matrix of every block, first block first."""
    return sorted(output_projections(model, n_blocks=1 << 20), key=block_index)


def block_of(layer: str) -> str:
    """The block a layer belongs to: ``"transformer.h.1.mlp.c_proj"`` -> ``"transformer.h.1"``."""
    m = re.match(r"^(.*?\.\d+)\.", layer)
    if m is None:
        raise ValueError(f"cannot tell the block of layer {layer!r} (no numbered path component)")
    return m.group(1)


def block_index(layer: str) -> int:
    """The block number of a layer: ``"model.layers.3.mlp.down_proj"`` -> 3."""
    return int(block_of(layer).rsplit(".", 1)[1])


def subject_positions(tokenizer: Any, prompts: Sequence[str], subjects: Sequence[str | None]) -> list[int]:
    """The index of each subject's last token in its prompt as edits encode it
    (``edit_data.encode_prompt``). ``ValueError`` names a prompt without its subject."""
    from edit_data import encode_prompt

    out = []
    for prompt, subject in zip(prompts, subjects, strict=True):
        if not subject or subject not in prompt:
            raise ValueError(
                f"prompt {prompt!r}: the locate-then-edit editors need the edit's subject in its prompt "
                f"(EditRecord.subject), got {subject!r}"
            )
        end = prompt.index(subject) + len(subject)
        prefix, full = encode_prompt(tokenizer, prompt[:end]), encode_prompt(tokenizer, prompt)
        common = next((i for i, (a, b) in enumerate(zip(prefix, full, strict=False)) if a != b), len(prefix))
        out.append(max(0, min(common, len(full)) - 1))
    return out


def _hidden(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output: Any, hidden: Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@torch.no_grad()
def read_at(
    model: nn.Module, batch: dict[str, Tensor], modules: dict[str, nn.Module], positions: Tensor
) -> dict[str, tuple[Tensor, Tensor]]:
    """``{name: (input [B, d_in], output [B, d_out])}`` of each module at one position per row."""
    rows = torch.arange(positions.shape[0], device=positions.device)
    seen: dict[str, tuple[Tensor, Tensor]] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            x = args[0] if args else None
            h = _hidden(output)
            seen[name] = (x[rows, positions].float() if x is not None else None, h[rows, positions].float())

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    return seen


def optimise_shift(
    model: nn.Module,
    batch: dict[str, Tensor],
    module: nn.Module,
    positions: Tensor,
    *,
    steps: int = 40,
    lr: float = 0.5,
    weight_decay: float = 1e-3,
    clamp: float = 4.0,
    stop_nll: float | None = None,
) -> Tensor:
    """The vectors ``s`` ``[B, d]`` that, added to ``module``'s output at ``positions`` (one per row
    of the ``edit_batch``), make the model give each row's target: Adam on the mean target NLL
    plus ``weight_decay * ||s||^2 / ||h||^2`` (``h`` the output there), each ``||s||`` clamped to
    ``clamp * ||h||``; stops early once every target is hit (teacher-forced) or, with ``stop_nll``,
    once every row's mean target NLL is below it (the margin MEMIT needs: its least-squares solve
    reaches ``s`` only approximately, where ROME's rank-one update reaches it exactly). Weights
    unchanged."""
    rows = torch.arange(positions.shape[0], device=positions.device)
    base = next(iter(read_at(model, batch, {"m": module}, positions).values()))[1]  # [B, d]
    base_norm = base.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    shift = torch.zeros_like(base, requires_grad=True)

    def add_shift(mod: nn.Module, args: tuple, output: Any) -> Any:
        h = _hidden(output)
        h = h.index_put((rows, positions), h[rows, positions] + shift.to(h.dtype))
        return _with_hidden(output, h)

    opt = torch.optim.Adam([shift], lr=lr)
    handle = module.register_forward_hook(add_shift)
    try:
        with frozen(model), eval_mode(model), torch.enable_grad():
            for _ in range(steps):
                scores = score_batch(model, batch, kind="causal")
                done = scores.exact if stop_nll is None else scores.mean_nll < stop_nll
                if bool(done.all()):
                    break
                penalty = weight_decay * (shift.pow(2).sum(-1, keepdim=True) / base_norm**2).sum()
                loss = scores.mean_nll.sum() + penalty
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    norm = shift.norm(dim=-1, keepdim=True)
                    shift.mul_(torch.clamp(clamp * base_norm / norm.clamp_min(1e-12), max=1.0))
    finally:
        handle.remove()
    return shift.detach()


def _statistics(stats: KeyStatistics | None, layer: str, who: str) -> Tensor:
    if stats is None or layer not in stats.moments:
        raise ValueError(f"{who}: no key statistics for layer {layer!r}; compute them with key_statistics")
    return stats.moments[layer]


FACT_TOKENS = ("subject_last", "last")


def _records_batch(
    model: nn.Module, tokenizer: Any, records: Sequence[Any], fact_token: str
) -> tuple[dict, Tensor]:
    """The ``edit_batch`` of ``records`` and the position of each one's key: the subject's last
    token (``"subject_last"``, the papers' choice) or the prompt's last token (``"last"``)."""
    from edit_data import encode_prompt

    if fact_token not in FACT_TOKENS:
        raise ValueError(f"fact_token must be one of {FACT_TOKENS}, got {fact_token!r}")
    prompts = [r.prompt for r in records]
    batch = edit_batch(model, tokenizer, prompts, [r.target for r in records], kind="causal")
    if fact_token == "last":
        positions = [len(encode_prompt(tokenizer, p)) - 1 for p in prompts]
    else:
        positions = subject_positions(tokenizer, prompts, [r.subject for r in records])
    return batch, torch.tensor(positions, device=batch["input_ids"].device)


@dataclass
class _LocateEditor:
    """What the locate-then-edit editors share: the key statistics, the value optimisation's
    settings, where the key is read (``fact_token``: ``"subject_last"`` or ``"last"``, the prompt's
    last token, for models that look facts up there), ``edit`` from ``compute_delta`` and a ``memory`` (the sidecar hands one to
    ``compute_delta``; only AlphaEdit reads its earlier edits)."""

    statistics: KeyStatistics | None = field(default=None, repr=False)
    steps: int = 40
    lr: float = 0.5
    weight_decay: float = 1e-3
    clamp: float = 4.0
    stop_nll: float | None = None
    fact_token: str = "subject_last"
    memory: KeyMemory = field(default_factory=KeyMemory, repr=False)
    name: str = ""

    def start(self) -> None:
        self.memory = self.memory.fresh()

    def compute_delta(
        self, model: nn.Module, tokenizer: Any, records: Sequence[Any], memory: KeyMemory | None = None
    ) -> EditDelta:
        raise NotImplementedError

    def edit(self, model: nn.Module, tokenizer: Any, records: Sequence[Any]) -> WeightSnapshot:
        delta = self.compute_delta(model, tokenizer, records)
        snapshot = apply_delta(model, delta)
        self.memory = self.memory.with_edit(delta)
        return snapshot

    def _shift(self, model: nn.Module, batch: dict, module: nn.Module, positions: Tensor) -> Tensor:
        return optimise_shift(
            model, batch, module, positions, steps=self.steps, lr=self.lr, weight_decay=self.weight_decay,
            clamp=self.clamp, stop_nll=self.stop_nll,
        )  # fmt: skip


@dataclass
class RomeEditor(_LocateEditor):
    """ROME: a rank-one update of one MLP output matrix per edit (``layer``; default the output
    matrix of block ``n_blocks // 3``, where ROME's GPT-2 XL layer 17 of 48 sits). ``ridge`` is
    added to ``C``'s diagonal, relative to its mean eigenvalue. The value optimisation runs until
    the target's NLL is below ``stop_nll`` 0.05 (as ROME's own code), not merely until the target
    wins: the rank-one update moves the layer's output at every position, not only at the key's,
    so a shift that just crosses the decision boundary left one edit in eight of the test world
    short of its target, depending on the machine's rounding."""

    layer: str | None = None
    ridge: float = 1e-4
    stop_nll: float | None = 0.05
    name: str = "ROME"

    def target_layer(self, model: nn.Module) -> str:
        if self.layer is not None:
            return self.layer
        layers = mlp_output_layers(model)
        return layers[len(layers) // 3]

    def compute_delta(
        self, model: nn.Module, tokenizer: Any, records: Sequence[Any], memory: KeyMemory | None = None
    ) -> EditDelta:
        """The rank-one edits of ``records``, each made on the model as the earlier ones left it;
        the model is unchanged afterwards."""
        require_causal(model, self.name)
        if not records:
            raise ValueError(f"{self.name}: edit needs at least one record")
        layer = self.target_layer(model)
        module = model.get_submodule(layer)
        c = _statistics(self.statistics, layer, self.name).to(module.weight.device).double()
        c = c + self.ridge * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
        parts: list[EditDelta] = []
        with restoring(model) as keep:
            for record in records:
                batch, positions = _records_batch(model, tokenizer, [record], self.fact_token)
                key = read_at(model, batch, {layer: module}, positions)[layer][0]  # [1, d_in]
                shift = self._shift(model, batch, module, positions)  # [1, d_out]
                c_inv_k = torch.linalg.solve(c, key.double().T).T  # [1, d_in]
                u = (c_inv_k / (c_inv_k * key.double()).sum()).float()
                parts.append(EditDelta({layer: LayerDelta(u, -shift, 1.0, key)}))
                keep(apply_delta(model, parts[-1]))
        return EditDelta.combine(parts, {"editor": self.name, "layer": layer})


def null_space_projection(moments: Tensor, threshold: float) -> Tensor:
    """``P`` ``[d, d]``: the projector on the eigenvectors of ``moments`` (``C_0``) whose eigenvalue
    is below ``threshold`` times the largest (float64)."""
    values, vectors = torch.linalg.eigh(moments.double())
    small = vectors[:, values < threshold * values.max()]
    return small @ small.T


@dataclass
class MemitEditor(_LocateEditor):
    """MEMIT: all records of one call in one update spread over ``layers`` (default the output
    matrices of blocks ``n_blocks // 6`` to ``n_blocks // 3``, as MEMIT's 3-8 of GPT-J's 28).
    ``preserve`` is ``lam``, the weight of ``C_0`` against the edits' keys (MEMIT's
    ``mom2_update_weight``), ``ridge`` a small diagonal term. ``preserve`` 10 rather than MEMIT's
    1.5e4 for GPT-J: on a 3-block, 48-wide GPT-2 of the test world 1e4 kept the edits from landing
    (ES 0.0 over 10 edits), 10 made all 10 while keeping 0.93 of other subjects' answers (100:
    ES 0.9 / 0.94, 1: ES 1.0 / 0.90); ``C_0`` is a mean, so the right weight grows with the number of
    edits the layer must hold."""

    layers: Sequence[str] | None = None
    preserve: float = 10.0
    ridge: float = 1e-3
    stop_nll: float | None = 0.05
    name: str = "MEMIT"

    def target_layers(self, model: nn.Module) -> list[str]:
        if self.layers is not None:
            return sorted(self.layers, key=block_index)
        layers = mlp_output_layers(model)
        n = len(layers)
        return layers[n // 6 : n // 3 + 1]

    def layer_update(self, name: str, keys: Tensor, values: Tensor, memory: KeyMemory) -> LayerDelta:
        """One layer's update for keys ``K`` ``[n, d_in]`` and value changes ``R`` ``[n, d_out]``."""
        prior = self.preserve * _statistics(self.statistics, name, self.name).to(keys.device)
        return ridge_update(keys, values, prior, self.ridge)

    def compute_delta(
        self, model: nn.Module, tokenizer: Any, records: Sequence[Any], memory: KeyMemory | None = None
    ) -> EditDelta:
        """One update of every edited layer for all ``records``; the model is unchanged afterwards."""
        require_causal(model, self.name)
        if not records:
            raise ValueError(f"{self.name}: edit needs at least one record")
        memory = self.memory if memory is None else memory
        layers = self.target_layers(model)
        last_block = block_of(layers[-1])
        block = model.get_submodule(last_block)
        batch, positions = _records_batch(model, tokenizer, records, self.fact_token)
        goal = read_at(model, batch, {last_block: block}, positions)[last_block][1]
        goal = goal + self._shift(model, batch, block, positions)  # z = h_L + s, [n, d_model]
        parts: dict[str, LayerDelta] = {}
        with restoring(model) as keep:
            for i, name in enumerate(layers):
                seen = read_at(model, batch, {name: model.get_submodule(name), last_block: block}, positions)
                keys, now = seen[name][0], seen[last_block][1]
                parts[name] = self.layer_update(name, keys, (goal - now) / (len(layers) - i), memory)
                keep(apply_delta(model, EditDelta({name: parts[name]})))
        return EditDelta(parts, {"editor": self.name, "layers": ",".join(layers)})


@dataclass
class AlphaEditEditor(MemitEditor):
    """AlphaEdit: MEMIT's layers and shifts with the null-space projected solve (module docstring).
    ``threshold`` picks ``C_0``'s null space (eigenvalues below ``threshold`` times the largest),
    ``ridge`` is AlphaEdit's ``lam``, relative to the mean eigenvalue of ``C_0``."""

    threshold: float = 1e-2
    ridge: float = 1.0
    name: str = "AlphaEdit"
    projections: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def projection(self, name: str) -> Tensor:
        """``P`` of one layer (computed once)."""
        if name not in self.projections:
            self.projections[name] = null_space_projection(
                _statistics(self.statistics, name, self.name), self.threshold
            )
        return self.projections[name]

    def layer_update(self, name: str, keys: Tensor, values: Tensor, memory: KeyMemory) -> LayerDelta:
        k = keys.double()
        p = self.projection(name).to(k.device)
        scale = _statistics(self.statistics, name, self.name).diagonal().mean().item()
        seen = k.T @ k
        if name in memory.edits:
            seen = seen + memory.edits[name].to(k.device).double()
        a = p @ seen + self.ridge * scale * torch.eye(k.shape[1], dtype=k.dtype, device=k.device)
        u = torch.linalg.solve(a, p @ k.T).T.float()  # [n, d_in]; dW = R^T u, rows of u in range(P)
        return LayerDelta(u, -values.float(), 1.0, keys.detach())


@dataclass
class KnowledgeNeuronsEditor(_LocateEditor):
    """Knowledge neurons (module docstring): ``ig_steps`` integration steps, neurons whose
    attribution exceeds ``threshold`` times the largest, at most ``max_neurons`` of them, over
    ``layers`` (default every block's MLP output matrix); ``scales`` the doubling search for ``lam``
    in units of the mean value-vector norm over the output-embedding difference's norm."""

    layers: Sequence[str] | None = None
    ig_steps: int = 16
    threshold: float = 0.2
    max_neurons: int = 10
    scales: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    name: str = "KN"

    def attributions(self, model: nn.Module, tokenizer: Any, prompt: str, answer: str) -> dict[str, Tensor]:
        """Integrated gradients ``[d_in]`` per layer of ``p(first token of answer | prompt)`` over the
        layer's MLP activations at the prompt's last token (each layer scaled alone, 0 -> 1)."""
        require_causal(model, self.name)
        batch, pos, first = first_answer_token(model, tokenizer, prompt, answer)
        m = self.ig_steps
        ids, mask = batch["input_ids"][:, : pos + 1], batch["attention_mask"][:, : pos + 1]
        alphas = (torch.arange(1, m + 1, dtype=torch.float32, device=ids.device) / m)[:, None]  # [m, 1]
        at = torch.tensor([pos], device=ids.device)
        out: dict[str, Tensor] = {}
        for name in self.layers or mlp_output_layers(model):
            module = model.get_submodule(name)
            activation = read_at(model, {"input_ids": ids, "attention_mask": mask}, {name: module}, at)[name][
                0
            ][0]
            scaled = (alphas * activation).requires_grad_(True)  # [m, d_in]

            def replace(mod: nn.Module, args: tuple, scaled: Tensor = scaled) -> tuple:
                x = args[0].clone()
                x[:, pos] = scaled.to(x.dtype)
                return (x, *args[1:])

            handle = module.register_forward_pre_hook(replace)
            try:
                with frozen(model), eval_mode(model), torch.enable_grad():
                    logits = model(input_ids=ids.expand(m, -1), attention_mask=mask.expand(m, -1)).logits
                    probs = logits[:, pos].float().softmax(-1)  # [m, V]
                    (grad,) = torch.autograd.grad(probs[:, first].sum(), scaled)
            finally:
                handle.remove()
            out[name] = activation * grad.mean(0)  # the Riemann sum of the path integral
        return out

    def compute_delta(
        self, model: nn.Module, tokenizer: Any, records: Sequence[Any], memory: KeyMemory | None = None
    ) -> EditDelta:
        """Move the value vectors of each record's knowledge neurons from its original answer
        towards its target (records one after another); the model is unchanged afterwards."""
        require_causal(model, self.name)
        if not records:
            raise ValueError(f"{self.name}: edit needs at least one record")
        parts: list[EditDelta] = []
        with restoring(model) as keep:
            for record in records:
                parts.append(self._one(model, tokenizer, record))
                keep(apply_delta(model, parts[-1]))
        return EditDelta.combine(parts, {"editor": self.name})

    def neurons(self, model: nn.Module, tokenizer: Any, prompt: str, answer: str) -> dict[str, list[int]]:
        """``{layer: [neuron, ...]}``: the knowledge neurons of ``answer`` to ``prompt``."""
        attr = self.attributions(model, tokenizer, prompt, answer)
        names = [n for n, a in attr.items() for _ in range(a.numel())]
        flat = torch.cat(list(attr.values()))
        offsets, start = {}, 0
        for name, a in attr.items():
            offsets[name], start = start, start + a.numel()
        top = torch.topk(flat, min(self.max_neurons, flat.numel()))
        chosen = top.indices[top.values >= self.threshold * top.values[0].clamp_min(1e-12)]
        found: dict[str, list[int]] = {}
        for index in chosen.tolist():
            found.setdefault(names[index], []).append(index - offsets[names[index]])
        return found

    def _one(self, model: nn.Module, tokenizer: Any, record: Any) -> EditDelta:
        if not record.original:
            raise ValueError(f"{self.name}: record {record.prompt!r} has no original answer to locate")
        layers = self.neurons(model, tokenizer, record.prompt, record.original)
        batch, pos, first = first_answer_token(model, tokenizer, record.prompt, record.target)
        old = first_answer_token(model, tokenizer, record.prompt, record.original)[2]
        embeddings = model.get_output_embeddings().weight.detach().float()  # [V, d_model]
        direction = embeddings[first] - (embeddings[old] if old != first else 0.0)
        values = torch.cat([value_vectors(model.get_submodule(n), ix) for n, ix in layers.items()])
        unit = float(values.norm(dim=-1).mean()) / float(direction.norm().clamp_min(1e-12))
        for scale in self.scales:  # the smallest that makes the target's first token the top one
            delta = neuron_delta(model, layers, scale * unit * direction)
            with restoring(model) as keep, torch.no_grad():
                keep(apply_delta(model, delta))
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                if int(logits[0, pos].argmax()) == first:
                    break
        delta.provenance = {"editor": self.name, "neurons": repr(layers)}
        return delta


def first_answer_token(model: nn.Module, tokenizer: Any, prompt: str, answer: str) -> tuple[dict, int, int]:
    """``(edit_batch, position, token)``: the position whose logits predict the answer's first token."""
    batch = edit_batch(model, tokenizer, [prompt], [answer], kind="causal")
    j = int(batch["labels"][0].ne(-100).nonzero()[0])
    return batch, j - 1, int(batch["labels"][0, j])


def value_vectors(module: nn.Module, neurons: Sequence[int]) -> Tensor:
    """The value vectors ``[k, d_out]`` of ``neurons`` of an MLP output matrix (columns of an
    ``nn.Linear`` weight, rows of a GPT-2 ``Conv1D`` one)."""
    w = module.weight.detach().float()
    return (w.T if isinstance(module, nn.Linear) else w)[list(neurons)]


def neuron_delta(model: nn.Module, layers: dict[str, list[int]], change: Tensor) -> EditDelta:
    """The edit that adds ``change`` ``[d_out]`` to the value vector of each neuron of ``layers``:
    per layer ``u`` one-hot rows ``[k, d_in]`` and ``delta = -change`` (``W' = W - delta^T u``)."""
    from graddecomp import layer_shape

    parts = {}
    for name, neurons in layers.items():
        d_out, d_in = layer_shape(model.get_submodule(name))
        u = torch.zeros(len(neurons), d_in, device=change.device)
        u[torch.arange(len(neurons)), torch.tensor(neurons)] = 1.0
        parts[name] = LayerDelta(u, -change.expand(len(neurons), d_out).clone(), 1.0)
    return EditDelta(parts)


LOCATE_EDITORS: dict[str, type[_LocateEditor]] = {
    "ROME": RomeEditor, "MEMIT": MemitEditor, "AlphaEdit": AlphaEditEditor, "KN": KnowledgeNeuronsEditor,
}  # fmt: skip
