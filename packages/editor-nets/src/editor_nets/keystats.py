"""Layer key statistics for the locate-then-edit editors, computed once and cached on disk.

ROME, MEMIT and AlphaEdit weigh their updates by the second moment ``C_0 = E[k k^T]`` ``[d_in, d_in]``
of each edited layer's input over ordinary text (``editor_nets.ridge.preserved_moments`` computes
it). Over a real corpus that is the expensive, one-off part of those editors, so
:func:`key_statistics` caches it under ``cache_dir`` in a safetensors file named by a hash of the
model's weights, the layers, the tokenizer's vocabulary and the texts: the same model on the same
corpus reuses it, and any change of the weights computes it afresh.

Public API::

    read_corpus(spec=None, n_samples=None) -> Corpus         # built-in world, .txt file, datasets
    key_statistics(model, tokenizer, layers, corpus, cache_dir=None) -> KeyStatistics
    default_cache_dir() -> Path                               # $EDITOR_NETS_CACHE or ~/.cache/editor-nets
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from editor_nets.ridge import preserved_moments
from editor_nets.state import weights_digest

__all__ = ["Corpus", "KeyStatistics", "default_cache_dir", "key_statistics", "read_corpus"]


@dataclass(frozen=True)
class Corpus:
    """Texts the statistics are taken over and where they came from (``source``, for the report)."""

    texts: tuple[str, ...]
    source: str


@dataclass
class KeyStatistics:
    """``moments``: ``C_0`` ``[d_in, d_in]`` per layer (float32, CPU); what they were taken over
    (``n_texts``, ``n_tokens``, ``source``), how long computing them took (``seconds``; 0 when
    read from the cache) and whether they were (``cached``)."""

    moments: dict[str, Tensor] = field(repr=False)
    n_texts: int
    n_tokens: int
    source: str
    seconds: float
    cached: bool
    path: str = ""

    def summary(self) -> dict[str, Any]:
        """The JSON-ready description the report carries (everything but the tensors)."""
        return {
            "layers": sorted(self.moments),
            "n_texts": self.n_texts,
            "n_tokens": self.n_tokens,
            "source": self.source,
            "seconds": round(self.seconds, 3),
            "cached": self.cached,
        }


def default_cache_dir() -> Path:
    """``$EDITOR_NETS_CACHE/key-stats``, or ``~/.cache/editor-nets/key-stats``."""
    root = os.environ.get("EDITOR_NETS_CACHE") or Path.home() / ".cache" / "editor-nets"
    return Path(root) / "key-stats"


def read_corpus(
    spec: str | Path | None = None, n_samples: int | None = None, *, column: str = "text"
) -> Corpus:
    """The first ``n_samples`` texts (all when ``None``) of:

    * ``None``: the built-in world's corpus (``edit_data.build_world()``, the main job's default);
    * a text file: one text per non-empty line;
    * a directory written by ``datasets.Dataset.save_to_disk``: its ``column``;
    * ``"hf:NAME[:CONFIG]:SPLIT"``: ``datasets.load_dataset(NAME, CONFIG, split=SPLIT)[column]``.

    Raises ``FileNotFoundError``/``ValueError`` naming the source when it holds no texts."""
    if n_samples is not None and n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    if spec is None:
        from edit_data import build_world

        texts, source = build_world().corpus, "built-in world corpus (edit_data.build_world())"
    elif str(spec).startswith("hf:"):
        import datasets

        parts = str(spec)[3:].split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"corpus {spec!r}: expected 'hf:NAME[:CONFIG]:SPLIT'")
        name, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
        texts, source = _column(datasets.load_dataset(name, config, split=split), column, spec), str(spec)
    else:
        path = Path(spec)
        if path.is_dir():
            import datasets

            texts, source = _column(datasets.load_from_disk(str(path)), column, path), str(path)
        elif path.is_file():
            texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            source = str(path)
        else:
            raise FileNotFoundError(f"corpus {path}: no such file or directory")
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError(f"corpus {source}: holds no texts")
    return Corpus(tuple(texts[:n_samples]), source if n_samples is None else f"{source} (first {n_samples})")


def _column(dataset: Any, column: str, where: Any) -> list[str]:
    if column not in dataset.column_names:
        raise ValueError(f"corpus {where}: no column {column!r}; columns: {dataset.column_names}")
    return list(dataset[column])


def _cache_key(model: nn.Module, tokenizer: Any, layers: Sequence[str], corpus: Corpus) -> str:
    h = hashlib.sha256()
    h.update(weights_digest(model).encode())
    h.update(json.dumps(sorted(layers)).encode())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    for text in corpus.texts:
        h.update(text.encode() + b"\0")
    return h.hexdigest()[:32]


def key_statistics(
    model: nn.Module,
    tokenizer: Any,
    layers: Sequence[str],
    corpus: Corpus,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> KeyStatistics:
    """``C_0`` of ``layers`` over ``corpus`` (a progress bar while computing), read from
    ``cache_dir`` (default :func:`default_cache_dir`) when the same weights, layers, vocabulary and
    texts were seen before, written there otherwise."""
    from edit_data import encode_prompt

    layers = list(layers)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / f"{_cache_key(model, tokenizer, layers, corpus)}.safetensors"
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["statistics"])
            moments = {name: f.get_tensor(name) for name in layers}
        return KeyStatistics(moments, meta["n_texts"], meta["n_tokens"], meta["source"], 0.0, True, str(path))
    start = time.perf_counter()
    moments = preserved_moments(model, tokenizer, list(corpus.texts), layers, progress=progress)
    seconds = time.perf_counter() - start
    n_tokens = sum(len(encode_prompt(tokenizer, t)) for t in corpus.texts)
    stats = KeyStatistics(
        {n: m.detach().cpu().contiguous() for n, m in moments.items()},
        len(corpus.texts), n_tokens, corpus.source, seconds, False, str(path),
    )  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    meta = {"n_texts": stats.n_texts, "n_tokens": n_tokens, "source": corpus.source}
    save_file(stats.moments, str(partial), metadata={"statistics": json.dumps(meta)})
    partial.replace(path)  # atomic: a reader never sees half a file
    return stats
