"""MEND editor networks (Mitchell et al., ICLR 2022) with the original code's known bugs fixed.

For each edited layer ``l`` the gradient of the edit loss is ``sum_i delta_i u_i^T`` (captured
by ``graddecomp.capture``). One ``ShapeEditor`` per distinct ``(d_out, d_in)``, shared by all
layers of that shape, maps each row ``(u_i, delta_i)`` to ``(u~_i, delta~_i)``; the edit is
``W_l - alpha_l * sum_i delta~_i u~_i^T`` (subtracted: a descent step).

Each network normalises its input per dimension with running statistics (frozen at edit time),
then applies residual low-rank layers ``h = z + relu(s_l * (U V z + b) + o_l)`` with per-layer
("mode") scale ``s_l`` and shift ``o_l``, then maps back to the input scale. ``U`` starts at
zero, so a fresh editor is the identity and its edit equals a plain fine-tuning step of size
``alpha``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from editor_nets.delta import EditDelta, LayerDelta, WeightSnapshot, apply_delta
from editor_nets.families import default_targets, edit_batch, model_kind, target_nll
from graddecomp import Factors, capture, layer_shape, resolve_targets

if TYPE_CHECKING:
    from edit_data import EditRecord

__all__ = [
    "INPUT_MODES",
    "MendConfig",
    "MendEditor",
    "ResidualLowRank",
    "RunningNorm",
    "ShapeEditor",
    "edit_factors",
    "edited_weights_hash",
]

INPUT_MODES = ("concat", "u", "delta", "smaller", "separate")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "editor.safetensors"


@dataclass
class MendConfig:
    """Everything needed to rebuild a ``MendEditor`` and check it fits a model.

    ``shapes`` maps each edited layer name to ``[d_out, d_in]``; ``input_mode`` is one of
    ``"concat"`` (default: net on ``[u, delta]``), ``"u"``, ``"delta"``, ``"smaller"`` (net on
    the smaller side only) or ``"separate"`` (one net for ``u``, one for ``delta``)."""

    targets: list[str]
    shapes: dict[str, list[int]]
    rank: int = 1920
    n_layers: int = 2
    input_mode: str = "concat"
    alpha_init: float = 1e-4
    norm_eps: float = 1e-8
    kind: str = "causal"
    model_type: str = ""
    architecture: str = ""
    base_model: str = ""
    weights_hash: str = ""
    eval_results: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {self.input_mode!r}")
        if self.rank < 1 or self.n_layers < 0:
            raise ValueError(
                f"rank must be >= 1 and n_layers >= 0, got rank={self.rank}, n_layers={self.n_layers}"
            )
        missing = [t for t in self.targets if t not in self.shapes]
        if missing:
            raise ValueError(f"config.shapes lacks the edited layers {missing}")


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
        if self.count < 2:
            return torch.zeros_like(self.mean, dtype=dtype), torch.ones_like(self.mean, dtype=dtype)
        std = (self.m2 / (self.count - 1)).sqrt() + self.eps
        return self.mean.to(dtype), std.to(dtype)


class ResidualLowRank(nn.Module):
    """``h = z + relu(s[mode] * (U V z + b) + o[mode])`` with ``U`` ``[w, r]`` zero-initialised
    and ``V`` ``[r, w]`` Xavier-initialised; ``s``/``o`` ``[n_modes, w]`` start at 1/0."""

    def __init__(self, width: int, rank: int, n_modes: int) -> None:
        super().__init__()
        rank = min(rank, width)
        self.U = nn.Parameter(torch.zeros(width, rank))
        self.V = nn.Parameter(torch.empty(rank, width))
        nn.init.xavier_uniform_(self.V)
        self.b = nn.Parameter(torch.zeros(width))
        self.scale = nn.Parameter(torch.ones(n_modes, width))
        self.shift = nn.Parameter(torch.zeros(n_modes, width))

    def forward(self, z: Tensor, mode: int) -> Tensor:
        """``z`` ``[n, w]`` -> ``[n, w]``."""
        pre = (z @ self.V.T) @ self.U.T + self.b
        # ReLU with the subgradient 1 at 0: at initialisation the argument is exactly 0 everywhere
        # (U = 0, b = 0, shift = 0) and torch.relu's gradient 0 there would leave the network dead.
        return z + (self.scale[mode] * pre + self.shift[mode]).clamp_min(0)


class EditorNet(nn.Module):
    """Normalise ``[n, w]`` rows, apply the residual layers, map back to the input scale.

    ``out = h * std + keep_mean[mode] * mean`` with ``keep_mean`` learned per layer and initialised
    to 1, so a fresh network is exactly the identity (the edit equals plain fine-tuning). The
    residual layers only add non-negative values, so without this gate the network could not
    remove the mean of its inputs, which is shared by every token and makes edits non-local;
    driving ``keep_mean`` to 0 recovers the original MEND's output in normalised coordinates."""

    def __init__(self, width: int, rank: int, n_layers: int, n_modes: int, eps: float) -> None:
        super().__init__()
        self.norm = RunningNorm(width, eps)
        self.layers = nn.ModuleList(ResidualLowRank(width, rank, n_modes) for _ in range(n_layers))
        self.keep_mean = nn.Parameter(torch.ones(n_modes, width))

    def forward(self, x: Tensor, mode: int) -> Tensor:
        """``x`` ``[n, w]`` -> ``[n, w]``; in training mode the running statistics absorb ``x`` first."""
        if self.training:
            self.norm.update(x)
        mean, std = self.norm.stats(x.dtype)
        h = (x - mean) / std
        for layer in self.layers:
            h = layer(h, mode)
        return h * std + self.keep_mean[mode] * mean


class ShapeEditor(nn.Module):
    """The editor network(s) for one weight shape ``(d_out, d_in)``, shared by ``n_modes`` layers."""

    def __init__(self, d_out: int, d_in: int, n_modes: int, config: MendConfig) -> None:
        super().__init__()
        self.d_out, self.d_in, self.mode = d_out, d_in, config.input_mode
        mode = config.input_mode
        if mode == "smaller":
            mode = "u" if d_in <= d_out else "delta"
        self.side = mode

        def net(width: int) -> EditorNet:
            return EditorNet(width, config.rank, config.n_layers, n_modes, config.norm_eps)

        if mode == "concat":
            self.net = net(d_in + d_out)
        elif mode == "u":
            self.net = net(d_in)
        elif mode == "delta":
            self.net = net(d_out)
        else:  # separate
            self.net_u, self.net_delta = net(d_in), net(d_out)

    def forward(self, u: Tensor, delta: Tensor, mode: int) -> tuple[Tensor, Tensor]:
        """``u`` ``[n, d_in]``, ``delta`` ``[n, d_out]`` -> ``(u~ [n, d_in], delta~ [n, d_out])``."""
        if self.side == "concat":
            out = self.net(torch.cat([u, delta], dim=-1), mode)
            return out[:, : self.d_in], out[:, self.d_in :]
        if self.side == "u":
            return self.net(u, mode), delta
        if self.side == "delta":
            return u, self.net(delta, mode)
        return self.net_u(u, mode), self.net_delta(delta, mode)


def edited_weights_hash(model: nn.Module, targets: Sequence[str]) -> str:
    """sha256 over the names, shapes and float32 bytes of the edited weights."""
    h = hashlib.sha256()
    for name in targets:
        w = model.get_submodule(name).weight.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(w.shape)};".encode())
        h.update(w.numpy().tobytes())
    return h.hexdigest()


def edit_factors(
    model: nn.Module, batch: dict[str, Tensor], targets: Sequence[str], *, kind: str | None = None
) -> dict[str, Factors]:
    """Capture ``(u, delta)`` of the edit loss for ``targets``.

    The loss is the SUM over edits of each edit's mean target NLL, so every edit in a batch
    contributes a gradient of the same scale as if it were alone. Padding rows are dropped."""
    kind = kind or model_kind(model)
    mask = batch["attention_mask"] if kind == "causal" else None
    with torch.enable_grad(), capture(model, list(targets), mask=mask) as cap:
        loss = target_nll(model, batch, kind=kind).sum()
        cap.backward(loss)
    return cap.factors


def _shape_key(shape: Sequence[int]) -> str:
    return f"{int(shape[0])}x{int(shape[1])}"


class MendEditor(nn.Module):
    """MEND: one ``ShapeEditor`` per weight shape plus a learned step size per edited layer.

    ``alpha`` ``[n_layers]`` holds the step sizes (in the targets' order); the training loop puts
    it in its own optimizer parameter group."""

    name = "MEND"

    def __init__(self, config: MendConfig) -> None:
        super().__init__()
        self.config = config
        groups: dict[str, list[str]] = {}
        for t in config.targets:
            groups.setdefault(_shape_key(config.shapes[t]), []).append(t)
        self.mode_of = {t: names.index(t) for names in groups.values() for t in names}
        self.shape_of = {t: _shape_key(config.shapes[t]) for t in config.targets}
        self.editors = nn.ModuleDict(
            {
                key: ShapeEditor(int(key.split("x")[0]), int(key.split("x")[1]), len(names), config)
                for key, names in groups.items()
            }
        )
        self.alpha = nn.Parameter(torch.full((len(config.targets),), float(config.alpha_init)))

    @classmethod
    def for_model(
        cls, model: nn.Module, targets: Sequence[str] | None = None, *, base_model: str = "", **settings
    ) -> MendEditor:
        """A fresh (identity) editor for ``model``'s ``targets`` (default: ``default_targets``).
        ``settings`` are further ``MendConfig`` fields (``rank``, ``input_mode``, ``alpha_init``...)."""
        names = list(resolve_targets(model, list(targets) if targets is not None else default_targets(model)))
        shapes = {n: list(layer_shape(model.get_submodule(n))) for n in names}
        config = MendConfig(
            targets=names,
            shapes=shapes,
            kind=model_kind(model),
            model_type=getattr(model.config, "model_type", ""),
            architecture=type(model).__name__,
            base_model=base_model or getattr(model.config, "_name_or_path", "") or "",
            weights_hash=edited_weights_hash(model, names),
            **settings,
        )
        return cls(config)

    def transform(self, factors: dict[str, Factors]) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        """Map captured factors to ``{layer: (u~ [n, d_in], delta~ [n, d_out], alpha [])}``,
        differentiable in the editor's parameters. In training mode the normalisers update."""
        out = {}
        for i, name in enumerate(self.config.targets):
            u, delta = factors[name]
            u_t, d_t = self.editors[self.shape_of[name]](u.float(), delta.float(), self.mode_of[name])
            out[name] = (u_t, d_t, self.alpha[i])
        return out

    def check_fits(self, model: nn.Module) -> None:
        """Raise ``ValueError`` listing the edited layers that ``model`` lacks or whose shape differs;
        warn when the edited weights differ from those the editor was trained on."""
        problems = []
        for name in self.config.targets:
            want = tuple(self.config.shapes[name])
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
                f"editor (base model {self.config.base_model!r}, {self.config.architecture}) does not fit "
                f"{type(model).__name__}: " + "; ".join(problems)
            )
        if (
            self.config.weights_hash
            and edited_weights_hash(model, self.config.targets) != self.config.weights_hash
        ):
            warnings.warn(
                f"the model's edited weights differ from those the editor was trained on "
                f"(base model {self.config.base_model!r}); edits may be less reliable",
                stacklevel=2,
            )

    @torch.no_grad()
    def _delta_from_factors(self, factors: dict[str, Factors], provenance: dict[str, str]) -> EditDelta:
        was_training = self.training
        self.eval()
        try:
            mapped = self.transform(factors)
        finally:
            self.train(was_training)
        layers = {n: LayerDelta(u.detach(), d.detach(), float(a)) for n, (u, d, a) in mapped.items()}
        return EditDelta(layers, provenance)

    def compute_delta(self, model: nn.Module, tokenizer, records: Sequence[EditRecord]) -> EditDelta:
        """One edit (batched when ``len(records) > 1``) for ``records``; the model is unchanged."""
        if not records:
            raise ValueError("compute_delta needs at least one record")
        kind = self.config.kind
        batch = edit_batch(
            model, tokenizer, [r.prompt for r in records], [r.target for r in records], kind=kind
        )
        factors = edit_factors(model, batch, self.config.targets, kind=kind)
        provenance = {
            "editor": self.name,
            "base_model": self.config.base_model,
            "records": json.dumps(
                [{"prompt": r.prompt, "target": r.target, "source": r.source} for r in records]
            ),
        }
        return self._delta_from_factors(factors, provenance)

    def edit(self, model: nn.Module, tokenizer, records: Sequence[EditRecord]) -> WeightSnapshot:
        """``compute_delta`` then ``apply_delta`` in place; returns the touched weights' originals."""
        return apply_delta(model, self.compute_delta(model, tokenizer, records))

    def n_parameters(self) -> int:
        """Trainable parameter count (networks, mode embeddings, step sizes)."""
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``config.json`` and ``editor.safetensors`` (weights, normaliser stats, step sizes)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2, default=str) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path / WEIGHTS_NAME))

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
        known = set(MendConfig.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{cfg_file}: unknown field(s) {unknown}")
        editor = cls(MendConfig(**raw))
        state = load_file(str(weights))
        missing, unexpected = editor.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
        editor.eval()
        if model is not None:
            editor.check_fits(model)
        return editor
