"""Command line: ``edit-train``, ``edit-eval`` and ``edit-apply`` (typer).

* ``edit-train`` with no arguments runs the main job on the built-in synthetic world and writes
  ``runs/default/``; ``edit-train --model PATH_OR_HUB_NAME --data DATASET_DIR --out DIR
  [--config FILE]`` meta-trains MEND for a given model on an ``edit_data`` dataset directory.
* ``edit-eval --editor DIR --data DIR [--editors MEND,FT,FT+KL]`` evaluates a trained editor and
  any registered editors beside it (single, batched, sequential).
* ``edit-apply --editor DIR --prompt ... --target ... [--rephrase ...]`` makes one edit and prints
  the model's answers before and after.
* ``edit-trace --model DIR --prompt ... --subject ...`` draws the causal trace of one fact (where
  the model recalls it: the token and block ROME should edit) as PNG + JSON.
* ``edit-plan --model CONFIG_OR_DIR [--dtype bf16] [--targets ...] [--rank ...]`` prints the memory
  that editing, meta-training and serving the model need on 1, 2, 4 and 8 GPUs, without loading
  any weights (``editor_nets.plan``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer

from editor_nets.mend import EDIT_TIME_SETTINGS, with_settings
from editor_nets.models import load_model

__all__ = ["apply_app", "eval_app", "plan_app", "trace_app", "train_app"]

train_app = typer.Typer(
    add_completion=False, help="Meta-train a MEND editor (no arguments: the built-in main job)."
)
eval_app = typer.Typer(add_completion=False, help="Evaluate a trained MEND editor on held-out edits.")
apply_app = typer.Typer(add_completion=False, help="Make one edit and print the answers before and after.")
plan_app = typer.Typer(
    add_completion=False, help="Memory needed to edit, meta-train and serve a model (no weights loaded)."
)


def _factcheck_config():
    from editor_nets.factcheck import factcheck_config

    return factcheck_config()


PRESETS = {"factcheck-minilm": _factcheck_config}


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


@train_app.command()
def train(
    model: str = typer.Option(
        None, help="Model directory or hub name (default: pre-train one on the built-in world)."
    ),
    data: Path = typer.Option(None, help="edit_data dataset directory (train/validation/test splits)."),
    out: Path = typer.Option(None, help="Output directory (default runs/default, or runs/<model name>)."),
    config: Path = typer.Option(None, help="JSON or TOML file overriding JobConfig fields."),
    quick: bool = typer.Option(
        False, "--quick", help="Tiny settings for smoke tests (seconds, not minutes)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue meta-training from OUT/editor/train_state.pt."
    ),
    world: str = typer.Option(
        None, help="Built-in data for the default job: synthetic (the default) or iso3166 (real facts)."
    ),
    preset: str = typer.Option(
        None,
        help="A second built-in job: factcheck-minilm (MEND on all-MiniLM-L6-v2 fact-checking real claims).",
    ),
) -> None:
    """Pre-train (default job only), meta-train MEND, evaluate MEND/FT/FT+KL, write the report."""
    from editor_nets.pipeline import JobConfig, load_job_config, quick_config, run_default_job, run_job

    if preset is not None:
        if preset not in PRESETS:
            raise _fail(f"--preset must be one of {sorted(PRESETS)}, got {preset!r}")
        if model is not None or data is not None or world is not None:
            raise _fail("--preset is a built-in job; it does not go with --model, --data or --world")
    try:
        base = PRESETS[preset]() if preset else JobConfig()
        job = load_job_config(config, quick_config(base) if quick else base)
        if world is not None:
            job = dataclasses.replace(job, world=dataclasses.replace(job.world, name=world))
    except (ValueError, FileNotFoundError) as err:
        raise _fail(str(err)) from None
    if preset is not None:
        from editor_nets.pipeline import run_factcheck_job

        _fail_if_editors_failed(run_factcheck_job(out or Path("runs") / preset, job, resume=resume))
        return
    if model is None and data is None:
        default_out = Path("runs/default") if job.world.name == "synthetic" else Path("runs") / job.world.name
        _fail_if_editors_failed(run_default_job(out or default_out, job, resume=resume))
        return
    if model is None or data is None:
        raise _fail("--model and --data go together (or pass neither for the built-in main job)")
    if world is not None:
        raise _fail("--world picks the built-in data; it does not go with --model/--data")
    from edit_data import load_saved

    try:
        splits = load_saved(data)
    except (FileNotFoundError, ValueError) as err:
        raise _fail(f"{data}: {err}") from None
    try:
        net, tokenizer = load_model(model)
    except (OSError, ValueError) as err:
        raise _fail(f"cannot load model {model!r}: {err}") from None
    out = out or Path("runs") / Path(model).name
    report = run_job(
        net, tokenizer, splits, out, job, base_model=model, resume=resume, corpus=_stats_corpus(data, None)
    )
    typer.echo(
        f"editor: {out / 'editor'}\nreport: {out / 'report.json'}, {out / 'report.png'}\n"
        f"metrics: {out / 'metrics.jsonl'}"
    )
    _fail_if_editors_failed(report)


def _fail_if_editors_failed(report: dict) -> None:
    """Exit 1 after a job whose report names failed editors (the others' figures are written)."""
    failed = report.get("failed_editors") or {}
    if failed:
        typer.secho(
            f"error: {len(failed)} editor(s) failed: {', '.join(failed)}; the report holds the others, "
            "and each failure's traceback is in report.json's failed_editors",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(code=1)


def _editor_and_model(editor: Path, model: str | None):
    from editor_nets.mend import MendEditor

    if not (editor / "config.json").is_file():
        raise _fail(f"{editor}: not an editor checkpoint (no config.json)")
    cfg = json.loads((editor / "config.json").read_text())
    name = model or cfg.get("model", {}).get("base_model")
    if not name:
        raise _fail(f"{editor}/config.json records no base model; pass --model")
    try:
        net, tokenizer = load_model(name)
    except (OSError, ValueError) as err:
        raise _fail(f"cannot load model {name!r}: {err}") from None
    try:
        mend = MendEditor.from_pretrained(editor, model=net)
    except ValueError as err:
        raise _fail(str(err)) from None
    return mend, net, tokenizer


def _stats_corpus(data: Path | None, corpus: str | None, n_samples: int | None = None):
    """The key statistics' corpus: ``corpus`` (a text file, a saved ``datasets`` directory or
    ``hf:NAME[:CONFIG]:SPLIT``), else the dataset's ``corpus.txt``, else the built-in world's."""
    from editor_nets.keystats import read_corpus

    if corpus is None and data is not None and (data / "corpus.txt").is_file():
        corpus = str(data / "corpus.txt")
    try:
        return read_corpus(corpus, n_samples)
    except (OSError, ValueError) as err:
        raise _fail(str(err)) from None


def _counts(value: str | None, option: str) -> tuple[int, ...]:
    """``"1,10,100"`` -> ``(1, 10, 100)``; anything but positive integers fails naming the option."""
    if not value:
        return ()
    try:
        counts = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise _fail(f"{option} takes positive integers separated by commas, got {value!r}")
    return counts


@eval_app.command()
def evaluate(
    editor: Path = typer.Option(
        None,
        help="Trained editor directory (config.json + editor.safetensors); not needed for "
        "editors without training (FT, FT+KL, Ridge, ROME, MEMIT, AlphaEdit, KN, GRACE, EditCache) when --model is given.",
    ),
    data: Path = typer.Option(..., help="edit_data dataset directory."),
    model: str = typer.Option(None, help="Model (default: the base model recorded in the editor)."),
    split: str = typer.Option("test", help="Which split to evaluate."),
    editors: str = typer.Option(
        None,
        help="Comma-separated registered editors, e.g. MEND,FT,FT+KL (default: the given editor's name).",
    ),
    modes: str = typer.Option("single,batched,sequential", help="Comma-separated evaluation modes."),
    n_sequential: int = typer.Option(10, help="Edits per sequential run."),
    batch_size: int = typer.Option(10, help="Edits per batched update."),
    lifelong: str = typer.Option(
        None, help="Lifelong curve: after how many edits in a row to score, e.g. 1,10,100."
    ),
    lifelong_batches: str = typer.Option(
        None, help="Lifelong curve: batch sizes of one-call edits, e.g. 10,100."
    ),
    lifelong_orders: int = typer.Option(
        1,
        min=1,
        help="Lifelong curve: orders of the edits to measure it in (the split's, then shuffles); report.json gets their mean.",
    ),
    out: Path = typer.Option(None, help="Write report.json/report.png here."),
    corpus: str = typer.Option(
        None,
        help="Key statistics corpus of ROME/MEMIT/AlphaEdit: a text file, a saved datasets directory or "
        "hf:NAME[:CONFIG]:SPLIT (default: the dataset's corpus.txt, else the built-in world's).",
    ),
    stats_samples: int = typer.Option(
        None, help="Texts of the corpus the key statistics use (default: all)."
    ),
    settings: list[str] = typer.Option(
        [],
        "--set",
        help="An edit-time setting of the trained editor, NAME=VALUE (repeatable), e.g. neighbour_memory=0; "
        "names: " + ", ".join(EDIT_TIME_SETTINGS) + ".",
    ),
) -> None:
    """Evaluate a trained editor and the other named editors: ES, drawdown, latency in the chosen
    modes, and with ``--lifelong`` / ``--lifelong-batches`` the lifelong curves. ``--set`` changes
    how the trained editor edits (not its networks), to measure a setting without retraining."""
    from edit_data import load_saved
    from editor_nets.baselines import EditorSetup, build_editors
    from editor_nets.evaluate import evaluate_editors
    from editor_nets.report import results_table, write_report

    if editor is None and model is None:
        raise _fail("give --editor (a trained editor) or --model (for editors without training)")
    if settings and editor is None:
        raise _fail("--set changes a trained editor's edit-time settings; give --editor")
    if editor is not None:
        mend, net, tokenizer = _editor_and_model(editor, model)
        try:
            mend.config = with_settings(mend.config, settings)
        except ValueError as err:
            raise _fail(str(err)) from None
    else:
        mend = None
        try:
            net, tokenizer = load_model(model)
        except (OSError, ValueError) as err:
            raise _fail(f"cannot load model {model!r}: {err}") from None
        if not editors:
            raise _fail("without --editor, name the editors to evaluate with --editors (e.g. ROME,MEMIT,FT)")
    try:
        splits = load_saved(data)
    except (FileNotFoundError, ValueError) as err:
        raise _fail(f"{data}: {err}") from None
    if not splits.get(split):
        raise _fail(f"{data} has no records in split {split!r} (splits: {sorted(splits)})")
    counts = {name: _counts(value, name) for name, value in (("--lifelong", lifelong), ("--lifelong-batches", lifelong_batches))}  # fmt: skip
    setup = EditorSetup(
        targets=mend.targets if mend is not None else None,
        train_records=splits.get("train", []),
        trained={mend.name: mend} if mend is not None else {},  # "MEND", or "LifelongMEND" (ridge)
        model=net,
        tokenizer=tokenizer,
        corpus=_stats_corpus(data, corpus, stats_samples),
    )
    try:
        chosen = build_editors([e.strip() for e in (editors or mend.name).split(",") if e.strip()], setup)
        results = evaluate_editors(
            net,
            tokenizer,
            chosen,
            splits[split],
            modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
            n_sequential=n_sequential,
            batch_size=batch_size,
            lifelong_checkpoints=counts["--lifelong"],
            lifelong_batches=counts["--lifelong-batches"],
            lifelong_orders=lifelong_orders,
        )
    except (KeyError, ValueError) as err:
        raise _fail(str(err).strip("'\"")) from None
    typer.echo(results_table(results))
    if out is not None:
        title = f"{editor or model} on {data}:{split}" + "".join(f" --set {s}" for s in settings)
        paths = write_report(results, out, title=title)
        typer.echo(f"report: {paths['json']}, {paths['png']}")


@apply_app.command()
def apply(
    editor: Path = typer.Option(..., help="Editor checkpoint directory."),
    prompt: str = typer.Option(..., help="The edit prompt, e.g. 'Where was Zora born?'."),
    target: str = typer.Option(..., help="The new answer."),
    rephrase: list[str] = typer.Option([], help="An in-scope rephrasing to check (repeatable)."),
    model: str = typer.Option(None, help="Model (default: the base model recorded in the editor)."),
    max_new_tokens: int = typer.Option(0, help="Answer length in tokens (default: the target's length)."),
    save_delta: Path = typer.Option(None, help="Also write the edit (EditDelta) to this safetensors file."),
    save_model: Path = typer.Option(None, help="Also save the edited model (and tokenizer) here."),
) -> None:
    """One edit from the command line: prints the answers before and after for the prompt and rephrasings."""
    from edit_data import EditRecord
    from editor_nets.delta import apply_delta
    from editor_nets.models import generate_answer

    mend, net, tokenizer = _editor_and_model(editor, model)
    if not prompt.strip() or not target.strip():
        raise _fail("--prompt and --target must not be empty")
    n = max_new_tokens or max(1, len(tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"]))
    prompts = [prompt, *rephrase]
    before = [generate_answer(net, tokenizer, p, max_new_tokens=n) for p in prompts]
    record = EditRecord(prompt=prompt, target=target, rephrases=list(rephrase), source="edit-apply")
    delta = mend.compute_delta(net, tokenizer, [record])
    apply_delta(net, delta)
    after = [generate_answer(net, tokenizer, p, max_new_tokens=n) for p in prompts]
    typer.echo(f"edit: {prompt!r} -> {target!r}  (update norm {delta.norm():.4g})")
    for i, (p, b, a) in enumerate(zip(prompts, before, after, strict=True)):
        label = "prompt   " if i == 0 else "rephrase "
        typer.echo(f"{label} {p}\n    before: {b}\n    after:  {a}")
    if save_delta is not None:
        delta.save(save_delta)
        typer.echo(f"edit written to {save_delta}")
    if save_model is not None:
        net.save_pretrained(save_model)
        tokenizer.save_pretrained(save_model)
        typer.echo(f"edited model written to {save_model}")


@plan_app.command()
def plan(
    model: str = typer.Option(
        ...,
        help="A bundled config (llama-2-7b, llama-2-13b, llama-3-8b, gpt-j-6b, t5-xxl), a config.json or a model directory.",
    ),
    dtype: str = typer.Option("bf16", help="Weights' dtype: fp32, bf16 or fp16."),
    targets: str = typer.Option(
        None, help="Comma-separated edited layers or globs (default: the MLPs of the last blocks)."
    ),
    rank: int = typer.Option(1920, help="Editor rank (the paper's 1920)."),
    seq_len: int = typer.Option(32, help="Tokens per prompt."),
    json_out: Path = typer.Option(None, "--json", help="Also write the plan as JSON here."),
) -> None:
    """Build the model on the meta device and trace one edit, one meta-training step and one
    generation's forward; print the memory per GPU for 1, 2, 4 and 8 GPUs."""
    from editor_nets.plan import format_plan, memory_plan

    try:
        result = memory_plan(
            model, dtype=dtype, targets=targets.split(",") if targets else None, rank=rank, seq_len=seq_len
        )
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise _fail(str(err)) from err
    typer.echo(format_plan(result))
    if json_out is not None:
        json_out.write_text(json.dumps(result.to_dict(), indent=2))


trace_app = typer.Typer(
    add_completion=False, help="Causal tracing: where a causal LM recalls one fact (heat maps as PNG)."
)


@trace_app.command()
def trace(
    model: str = typer.Option(..., help="Causal LM directory or hub name."),
    prompt: str = typer.Option(..., help="The fact's prompt, e.g. 'Where was Zarkrousroulo born?'."),
    subject: str = typer.Option(..., help="The subject inside the prompt, whose embeddings are corrupted."),
    answer: str = typer.Option(None, help="The answer to trace (default: the model's own next token)."),
    out: Path = typer.Option(Path("trace.png"), help="PNG to write (the JSON goes beside it)."),
    n_noise: int = typer.Option(10, help="Noise draws averaged over."),
    noise: float = typer.Option(3.0, help="Noise scale in standard deviations of the embedding matrix."),
) -> None:
    """Draw the indirect effect of every (token, block) on the answer, restoring the residual
    stream and the MLP output in turn (Meng et al., 2022)."""
    from editor_nets.trace import SITES, causal_trace, draw_trace

    try:
        net, tokenizer = load_model(model)
        traces = [
            causal_trace(net, tokenizer, prompt, subject, answer, site=site, n_noise=n_noise, noise=noise)
            for site in SITES
        ]
    except (OSError, ValueError) as err:
        raise _fail(str(err)) from None
    png = draw_trace(traces, out)
    out.with_suffix(".json").write_text(json.dumps([t.to_dict() for t in traces], indent=2) + "\n")
    best = traces[1].effects.argmax()
    token, block = divmod(int(best), traces[1].effects.shape[1])
    typer.echo(
        f"p({traces[0].answer!r}) clean {traces[0].p_clean:.3f}, subject corrupted {traces[0].p_corrupted:.3f}; "
        f"strongest MLP site: token {token} ({traces[1].tokens[token]!r}), block {block}\n"
        f"wrote {png} and {out.with_suffix('.json')}"
    )
