"""MEND editor networks (Mitchell et al., ICLR 2022) with the original code's known bugs fixed.

For each edited layer ``l`` the gradient of the edit loss is ``sum_i delta_i u_i^T`` (captured
by ``graddecomp.capture``). One ``ShapeEditor`` per distinct ``(d_out, d_in)``, shared by all
layers of that shape, maps each row ``(u_i, delta_i)`` to ``(u~_i, delta~_i)``; the edit is
``W_l - alpha_l * sum_i delta~_i u~_i^T`` (subtracted: a descent step).

Each network normalises its input per dimension with running statistics (frozen at edit time),
then applies residual low-rank layers ``h = z + relu(s_l * (U V z + b) + o_l)`` with a scale
``s_l`` and shift ``o_l`` per shared layer, then maps back to the input scale. ``U`` starts at
zero, so a fresh editor is the identity and its edit equals a plain fine-tuning step of size
``alpha``.

A checkpoint directory holds ``config.json`` (the ``MendConfig`` and the ``ModelSpec`` of the
model it was trained for) and ``editor.safetensors``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from editor_nets.delta import EditDelta, LayerDelta, apply_delta
from editor_nets.models import default_targets, model_kind, output_projections
from editor_nets.ridge import (
    KeyMemory,
    RidgeSystem,
    broken_answers,
    held_rows,
    layer_inputs,
    neighbour_prompts,
    ridge_update,
    scores_with,
    stepwise_edit,
    subject_templates,
)
from editor_nets.scoring import edit_batch, target_nll
from editor_nets.state import WeightSnapshot, eval_mode, weights_digest
from graddecomp import Factors, capture, layer_shape, resolve_targets

if TYPE_CHECKING:
    from edit_data import EditRecord

__all__ = [
    "EDIT_TIME_SETTINGS",
    "INPUT_MODES",
    "MendConfig",
    "MendEditor",
    "ModelSpec",
    "ResidualLowRank",
    "RunningNorm",
    "ShapeEditor",
    "edit_factors",
    "with_settings",
]

INPUT_MODES = ("concat", "u", "delta", "smaller", "separate")
AGGREGATIONS = ("sum", "ridge")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "editor.safetensors"
SUBJECTS_NAME = "subjects.json"  # template -> subjects (set_subjects), when the editor has them
# MendConfig fields that only act at edit time: a trained editor can be evaluated with others
EDIT_TIME_SETTINGS = (
    "edit_steps", "step_scale", "stop_nll", "repair", "neighbours", "neighbour_weight",
    "neighbour_norm_bound", "neighbour_pool", "neighbour_memory",
)  # fmt: skip


@dataclass
class MendConfig:
    """The editor networks' settings (the paper's defaults).

    ``rank`` of the residual layers (capped at each network's width), ``n_layers`` residual
    layers, ``input_mode`` one of ``"concat"`` (net on ``[u, delta]``), ``"u"``, ``"delta"``,
    ``"smaller"`` (net on the smaller side only) or ``"separate"`` (one net for ``u``, one for
    ``delta``), the step sizes' start ``alpha_init``, and the edited layers ``targets``
    (names or globs; ``None``: ``editor_nets.models.default_targets``, or the MLP output
    projections with ridge aggregation).

    ``aggregation`` is how the rows become an update: ``"sum"`` (the paper: ``-alpha sum_i
    delta~_i u~_i^T``) or ``"ridge"`` (the lifelong editor: value changes ``-alpha delta~_i`` at
    the real keys ``u_i``, solved by ``editor_nets.ridge.ridge_update`` against the editor's key
    memory, with a learned log-ridge, log-weight of the preserved keys and log-weight of the
    earlier edits' keys per layer, starting at ``ridge_init``, ``gamma_init`` and ``beta_init``).
    With ridge aggregation an edit can be made in up to ``edit_steps`` steps of ``step_scale``
    times the learned update, each on the model as updated so far, stopping once the targets are
    hit and, with ``stop_nll``, each target's mean token NLL is below it (a margin, so that
    rephrasings and later edits do not undo a just-made edit; ``editor_nets.ridge.stepwise_edit``,
    which keeps an edit that runs out of steps at its best point). With ``repair`` an edit that would break an earlier
    edit's answer (one the model gives now; ``KeyMemory.answers``) is made again together with the
    earlier edits it breaks, which then push until they hold again. With ``neighbours`` > 0 each
    edit is also solved holding the outputs of its prompt asked of that many other subjects
    (``editor_nets.ridge.neighbour_prompts`` from the editor's ``subjects``; the mean ``k k^T`` of
    their keys, ``neighbour_weight`` times, beside the earlier edits' keys), and that solve is kept
    unless its norm exceeds ``neighbour_norm_bound`` times the plain solve's or it hits fewer targets.
    With ``neighbour_pool`` > ``neighbours`` the neighbours are the ``neighbours`` of that many drawn
    whose new-target NLL the plain solve lowers most (where it would spill); with
    ``neighbour_memory`` > 0 their keys (``editor_nets.ridge.held_rows``: ``neighbour_memory`` times
    their mean ``k k^T``) join the edit's own keys, so that later edits hold them too."""

    rank: int = 1920
    n_layers: int = 2
    input_mode: str = "concat"
    alpha_init: float = 1e-4
    norm_eps: float = 1e-8
    targets: list[str] | None = None
    aggregation: str = "sum"
    ridge_init: float = 1e-2
    gamma_init: float = 3000.0
    beta_init: float = 1.0
    edit_steps: int = 1
    step_scale: float = 1.0
    stop_nll: float | None = None
    repair: bool = False
    neighbours: int = 0
    neighbour_weight: float = 100.0
    neighbour_norm_bound: float = 2.0
    neighbour_pool: int = 0
    neighbour_memory: float = 0.0

    def __post_init__(self) -> None:
        if self.input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {self.input_mode!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.rank < 1 or self.n_layers < 0:
            raise ValueError(
                f"rank must be >= 1 and n_layers >= 0, got rank={self.rank}, n_layers={self.n_layers}"
            )


def with_settings(config: MendConfig, settings: Sequence[str]) -> MendConfig:
    """``config`` with edit-time settings replaced from ``"name=value"`` strings (e.g.
    ``"neighbour_memory=0"``, ``"stop_nll=none"``, ``"repair=false"``); only
    ``EDIT_TIME_SETTINGS``, since the others shape the trained networks. A malformed string, an
    unknown or structural name or a value of the wrong type raises ``ValueError`` naming it."""
    changes: dict[str, Any] = {}
    for item in settings:
        name, sep, text = item.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or name not in EDIT_TIME_SETTINGS:
            raise ValueError(
                f"setting {item!r}: expected NAME=VALUE with NAME one of {', '.join(EDIT_TIME_SETTINGS)}"
            )
        current = getattr(config, name)
        try:
            if text.lower() == "none" and name == "stop_nll":
                changes[name] = None
            elif isinstance(current, bool):
                changes[name] = {"true": True, "false": False}[text.lower()]
            elif isinstance(current, int):
                changes[name] = int(text)
            else:
                changes[name] = float(text)
        except (KeyError, ValueError):
            kind = "true or false" if isinstance(current, bool) else type(current or 0.0).__name__
            raise ValueError(f"setting {item!r}: {name} takes {kind}, got {text!r}") from None
    return replace(config, **changes)


@dataclass
class ModelSpec:
    """The model an editor is for: its edited layers (resolved names) with their ``[d_out, d_in]``,
    its kind, type, class and name, and a digest of the edited weights it was trained on."""

    targets: list[str]
    shapes: dict[str, list[int]]
    kind: str = "causal"
    model_type: str = ""
    architecture: str = ""
    base_model: str = ""
    weights_hash: str = ""

    def __post_init__(self) -> None:
        missing = [t for t in self.targets if t not in self.shapes]
        if missing:
            raise ValueError(f"shapes lacks the edited layers {missing}")

    @classmethod
    def of(
        cls,
        model: nn.Module,
        targets: Sequence[str] | None = None,
        base_model: str = "",
        *,
        outputs: bool = False,
        digest: bool = True,
    ) -> ModelSpec:
        """The spec of ``model`` for ``targets`` (default: ``default_targets``, or with ``outputs``
        the MLP output projections); ``digest=False`` leaves ``weights_hash`` empty (a model on the
        meta device has no weights to hash)."""
        if targets is None:
            targets = output_projections(model) if outputs else default_targets(model)
        names = list(resolve_targets(model, list(targets)))
        return cls(
            targets=names,
            shapes={n: list(layer_shape(model.get_submodule(n))) for n in names},
            kind=model_kind(model),
            model_type=getattr(model.config, "model_type", ""),
            architecture=type(model).__name__,
            base_model=base_model or getattr(model.config, "_name_or_path", "") or "",
            weights_hash=_edited_digest(model, names) if digest else "",
        )


def _edited_digest(model: nn.Module, targets: Sequence[str]) -> str:
    return weights_digest(model, [f"{t}.weight" for t in targets])


class RunningNorm(nn.Module):
    """Per-dimension running mean/variance over all training rows (Chan et al. merge).

    ``update(x [n, w])`` merges a batch; ``normalize``/``denormalize`` use the current stats.
    Before two rows are seen the stats are mean 0, std 1."""

    def __init__(self, width: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(width, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(width, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        x = x.detach().to(torch.float64)
        n = x.shape[0]
        if n == 0 or not bool(torch.isfinite(x).all()):
            return  # non-finite rows would poison the statistics for good
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        total = self.count + n
        diff = mean_b - self.mean
        self.mean += diff * n / total
        self.m2 += m2_b + diff**2 * self.count * n / total
        self.count.fill_(total)

    def stats(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``(mean, std)``, both ``[w]``; branch-free, so it also runs on the meta device (``edit-plan``)."""
        seen = self.count >= 2
        std = torch.where(seen, (self.m2 / (self.count - 1).clamp_min(1)).sqrt() + self.eps, 1.0)
        mean = torch.where(seen, self.mean, 0.0)
        return mean.to(dtype), std.to(dtype)


class ResidualLowRank(nn.Module):
    """``h = z + relu(s[l] * (U V z + b) + o[l])`` for shared layer ``l``, with ``U`` ``[w, r]``
    zero-initialised and ``V`` ``[r, w]`` Xavier-initialised; ``s``/``o`` ``[n_shared, w]`` start at 1/0."""

    def __init__(self, width: int, rank: int, n_shared: int) -> None:
        super().__init__()
        rank = min(rank, width)
        self.U = nn.Parameter(torch.zeros(width, rank))
        self.V = nn.Parameter(torch.empty(rank, width))
        nn.init.xavier_uniform_(self.V)
        self.b = nn.Parameter(torch.zeros(width))
        self.scale = nn.Parameter(torch.ones(n_shared, width))
        self.shift = nn.Parameter(torch.zeros(n_shared, width))

    def forward(self, z: Tensor, layer: int) -> Tensor:
        """``z`` ``[n, w]`` -> ``[n, w]``."""
        pre = (z @ self.V.T) @ self.U.T + self.b
        # ReLU with the subgradient 1 at 0: at initialisation the argument is exactly 0 everywhere
        # (U = 0, b = 0, shift = 0) and torch.relu's gradient 0 there would leave the network dead.
        return z + (self.scale[layer] * pre + self.shift[layer]).clamp_min(0)


class EditorNet(nn.Module):
    """Normalise ``[n, w]`` rows, apply the residual layers, map back to the input scale.

    ``out = h * std + keep_mean[l] * mean`` with ``keep_mean`` learned per layer and initialised
    to 1, so a fresh network is exactly the identity (the edit equals plain fine-tuning). The
    residual layers only add non-negative values, so without this gate the network could not
    remove the mean of its inputs, which is shared by every token and makes edits non-local;
    driving ``keep_mean`` to 0 recovers the original MEND's output in normalised coordinates."""

    def __init__(self, width: int, rank: int, n_layers: int, n_shared: int, eps: float) -> None:
        super().__init__()
        self.norm = RunningNorm(width, eps)
        self.layers = nn.ModuleList(ResidualLowRank(width, rank, n_shared) for _ in range(n_layers))
        self.keep_mean = nn.Parameter(torch.ones(n_shared, width))

    def forward(self, x: Tensor, layer: int) -> Tensor:
        """``x`` ``[n, w]`` -> ``[n, w]``; in training mode the running statistics absorb ``x`` first."""
        if self.training:
            self.norm.update(x)
        mean, std = self.norm.stats(x.dtype)
        h = (x - mean) / std
        for block in self.layers:
            h = block(h, layer)
        return h * std + self.keep_mean[layer] * mean


class ShapeEditor(nn.Module):
    """The editor network(s) for one weight shape ``(d_out, d_in)``, shared by ``n_shared`` layers.

    ``side`` is what the networks see: ``concat``, ``u``, ``delta`` or ``separate`` (the config's
    ``input_mode``, with ``smaller`` resolved to the smaller of ``u`` and ``delta``)."""

    def __init__(self, d_out: int, d_in: int, n_shared: int, config: MendConfig) -> None:
        super().__init__()
        self.d_out, self.d_in = d_out, d_in
        side = config.input_mode
        if side == "smaller":
            side = "u" if d_in <= d_out else "delta"
        self.side = side

        def net(width: int) -> EditorNet:
            return EditorNet(width, config.rank, config.n_layers, n_shared, config.norm_eps)

        if side == "concat":
            self.net = net(d_in + d_out)
        elif side == "u":
            self.net = net(d_in)
        elif side == "delta":
            self.net = net(d_out)
        else:  # separate
            self.net_u, self.net_delta = net(d_in), net(d_out)

    def forward(self, u: Tensor, delta: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        """``u`` ``[n, d_in]``, ``delta`` ``[n, d_out]`` of shared layer ``layer`` ->
        ``(u~ [n, d_in], delta~ [n, d_out])``."""
        if self.side == "concat":
            out = self.net(torch.cat([u, delta], dim=-1), layer)
            return out[:, : self.d_in], out[:, self.d_in :]
        if self.side == "u":
            return self.net(u, layer), delta
        if self.side == "delta":
            return u, self.net(delta, layer)
        return self.net_u(u, layer), self.net_delta(delta, layer)


def edit_factors(
    model: nn.Module,
    batch: dict[str, Tensor],
    targets: Sequence[str],
    *,
    kind: str | None = None,
    weights: Tensor | None = None,
) -> dict[str, Factors]:
    """Capture ``(u, delta)`` of the edit loss for ``targets``.

    The loss is the SUM over edits of each edit's mean target NLL (times ``weights`` ``[B]`` when
    given), so every edit in a batch contributes a gradient of the same scale as if it were alone.
    Padding rows are dropped, and so are the rows of an edit of weight 0 (its ``delta`` is zero)."""
    kind = kind or model_kind(model)
    mask = batch["attention_mask"] if kind == "causal" else None
    with torch.enable_grad(), capture(model, list(targets), mask=mask) as cap:
        nll = target_nll(model, batch, kind=kind)
        loss = (nll if weights is None else nll * weights.to(nll)).sum()
        cap.backward(loss)
    return cap.factors


def _shape_key(shape: Sequence[int]) -> str:
    return f"{int(shape[0])}x{int(shape[1])}"


class MendEditor(nn.Module):
    """MEND: one ``ShapeEditor`` per weight shape plus a learned step size per edited layer.

    ``alpha`` ``[n_targets]`` holds the step sizes (in the targets' order); the training loop puts
    it in its own optimizer parameter group."""

    def __init__(self, config: MendConfig, spec: ModelSpec) -> None:
        super().__init__()
        self.config, self.spec = config, spec
        groups: dict[str, list[str]] = {}
        for t in spec.targets:
            groups.setdefault(_shape_key(spec.shapes[t]), []).append(t)
        self.shared_index = {t: names.index(t) for names in groups.values() for t in names}
        self.shape_of = {t: _shape_key(spec.shapes[t]) for t in spec.targets}
        self.editors = nn.ModuleDict(
            {
                key: ShapeEditor(int(key.split("x")[0]), int(key.split("x")[1]), len(names), config)
                for key, names in groups.items()
            }
        )
        self.alpha = nn.Parameter(torch.full((len(spec.targets),), float(config.alpha_init)))
        self.memory = KeyMemory()
        self.subjects: dict[str, list[str]] = {}  # template -> subjects, for neighbour protection
        if config.aggregation == "ridge":
            self.log_ridge = nn.Parameter(torch.full((len(spec.targets),), math.log(config.ridge_init)))
            self.log_gamma = nn.Parameter(torch.full((len(spec.targets),), math.log(config.gamma_init)))
            self.log_beta = nn.Parameter(torch.full((len(spec.targets),), math.log(config.beta_init)))
            for i, t in enumerate(spec.targets):  # C_0 of each layer, set by set_preserved
                self.register_buffer(f"preserved_{i}", torch.zeros(spec.shapes[t][1], spec.shapes[t][1]))
            self.start()

    @property
    def name(self) -> str:
        """``"MEND"``, or ``"LifelongMEND"`` with ridge aggregation."""
        return "LifelongMEND" if self.config.aggregation == "ridge" else "MEND"

    @property
    def targets(self) -> list[str]:
        """The edited layers, in the model's order."""
        return self.spec.targets

    @classmethod
    def for_model(
        cls, model: nn.Module, config: MendConfig | None = None, *, base_model: str = ""
    ) -> MendEditor:
        """A fresh (identity) editor for ``model`` with ``config`` (default ``MendConfig()``)."""
        config = config or MendConfig()
        spec = ModelSpec.of(model, config.targets, base_model, outputs=config.aggregation == "ridge")
        return cls(config, spec)

    def set_preserved(self, moments: dict[str, Tensor]) -> None:
        """Store ``C_0`` per edited layer (``editor_nets.ridge.preserved_moments`` of the base model);
        it is part of the checkpoint. Ridge aggregation only."""
        for i, t in enumerate(self.targets):
            getattr(self, f"preserved_{i}").copy_(moments[t])
        self.start()

    def set_subjects(self, records: Sequence[EditRecord]) -> None:
        """Store which subjects ``records`` (the training edits) ask with each prompt template: the
        neighbours an edit's prompt is asked of (``MendConfig.neighbours``). Part of the checkpoint."""
        self.subjects = subject_templates(records)

    def start(self) -> None:
        """Forget earlier edits: a new sequence of edits on the base weights (``memory`` keeps only
        ``C_0``)."""
        if self.config.aggregation == "ridge":
            self.memory = KeyMemory({t: getattr(self, f"preserved_{i}") for i, t in enumerate(self.targets)})

    def transform(
        self,
        factors: dict[str, Factors],
        memory: KeyMemory | None = None,
        systems: dict[str, RidgeSystem] | None = None,
    ) -> EditDelta:
        """Map captured factors (``u [n, d_in]``, ``delta [n, d_out]`` per layer) to the edit,
        differentiable in the editor's parameters (``alpha`` stays a tensor). With ridge
        aggregation the update is solved against ``memory`` (default ``self.memory``); ``systems``,
        when given, caches each layer's factored :class:`~editor_nets.ridge.RidgeSystem` across
        calls (the steps of one edit). In training mode the normalisers update."""
        memory = self.memory if memory is None else memory
        layers = {}
        for i, name in enumerate(self.targets):
            u, delta = (t.to(self.alpha.device, torch.float32) for t in factors[name])
            u_t, d_t = self.editors[self.shape_of[name]](u, delta, self.shared_index[name])
            if self.config.aggregation == "sum":
                layers[name] = LayerDelta(u_t, d_t, self.alpha[i])
            else:
                ridge, values = self.log_ridge[i].exp(), -self.alpha[i] * d_t
                gamma, beta = self.log_gamma[i].exp(), self.log_beta[i].exp()
                if systems is None:  # one differentiable solve (meta-training)
                    layers[name] = ridge_update(u, values, memory.prior(name, gamma, u.device, beta), ridge)
                else:
                    if name not in systems:
                        prior = memory.prior(name, gamma, u.device, beta)
                        systems[name] = RidgeSystem.of(prior, ridge, u.shape[1], u.device)
                    layers[name] = systems[name].update(u, values)
        return EditDelta(layers)

    def check_fits(self, model: nn.Module) -> None:
        """Raise ``ValueError`` listing the edited layers that ``model`` lacks or whose shape differs;
        warn when the edited weights differ from those the editor was trained on."""
        problems = []
        for name in self.targets:
            want = tuple(self.spec.shapes[name])
            try:
                have = layer_shape(model.get_submodule(name))
            except AttributeError:
                problems.append(f"{name}: missing from the model")
                continue
            except TypeError as err:
                problems.append(f"{name}: {err}")
                continue
            if tuple(have) != want:
                problems.append(f"{name}: editor trained for (d_out, d_in)={want}, model has {tuple(have)}")
        if problems:
            raise ValueError(
                f"editor (base model {self.spec.base_model!r}, {self.spec.architecture}) does not fit "
                f"{type(model).__name__}: " + "; ".join(problems)
            )
        if self.spec.weights_hash and _edited_digest(model, self.targets) != self.spec.weights_hash:
            warnings.warn(
                f"the model's edited weights differ from those the editor was trained on "
                f"(base model {self.spec.base_model!r}); edits may be less reliable",
                stacklevel=2,
            )

    def compute_delta(
        self, model: nn.Module, tokenizer: Any, records: Sequence[EditRecord], memory: KeyMemory | None = None
    ) -> EditDelta:
        """One edit (batched when ``len(records) > 1``) for ``records``, solved against ``memory``
        (default ``self.memory``) with ridge aggregation, and again holding the neighbour prompts
        when ``config.neighbours`` > 0 (see :class:`MendConfig`); the model is unchanged."""
        if not records:
            raise ValueError("compute_delta needs at least one record")
        records_json = json.dumps(
            [{"prompt": r.prompt, "target": r.target, "source": r.source} for r in records]
        )
        provenance = {"editor": self.name, "base_model": self.spec.base_model, "records": records_json}
        memory = self.memory if memory is None else memory
        if self.config.aggregation == "ridge":
            delta = self._ridge_edit(model, tokenizer, records, memory, provenance)
            texts = self._neighbours(model, tokenizer, records, delta)
            if texts:
                keys = layer_inputs(model, tokenizer, texts, self.targets)
                held = memory.holding(
                    {n: k.T @ k / len(k) for n, k in keys.items()}, self.config.neighbour_weight
                )
                protected = self._ridge_edit(model, tokenizer, records, held, dict(provenance))
                bounded = protected.norm() <= self.config.neighbour_norm_bound * delta.norm()
                if bounded and self._hits(model, tokenizer, records, protected) >= self._hits(model, tokenizer, records, delta):  # fmt: skip
                    protected.provenance["neighbours"] = json.dumps(texts)
                    delta = protected
                if self.config.neighbour_memory > 0:  # later edits hold them too: they join the keys
                    for name, layer in delta.layers.items():
                        rows = held_rows(keys[name], self.config.neighbour_memory).to(layer.keys)
                        layer.keys = torch.cat([layer.keys, rows])
            return delta
        kind = self.spec.kind
        batch = edit_batch(
            model, tokenizer, [r.prompt for r in records], [r.target for r in records], kind=kind
        )
        return EditDelta(
            self._step(edit_factors(model, batch, self.targets, kind=kind), memory).layers, provenance
        )

    def _neighbours(
        self, model: nn.Module, tokenizer: Any, records: Sequence[EditRecord], delta: EditDelta
    ) -> list[str]:
        """The neighbour prompts ``records`` hold: ``config.neighbours`` per record, drawn at random,
        or with ``config.neighbour_pool`` the ones among that many whose new-target NLL the plain
        edit ``delta`` lowers most (where it would spill)."""
        k, pool = self.config.neighbours, self.config.neighbour_pool
        if pool <= k:
            return neighbour_prompts(records, self.subjects, k)
        drawn = [neighbour_prompts([r], self.subjects, pool) for r in records]
        prompts = [p for texts in drawn for p in texts]
        targets = [r.target for r, texts in zip(records, drawn, strict=True) for _ in texts]
        if not prompts:
            return []
        options = {"kind": self.spec.kind, "batch_size": 128}
        drop = scores_with(model, tokenizer, prompts, targets, **options).mean_nll
        drop -= scores_with(model, tokenizer, prompts, targets, delta, **options).mean_nll
        out = []
        for texts, lowered in zip(drawn, drop.split([len(t) for t in drawn]), strict=True):
            out += [texts[i] for i in lowered.topk(min(k, len(texts))).indices.tolist()]
        return out

    def _hits(self, model: nn.Module, tokenizer: Any, records: Sequence[EditRecord], delta: EditDelta) -> int:
        """How many of ``records``' targets the model gives (teacher-forced) with ``delta`` applied."""
        prompts, targets = [r.prompt for r in records], [r.target for r in records]
        return int(
            scores_with(
                model, tokenizer, prompts, targets, delta, kind=self.spec.kind, batch_size=128
            ).exact.sum()
        )

    def _ridge_edit(
        self,
        model: nn.Module,
        tokenizer: Any,
        records: Sequence[EditRecord],
        memory: KeyMemory,
        provenance: dict[str, str],
    ) -> EditDelta:
        """The stepwise ridge edit of ``records`` against ``memory``; with ``repair``, made again
        together with the earlier edits' answers it would break."""
        systems: dict[str, RidgeSystem] = {}  # the memory is fixed during one edit: factor it once

        def solve(batch: Sequence[Any]) -> EditDelta:
            def step(factors: dict[str, Factors]) -> EditDelta:
                return self._step(factors, memory, systems)

            return stepwise_edit(model, tokenizer, batch, self.targets, step, self.config.edit_steps, provenance, self.config.stop_nll)  # fmt: skip

        delta = solve(records)
        broken = broken_answers(model, tokenizer, delta, memory.answers) if self.config.repair else []
        if broken:  # make it again with the earlier edits it breaks (provenance keeps the asked ones)
            from edit_data import EditRecord

            again = [EditRecord(prompt=p, target=t) for p, t in (memory.answers[i] for i in broken)]
            delta = solve([*records, *again])
            delta.provenance["repaired"] = json.dumps([memory.answers[i] for i in broken])
        return delta

    @torch.no_grad()
    def _step(
        self, factors: dict[str, Factors], memory: KeyMemory, systems: dict[str, RidgeSystem] | None = None
    ) -> EditDelta:
        """The editor's update for ``factors``, detached, in eval mode (``step_scale`` of it with ridge)."""
        scale = self.config.step_scale if self.config.aggregation == "ridge" else 1.0
        with eval_mode(self):
            mapped = self.transform(factors, memory, systems)
        return EditDelta(
            {
                n: LayerDelta(x.u, x.delta * scale, float(torch.as_tensor(x.alpha)), x.keys)
                for n, x in mapped.layers.items()
            }
        )

    def edit(self, model: nn.Module, tokenizer: Any, records: Sequence[EditRecord]) -> WeightSnapshot:
        """``compute_delta`` then ``apply_delta`` in place; returns the touched weights' originals.
        With ridge aggregation the edit's keys join ``memory``, so later edits protect it."""
        delta = self.compute_delta(model, tokenizer, records)
        snapshot = apply_delta(model, delta)
        if self.config.aggregation == "ridge":
            self.memory = self.memory.with_edit(delta)
        return snapshot

    def n_parameters(self) -> int:
        """Trainable parameter count (networks, per-layer scales and shifts, step sizes)."""
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``config.json`` and ``editor.safetensors`` (weights, normaliser stats, step sizes)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {"editor": asdict(self.config), "model": asdict(self.spec)}
        (path / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path / WEIGHTS_NAME))
        if self.subjects:
            (path / SUBJECTS_NAME).write_text(json.dumps(self.subjects, indent=1) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path, model: nn.Module | None = None) -> MendEditor:
        """Load a directory written by ``save_pretrained``; with ``model``, check that it fits
        (``ValueError`` on shape mismatch, warning when the edited weights differ)."""
        path = Path(path)
        cfg_file, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
        for f in (cfg_file, weights):
            if not f.is_file():
                raise FileNotFoundError(
                    f"{f} not found: an editor checkpoint is a directory with {CONFIG_NAME} and {WEIGHTS_NAME}"
                )
        try:
            raw = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{cfg_file}: invalid JSON at line {err.lineno}: {err.msg}") from err
        parts = {"editor": MendConfig, "model": ModelSpec}
        if not isinstance(raw, dict) or set(raw) != set(parts):
            raise ValueError(f"{cfg_file}: expected an object with exactly the keys {sorted(parts)}")
        for key, kind in parts.items():
            unknown = sorted(set(raw[key]) - set(kind.__dataclass_fields__))
            if unknown:
                raise ValueError(f"{cfg_file}: unknown field(s) {unknown} in {key!r}")
        editor = cls(MendConfig(**raw["editor"]), ModelSpec(**raw["model"]))
        state = load_file(str(weights))
        if hasattr(editor, "log_beta"):  # saved before the weight of earlier edits was learned: its start
            state.setdefault("log_beta", editor.log_beta.detach().clone())
        missing, unexpected = editor.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
        subjects_file = path / SUBJECTS_NAME
        if subjects_file.is_file():
            try:
                subjects = json.loads(subjects_file.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{subjects_file}: invalid JSON at line {err.lineno}: {err.msg}") from err
            if not isinstance(subjects, dict) or not all(
                isinstance(v, list) and all(isinstance(x, str) for x in v) for v in subjects.values()
            ):
                raise ValueError(
                    f"{subjects_file}: expected an object of template -> list of subject strings"
                )
            editor.subjects = subjects
        editor.eval()
        if model is not None:
            editor.check_fits(model)
        return editor
