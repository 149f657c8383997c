"""Load the served model, its tokenizer and the editor, placed on the replica's devices.

The model comes from ``editor_nets.load_model`` (the one loader: CPU, one GPU, or split over
several GPUs with no CPU or disk offload; Ray sets ``CUDA_VISIBLE_DEVICES`` for the replica).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["UNTRAINED_EDITORS", "LoadedModel", "device_label", "load_served", "write_tiny_artifacts"]

# ``--editor`` names of the editors that need no trained directory (``editor_nets.locate``, ``.grace``)
UNTRAINED_EDITORS = {
    "rome": "ROME", "memit": "MEMIT", "alphaedit": "AlphaEdit", "kn": "KN", "grace": "GRACE", "editcache": "EditCache",
}  # fmt: skip


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    editor: object
    device: str  # "cpu", "cuda:0" or "cuda:0-3"


def device_label(model: nn.Module) -> str:
    """``"cpu"``, ``"cuda:0"`` or ``"cuda:0-3"`` from where the parameters are."""
    devices = sorted({p.device for p in model.parameters()}, key=str)
    cuda = sorted(d.index or 0 for d in devices if d.type == "cuda")
    if not cuda:
        return ",".join(sorted({d.type for d in devices})) or "cpu"
    return f"cuda:{cuda[0]}" if len(cuda) == 1 else f"cuda:{cuda[0]}-{cuda[-1]}"


def load_served(
    model_dir: str | Path, editor_dir: str | Path, *, num_gpus: int = 0, stats_corpus: str | None = None
) -> LoadedModel:
    """A model (causal or seq2seq LM, or sequence classifier) + tokenizer from ``model_dir`` and a
    ``MendEditor`` from ``editor_dir`` (a ``SeracEditor`` when it holds ``serac.json``), or, when
    ``editor_dir`` is a name of :data:`UNTRAINED_EDITORS` (``rome``, ``memit``, ``alphaedit``, ``kn``,
    ``grace``, ``editcache``), that editor built for the
    model: key statistics over ``stats_corpus`` (default ``<model>/../data/corpus.txt`` when there is
    one, else the built-in world's corpus; cached), the fact token found by tracing the training
    edits of ``<model>/../data`` when there are some.

    Raises ``FileNotFoundError`` naming a missing directory, ``ValueError`` when the model does
    not fit on the GPUs or the editor does not fit the model.
    """
    from editor_nets import MendEditor, load_model

    model_dir, editor_dir = Path(model_dir), Path(editor_dir)
    named = UNTRAINED_EDITORS.get(str(editor_dir).lower())
    for what, d in (("model", model_dir), ("editor", editor_dir)):
        if not d.is_dir() and not (what == "editor" and named):
            raise FileNotFoundError(f"{what} directory {d} does not exist")
    model, tokenizer = load_model(model_dir, num_gpus=num_gpus)
    if named:
        return LoadedModel(
            model,
            tokenizer,
            _untrained(named, model, tokenizer, model_dir, stats_corpus),
            device_label(model),
        )
    device = model.get_input_embeddings().weight.device
    if (editor_dir / "serac.json").is_file():
        from editor_nets.serac import SeracEditor

        editor = SeracEditor.from_pretrained(editor_dir)
        for part in editor.parts:
            part.to(device)
        return LoadedModel(model, tokenizer, editor, device_label(model))
    editor = MendEditor.from_pretrained(editor_dir, model=model)
    editor.to(device)
    return LoadedModel(model, tokenizer, editor, device_label(model))


def _untrained(name: str, model: nn.Module, tokenizer, model_dir: Path, stats_corpus: str | None):
    from edit_data import load_saved
    from editor_nets.baselines import EditorSetup, build_editors
    from editor_nets.keystats import read_corpus

    data = model_dir.parent / "data"
    if stats_corpus is None and (data / "corpus.txt").is_file():
        stats_corpus = str(data / "corpus.txt")
    records = load_saved(data).get("train", []) if (data / "edit_data.json").is_file() else []
    setup = EditorSetup(
        model=model, tokenizer=tokenizer, corpus=read_corpus(stats_corpus), train_records=records
    )
    return build_editors([name], setup)[name]


def write_tiny_artifacts(
    root: str | Path,
    *,
    n_entities: int = 24,
    width: int = 32,
    n_positions: int = 64,
    rank: int = 8,
    seed: int = 0,
) -> list[tuple[str, str]]:
    """Write ``root/model`` (a tiny random GPT-2 + word-level tokenizer of the synthetic world) and
    ``root/editor`` (a fresh, identity MendEditor), for tests and benchmarks that need a servable
    pair in seconds. Returns the world's ``(prompt, target)`` edit pairs.

    ``alpha_init=0.1``: an untrained editor is one fine-tuning step of that size, big enough that
    an edit visibly moves the tiny model."""
    import transformers

    from edit_data import build_world, train_tokenizer
    from editor_nets import MendConfig, MendEditor

    root = Path(root)
    world = build_world(n_entities=n_entities, seed=seed)
    tokenizer = train_tokenizer(world.corpus)
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=width,
        n_layer=2,
        n_head=4,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    MendEditor.for_model(model, MendConfig(rank=rank, alpha_init=1e-1)).save_pretrained(root / "editor")
    return [(r.prompt, r.target) for r in world.records]
