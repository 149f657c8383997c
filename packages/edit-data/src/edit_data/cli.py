"""The ``edit-data`` command: ``build``, ``world``, ``inspect``."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Build, generate and inspect model-editing datasets.", no_args_is_help=True, add_completion=False
)


@app.callback()
def _offline() -> None:
    """Build, generate and inspect model-editing datasets (offline: nothing is downloaded)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=1)


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise _fail(f"--fractions: expected three numbers like 0.8,0.1,0.1, got {text!r}") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1) > 1e-6:
        raise _fail(f"--fractions: expected three non-negative numbers summing to 1, got {text!r}")
    return parts  # type: ignore[return-value]


@app.command()
def build(
    format: Annotated[
        str, typer.Argument(help="zsre, counterfact, fever, wikitext, records, auto, or iso3166 (built in)")
    ],
    inputs: Annotated[list[Path] | None, typer.Argument(help="input files (pooled, then split)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("data"),
    locality: Annotated[
        Path | None, typer.Option(help="locality file: NQ JSON ({questions, answers}) or plain text passages")
    ] = None,
    fractions: Annotated[str, typer.Option(help="train,validation,test fractions")] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option(help="seed for splits and locality sampling")] = 0,
    n_locality: Annotated[int, typer.Option(help="locality examples added per record")] = 3,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="skip malformed records and report them")
    ] = False,
    tokenizer: Annotated[
        Path | None, typer.Option(help="wikitext: local tokenizer directory whose tokens count as n_tokens")
    ] = None,
    subdivisions: Annotated[int, typer.Option(help="iso3166: ISO 3166-2 subdivisions to draw")] = 400,
) -> None:
    """Read public editing-dataset files and write subject-disjoint splits (datasets format).

    ``iso3166`` reads no file: it builds real facts about ISO 3166 places from the pycountry
    package (``pip install 'edit-data[iso3166]'``), in the layout of ``edit-data world``."""
    if format == "iso3166":
        _build_iso3166(inputs or [], out, subdivisions, seed, n_locality, _fractions(fractions))
        return
    if not inputs:
        raise _fail(f"FORMAT {format}: give at least one input file")
    from edit_data.errors import RecordError
    from edit_data.formats import FORMATS, read_records
    from edit_data.storage import save_records, split_records

    if format not in FORMATS:
        raise _fail(f"FORMAT: expected one of {', '.join(FORMATS)}, got {format!r}")
    parts = _fractions(fractions)
    tok = None
    if tokenizer is not None:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(tokenizer))
        except (OSError, ValueError) as e:
            raise _fail(f"--tokenizer {tokenizer}: cannot load a tokenizer there ({e})") from None
    records, summaries, formats = [], [], []
    for path in inputs:
        try:
            result = read_records(
                path,
                format,
                locality_path=locality,
                skip_bad=skip_bad,
                tokenizer=tok,
                n_locality=n_locality,
                seed=seed,
                progress=True,
            )
        except (RecordError, FileNotFoundError) as e:
            raise _fail(str(e)) from None
        records += result.records
        formats.append(result.format)
        summaries.append(result.summary())
        for s in result.skipped[:5]:
            typer.echo(f"  skipped {path}:{s.location}: {s.reason}", err=True)
        if len(result.skipped) > 5:
            typer.echo(f"  ... and {len(result.skipped) - 5} more", err=True)
    splits = split_records(records, parts, seed)
    info = {"formats": formats, "inputs": [str(p) for p in inputs], "seed": seed, "fractions": list(parts)}
    info["skipped"] = summaries
    save_records(splits, out, info=info)
    for line in summaries:
        typer.echo(line)
    typer.echo(f"wrote {out}: " + ", ".join(f"{name} {len(recs)}" for name, recs in splits.items()))


def _build_iso3166(inputs, out: Path, subdivisions: int, seed: int, n_locality: int, fractions) -> None:
    from edit_data.iso3166 import build_iso3166
    from edit_data.storage import save_world

    if inputs:
        raise _fail("iso3166 reads no input files (it is built from the pycountry package)")
    try:
        n = max(n_locality, 1)
        w = build_iso3166(subdivisions, seed, n_locality=n, n_neighbourhood=(n + 1) // 2)
    except (ImportError, ValueError) as e:
        raise _fail(str(e)) from None
    save_world(w, out, fractions=fractions, split_seed=seed)
    typer.echo(
        f"wrote {out}: {len(w.facts)} facts, {len(w.corpus)} corpus lines, {len(w.records)} edit records"
    )


@app.command()
def world(
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory")],
    entities: Annotated[int, typer.Option(help="number of entities")] = 120,
    seed: Annotated[int, typer.Option(help="world seed")] = 0,
    relations: Annotated[str | None, typer.Option(help="comma-separated relation names")] = None,
    fractions: Annotated[str, typer.Option(help="train,validation,test fractions")] = "0.8,0.1,0.1",
) -> None:
    """Generate the synthetic world: corpus, facts, claims, edit-record splits and a tokenizer."""
    from tqdm.auto import tqdm

    from edit_data.storage import save_world
    from edit_data.world import RELATIONS, build_world

    names = [r.strip() for r in relations.split(",") if r.strip()] if relations else None
    unknown = [n for n in names or [] if n not in RELATIONS]
    if unknown:
        raise _fail(f"--relations: unknown {unknown}; known: {', '.join(sorted(RELATIONS))}")
    if entities < 1:
        raise _fail(f"--entities: expected a positive number, got {entities}")
    with tqdm(total=2, desc="world", unit="step") as bar:
        w = build_world(n_entities=entities, seed=seed, relations=names)
        bar.update()
        save_world(w, out, fractions=_fractions(fractions), split_seed=seed)
        bar.update()
    n = sum(len(v) for v in w.entities.values())
    typer.echo(
        f"wrote {out}: {n} entities, {len(w.facts)} facts, {len(w.corpus)} corpus lines, "
        f"{len(w.records)} edit records, {len(w.claims)} claims"
    )


@app.command()
def inspect(
    directory: Annotated[Path, typer.Argument(help="a directory written by `build` or `world`")],
    tokenizer: Annotated[
        str | None,
        typer.Option(help="tokenizer directory (default: DIR/tokenizer, else word-level on the prompts)"),
    ] = None,
    n: Annotated[int, typer.Option("-n", help="records shown per split")] = 2,
) -> None:
    """Counts per split, a few records, and token-length statistics of prompts and targets."""
    from edit_data.storage import load_saved, saved_info

    try:
        splits = load_saved(directory)
    except (FileNotFoundError, ValueError) as e:
        raise _fail(str(e)) from None
    tok = _inspect_tokenizer(directory, tokenizer, splits)
    typer.echo(f"{directory}  info: {saved_info(directory)}")
    for name, records in splits.items():
        typer.echo(f"\n== {name}: {len(records)} records, tasks {sorted({r.task for r in records})}")
        if not records:
            continue
        for r in records[:n]:
            typer.echo(f"  [{r.source}] {r.prompt!r} -> {r.target!r} (was {r.original!r})")
            typer.echo(
                f"     {len(r.rephrases)} rephrases, {len(r.locality)} locality, {len(r.hard_locality)} hard locality"
            )
        for label, texts in (
            ("prompt", [r.prompt for r in records]),
            ("target", [r.target for r in records]),
        ):
            lengths = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
            typer.echo(
                f"  {label} tokens: min {min(lengths)}  mean {statistics.mean(lengths):.1f}  "
                f"median {statistics.median(lengths)}  max {max(lengths)}"
            )


def _inspect_tokenizer(directory: Path, name: str | None, splits: dict) -> object:
    from transformers import AutoTokenizer

    from edit_data.tokenizer import train_tokenizer

    if name is not None:
        return AutoTokenizer.from_pretrained(name)
    if (directory / "tokenizer").is_dir():
        return AutoTokenizer.from_pretrained(str(directory / "tokenizer"))
    texts = [t for recs in splits.values() for r in recs for t in (r.prompt, r.target)]
    return train_tokenizer(texts or ["empty"])


if __name__ == "__main__":
    app()
