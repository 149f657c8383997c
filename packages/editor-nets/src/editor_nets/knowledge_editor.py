"""KnowledgeEditor (De Cao et al., EMNLP 2021): a hypernetwork, conditioned on the edit itself,
that turns the edit's gradient into the update of each edited matrix.

A bidirectional LSTM reads the (frozen) input embeddings of the edit's prompt and new target and
gives a condition vector ``c``; per edited matrix ``W [d_out, d_in]`` small heads map ``c`` to
``a [d_out]``, ``b [d_in]``, ``p [d_out]``, ``q [d_in]`` and a gate ``eta``, and the update is

    dW = -sigmoid(eta) * ( sum_t (a * delta_t)(b * u_t)^T + p q^T )

i.e. the paper's ``sigma(eta) * (alpha . grad_W + beta)`` with ``alpha = a b^T`` and ``beta = p q^T``
factorised, where ``grad_W = sum_t delta_t u_t^T`` comes from :func:`editor_nets.mend.edit_factors`.
The update is therefore low rank and returned as the same ``EditDelta`` factors as MEND's (rows
``[b * u_t; q]`` and ``[a * delta_t; -p]``, step ``sigmoid(eta)``). :func:`train_knowledge_editor`
trains it with the edit NLL on the prompt and its rephrasings plus a KL term on locality prompts
(a weighted sum rather than the paper's constrained optimisation).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from editor_nets.delta import EditDelta, LayerDelta, apply_delta, lowrank_edit
from editor_nets.mend import edit_factors
from editor_nets.models import default_targets, model_kind
from editor_nets.scoring import answer_logits, edit_batch, kl_divergence, target_nll
from editor_nets.state import WeightSnapshot, eval_mode, frozen
from graddecomp import layer_shape

__all__ = ["KnowledgeEditor", "KnowledgeEditorConfig", "train_knowledge_editor"]


@dataclass
class KnowledgeEditorConfig:
    """The hypernetwork's size and its training (``steps`` Adam steps of ``batch_size`` edits)."""

    hidden: int = 64
    steps: int = 200
    lr: float = 1e-3
    batch_size: int = 4
    c_edit: float = 1.0
    c_loc: float = 1.0
    seed: int = 0


class KnowledgeEditor(nn.Module):
    """The hypernetwork for ``targets`` (module names) of ``model``; see the module docstring."""

    name = "KE"

    def __init__(self, model: nn.Module, targets: Sequence[str] | None = None, hidden: int = 64) -> None:
        super().__init__()
        self.targets = list(targets or default_targets(model))
        self.hidden = hidden
        d_emb = model.get_input_embeddings().weight.shape[1]
        self.lstm = nn.LSTM(d_emb, hidden, batch_first=True, bidirectional=True)
        self.heads = nn.ModuleList()
        for name in self.targets:
            d_out, d_in = layer_shape(model.get_submodule(name))
            head = nn.Linear(2 * hidden, 2 * d_out + 2 * d_in + 1)
            nn.init.zeros_(head.weight)  # start as one plain gradient step scaled by sigmoid(eta)
            with torch.no_grad():
                head.bias.zero_()
                head.bias[:d_out].fill_(1.0)  # a = 1
                head.bias[d_out : d_out + d_in].fill_(1.0)  # b = 1
                head.bias[-1] = -4.0  # sigmoid(eta) ~ 0.018
            self.heads.append(head)

    def condition(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """``[d]``: the LSTM's mean state over the edit batch's real tokens (prompt and target)."""
        with torch.no_grad():
            emb = model.get_input_embeddings()(batch["input_ids"]).float()
        states, _ = self.lstm(emb)  # [B, T, 2h]
        mask = batch["attention_mask"][..., None].float()
        return ((states * mask).sum(1) / mask.sum(1).clamp_min(1)).mean(0)

    def delta_for(self, model: nn.Module, batch: dict[str, Tensor], kind: str) -> EditDelta:
        """The edit of ``batch`` (an ``edit_batch``): differentiable in the hypernetwork."""
        factors = edit_factors(model, batch, self.targets, kind=kind)
        c = self.condition(model, batch)
        layers = {}
        for name, head in zip(self.targets, self.heads, strict=True):
            u, d = factors[name]
            d_in, d_out = u.shape[1], d.shape[1]
            out = head(c)
            a, b = out[:d_out], out[d_out : d_out + d_in]
            p, q = out[d_out + d_in : 2 * d_out + d_in], out[2 * d_out + d_in : -1]
            layers[name] = LayerDelta(
                u=torch.cat([u.float() * b, q[None]]), delta=torch.cat([d.float() * a, -p[None]]),
                alpha=torch.sigmoid(out[-1]),
            )  # fmt: skip
        return EditDelta(layers, {"editor": self.name})

    def compute_delta(
        self, model: nn.Module, tokenizer: Any, records: Sequence[Any], memory: Any = None
    ) -> EditDelta:
        """One edit of ``records`` (``memory``, the least-squares editors' argument, is not used)."""
        kind = model_kind(model)
        batch = edit_batch(
            model, tokenizer, [r.prompt for r in records], [r.target for r in records], kind=kind
        )
        with torch.no_grad():
            delta = self.delta_for(model, batch, kind)
        for layer in delta.layers.values():
            layer.alpha = float(layer.alpha)
        return delta

    def edit(self, model: nn.Module, tokenizer: Any, records: Sequence[Any]) -> WeightSnapshot:
        return apply_delta(model, self.compute_delta(model, tokenizer, records))

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``config.json`` (``{"editor": "KE", "targets", "hidden"}``) and ``editor.safetensors``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {"editor": self.name, "targets": self.targets, "hidden": self.hidden}
        (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
            str(path / "editor.safetensors"),
        )

    @classmethod
    def from_pretrained(cls, path: str | Path, model: nn.Module) -> KnowledgeEditor:
        """Load a directory written by ``save_pretrained`` for ``model`` (``ValueError`` naming the
        file when it is not a KE checkpoint or does not fit the model's shapes)."""
        path = Path(path)
        cfg_file, weights = path / "config.json", path / "editor.safetensors"
        for f in (cfg_file, weights):
            if not f.is_file():
                raise FileNotFoundError(
                    f"{f} not found: a KE checkpoint has config.json and editor.safetensors"
                )
        raw = json.loads(cfg_file.read_text())
        if not isinstance(raw, dict) or raw.get("editor") != cls.name:
            raise ValueError(f"{cfg_file}: not a KnowledgeEditor checkpoint (editor={raw.get('editor')!r})")
        editor = cls(model, raw["targets"], int(raw["hidden"]))
        try:
            editor.load_state_dict(load_file(str(weights)))
        except RuntimeError as err:
            raise ValueError(f"{weights} does not fit {type(model).__name__}: {err}") from err
        return editor.eval()


def train_knowledge_editor(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[Any],
    config: KnowledgeEditorConfig | None = None,
    *,
    targets: Sequence[str] | None = None,
    progress: bool = True,
) -> tuple[KnowledgeEditor, list[dict[str, float]]]:
    """Train a :class:`KnowledgeEditor` on ``records`` (training edits with rephrasings and locality
    prompts); the model is not changed. Returns the editor and one log entry per step."""
    config = config or KnowledgeEditorConfig()
    if not records:
        raise ValueError("train_knowledge_editor needs training records")
    torch.manual_seed(config.seed)
    editor = KnowledgeEditor(model, targets, config.hidden)
    opt = torch.optim.Adam(editor.parameters(), lr=config.lr)
    rng, kind, log = random.Random(config.seed), model_kind(model), []
    with frozen(model), eval_mode(model):
        for step in tqdm(range(config.steps), desc="KE training", unit="step", disable=not progress):
            opt.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            for r in rng.sample(list(records), min(config.batch_size, len(records))):
                prompts = [r.prompt, *r.rephrases]
                delta = editor.delta_for(
                    model, edit_batch(model, tokenizer, [r.prompt], [r.target], kind=kind), kind
                )
                in_scope = edit_batch(model, tokenizer, prompts, [r.target] * len(prompts), kind=kind)
                losses = {}
                if r.locality:
                    loc = edit_batch(model, tokenizer, [x.prompt for x in r.locality], [x.answer for x in r.locality], kind=kind)  # fmt: skip
                    with torch.no_grad():
                        ref = answer_logits(model, loc, kind=kind).logits
                with lowrank_edit(model, delta):
                    losses["edit"] = target_nll(model, in_scope, kind=kind).mean()
                    if r.locality:
                        losses["loc"] = kl_divergence(ref, answer_logits(model, loc, kind=kind).logits).mean()
                weights = {"edit": config.c_edit, "loc": config.c_loc}
                (sum(weights[k] * v for k, v in losses.items()) / config.batch_size).backward()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) / config.batch_size
            opt.step()
            log.append({"step": step, **sums})
    editor.eval()
    return editor, log
