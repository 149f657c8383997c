"""Builders: public editing-dataset files -> :class:`EditRecord` lists.

Supported (``docs/FORMATS.md`` describes the field layouts; files are read by ``edit_data.reading``):

========== ===================================== ======================================
format     file                                  records
========== ===================================== ======================================
zsre_mend  JSON lines (MEND release)             QA edit, target = first usable alternative
zsre_rome  JSON array (ROME / EasyEdit release)  QA edit, target = ``alt``, NQ locality
counterfact JSON array (ROME release)            QA edit, paraphrases, neighborhood locality
fever      JSON lines (MEND / KnowledgeEditor)   label flip (task "classification")
wikitext   JSON array or object (MEND release)   last ``n_tokens`` tokens (task "generation")
records    JSON lines of ``EditRecord.to_dict``  as written
========== ===================================== ======================================

``format="zsre"`` takes either zsRE release (decided by the file's shape) and ``"auto"`` detects
the format from the first record's fields. Malformed input raises :class:`RecordError` naming
file, line (JSON lines) or index (JSON array), field, what was expected and what was found;
with ``skip_bad=True`` bad records are skipped and reported instead. Records that are well
formed but unusable for editing (zsRE/FEVER with no alternatives or no rephrasings) are always
skipped and reported.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from edit_data.errors import FieldError, RecordError, SkippedRecord, Unusable
from edit_data.reading import (
    _dedupe,
    _dict,
    _field,
    _gold_answers,
    _int,
    _json_array,
    _json_document,
    _json_lines,
    _opt,
    _read_text,
    _str,
    _str_list,
)
from edit_data.records import EditRecord, LocalityExample

log = logging.getLogger("edit_data")

FORMATS = ("auto", "zsre", "zsre_mend", "zsre_rome", "counterfact", "fever", "wikitext", "records")
CLAIM_LABELS = ("REFUTES", "SUPPORTS")  # class index = CLAIM_LABELS.index(label)
NQ_PREFIX = "nq question: "

_SHAPE = {  # the file layout each format expects
    "zsre_mend": "JSON lines",
    "fever": "JSON lines",
    "records": "JSON lines",
    "zsre_rome": "JSON array",
    "counterfact": "JSON array",
    "wikitext": "JSON array",
}


@dataclass
class LoadResult:
    """What :func:`read_records` built from one file and what it left out."""

    path: str
    format: str
    records: list[EditRecord]
    skipped: list[SkippedRecord] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts, then the skip reasons with their counts."""
        text = f"{self.path}: {len(self.records)} records ({self.format})"
        if self.skipped:
            reasons = Counter(s.reason for s in self.skipped)
            listed = "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common())
            text += f", skipped {len(self.skipped)}: {listed}"
        return text


# ----------------------------------------------------------------------------- converters


def _zsre_mend(obj: dict) -> EditRecord:
    prompt = _str(obj, "input")
    prediction = _str(obj, "prediction", empty_ok=True)
    alternatives = _str_list(obj, "alternatives")
    rephrases = _str_list(obj, "filtered_rephrases")
    answers = _gold_answers(obj)
    if not [a for a in alternatives if a.strip()]:
        raise Unusable("empty 'alternatives'")
    rephrases = _dedupe(rephrases, prompt)
    if not rephrases:
        raise Unusable("no 'filtered_rephrases' other than the input")
    usable = [
        a.strip() for a in alternatives if a.strip() and a.strip() not in (prediction.strip(), *answers)
    ]
    target = usable[0] if usable else next(a.strip() for a in alternatives if a.strip())
    return EditRecord(
        prompt=prompt, target=target, rephrases=rephrases, original=answers[0] if answers else None
    )


def _zsre_rome(obj: dict) -> EditRecord:
    subject = _str(obj, "subject")
    prompt = _str(obj, "src")
    target = _str(obj, "alt").strip()
    rephrase = _str(obj, "rephrase")
    answers = _str_list(obj, "answers")
    loc = _str(obj, "loc")
    loc_ans = _str(obj, "loc_ans", empty_ok=True)
    _opt(obj, "pred", str, "a string")
    _opt(obj, "cond", str, "a string")
    return EditRecord(
        prompt=prompt,
        target=target,
        rephrases=_dedupe([rephrase], prompt),
        locality=[LocalityExample(loc, loc_ans.strip())],
        original=answers[0].strip() if answers else None,
        subject=subject,
    )


def _counterfact(obj: dict) -> EditRecord:
    _int(obj, "case_id")
    rw = _dict(obj, "requested_rewrite")
    template = _str(rw, "prompt", "requested_rewrite.prompt")
    if "{}" not in template:
        raise FieldError("requested_rewrite.prompt", "a template with '{}' where the subject goes", template)
    subject = _str(rw, "subject", "requested_rewrite.subject")
    relation = _str(rw, "relation_id", "requested_rewrite.relation_id")
    new = _str(
        _dict(rw, "target_new", "requested_rewrite.target_new"), "str", "requested_rewrite.target_new.str"
    )
    true = _str(
        _dict(rw, "target_true", "requested_rewrite.target_true"), "str", "requested_rewrite.target_true.str"
    )
    paraphrases = _str_list(obj, "paraphrase_prompts")
    neighborhood = _str_list(obj, "neighborhood_prompts")
    attribute = _str_list(obj, "attribute_prompts", required=False)
    _str_list(obj, "generation_prompts", required=False)
    prompt = template.replace("{}", subject, 1)
    return EditRecord(
        prompt=prompt,
        target=new.strip(),
        rephrases=_dedupe(paraphrases, prompt),
        locality=[LocalityExample(p, true.strip()) for p in neighborhood],
        # subjects that already have the new object: must keep answering it
        hard_locality=[LocalityExample(p, new.strip()) for p in attribute],
        original=true.strip(),
        subject=subject,
        relation=relation,
    )


def _label(value: Any, name: str) -> str:
    if value not in CLAIM_LABELS:
        raise FieldError(name, f"one of {list(CLAIM_LABELS)}", value)
    return value


def _fever(obj: dict) -> EditRecord:
    claim = _str(obj, "input")
    prediction = _label(_field(obj, "prediction", "prediction"), "prediction")
    alternatives = _str_list(obj, "alternatives")
    rephrases = _str_list(obj, "filtered_rephrases")
    answers = _gold_answers(obj)
    if not answers:
        raise FieldError("output", "at least one gold answer", [])
    gold = _label(answers[0], "output[0].answer")
    _opt(obj, "logit", (int, float), "a number")
    if not alternatives:
        raise Unusable("empty 'alternatives'")
    target = _label(alternatives[0], "alternatives[0]")
    if target == prediction:
        raise FieldError("alternatives[0]", f"the flipped label of prediction {prediction!r}", target)
    rephrases = _dedupe(rephrases, claim)
    if not rephrases:
        raise Unusable("no 'filtered_rephrases' other than the input")
    return EditRecord(prompt=claim, target=target, rephrases=rephrases, original=gold, task="classification")


def _records_row(obj: dict) -> EditRecord:
    prompt, target = _str(obj, "prompt"), _str(obj, "target")
    rephrases = _str_list(obj, "rephrases", required=False)
    for key in ("locality", "hard_locality"):
        items = obj.get(key) or []
        if not isinstance(items, list):
            raise FieldError(key, "a list of {prompt, answer} objects", items)
        for i, item in enumerate(items):
            _str(item, "prompt", f"{key}[{i}].prompt")
            _str(item, "answer", f"{key}[{i}].answer", empty_ok=True)
    for key in ("original", "subject", "relation", "source"):
        _opt(obj, key, str, "a string or null")
    task = obj.get("task") or "qa"
    if task not in ("qa", "generation", "classification"):
        raise FieldError("task", "one of ['qa', 'generation', 'classification']", task)
    return EditRecord.from_dict({**obj, "prompt": prompt, "target": target, "rephrases": rephrases})


def _wikitext_rows(obj: dict) -> list[tuple[str, dict]]:
    """Expand one MEND wikitext object into one row per completion."""
    original = _field(obj, "original", "original")
    if not isinstance(original, list):
        raise FieldError("original", "a list of passages", original)
    completions = _str_list(obj, "completions")
    n_tokens = _int(obj, "n_tokens")
    if n_tokens < 1:
        raise FieldError("n_tokens", "a positive integer", n_tokens)
    if len(completions) < len(original):
        raise FieldError(
            "completions", f"one completion per 'original' passage ({len(original)})", len(completions)
        )
    return [
        (f"completions[{j}]", {"completion": completions[j], "n_tokens": n_tokens})
        for j in range(len(original))
    ]


def _wikitext(row: dict, tokenizer: Any, rng: random.Random) -> EditRecord:
    text, n = row["completion"], row["n_tokens"]
    if tokenizer is None:
        pieces = text.split()

        def join(parts: list[Any]) -> str:
            return " ".join(parts)
    else:
        pieces = tokenizer(text, add_special_tokens=False)["input_ids"]

        def join(parts: list[Any]) -> str:
            return tokenizer.decode(parts).strip()

    if len(pieces) < n + 2:
        raise FieldError("completions", f"a text longer than n_tokens + 1 = {n + 1} tokens", text)
    prefix = pieces[:-n]
    prompt, target = join(prefix), join(pieces[-n:])
    rephrase = join(prefix[rng.randint(1, len(prefix) - 1) :])
    return EditRecord(prompt=prompt, target=target, rephrases=[rephrase], task="generation")


_CONVERTERS: dict[str, Callable[[dict], EditRecord]] = {
    "zsre_mend": _zsre_mend,
    "zsre_rome": _zsre_rome,
    "counterfact": _counterfact,
    "fever": _fever,
    "records": _records_row,
}


# ----------------------------------------------------------------------------- detection


def _detect(path: Path, first: Any, where: str) -> str:
    keys = set(first) if isinstance(first, dict) else set()
    if "requested_rewrite" in keys:
        return "counterfact"
    if {"src", "alt"} <= keys:
        return "zsre_rome"
    if "completions" in keys:
        return "wikitext"
    if {"input", "alternatives"} <= keys:
        output = first.get("output")
        gold = (
            output[0].get("answer")
            if isinstance(output, list) and output and isinstance(output[0], dict)
            else None
        )
        return "fever" if first.get("prediction") in CLAIM_LABELS or gold in CLAIM_LABELS else "zsre_mend"
    if {"prompt", "target"} <= keys:
        return "records"
    raise RecordError(
        str(path),
        where,
        None,
        "a record of a known format (zsre, counterfact, fever, wikitext, records)",
        f"keys {sorted(keys)}" if keys else first,
    )


def detect_format(path: str | Path) -> str:
    """The concrete format of ``path`` (``zsre_mend``, ``zsre_rome``, ``counterfact``, ``fever``,
    ``wikitext`` or ``records``), from its layout and its first record's fields."""
    path = Path(path)
    _, fmt = _parse(path, _read_text(path), "auto", skip_bad=False, skipped=[])
    return fmt


def _parse(
    path: Path, text: str, fmt: str, skip_bad: bool, skipped: list[SkippedRecord]
) -> tuple[list[tuple[str, Any]], str]:
    """File -> (location, object) rows and the concrete format."""
    head = text.lstrip()[:1]
    if fmt in ("auto", "zsre"):
        if head == "[":
            rows = _json_array(path, _json_document(path, text))
        elif head == "{":
            try:
                whole = json.loads(text)
            except json.JSONDecodeError:
                whole = None
            if isinstance(whole, dict) and "completions" in whole:
                rows = _json_array(path, whole, allow_object=True)
            else:
                rows = _json_lines(path, text, skip_bad, skipped)
        else:
            raise RecordError(
                str(path), "line 1", None, "JSON (an array, or one object per line)", text.lstrip()[:40]
            )
        if not rows:
            raise RecordError(str(path), "", None, "at least one record, found none")
        if fmt == "auto":
            return rows, _detect(path, rows[0][1], rows[0][0])
        try:
            found = _detect(path, rows[0][1], rows[0][0])
        except RecordError:  # a malformed zsRE record: its converter names the bad field
            found = None
        if found in ("zsre_rome", "zsre_mend"):
            return rows, found
        if found is not None:
            raise RecordError(
                str(path), rows[0][0], None,
                f"a zsRE record (either release); this file looks like {found} (pass format={found!r} or 'auto')",
                f"keys {sorted(rows[0][1])}",
            )  # fmt: skip
        return rows, "zsre_rome" if head == "[" else "zsre_mend"
    if fmt not in _SHAPE:
        raise ValueError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}")
    if _SHAPE[fmt] == "JSON lines":
        rows = _json_lines(path, text, skip_bad, skipped)
    else:
        data = _json_document(path, text)
        rows = _json_array(path, data, allow_object=fmt == "wikitext")
    if not rows:
        raise RecordError(str(path), "", None, "at least one record, found none")
    return rows, fmt


# ----------------------------------------------------------------------------- locality files


def load_locality(path: str | Path) -> list[LocalityExample]:
    """Out-of-scope examples from a file.

    * ``.json``: Natural Questions as MEND ships it, ``{"questions": [...], "answers": [...]}``
      (an answer may be a list: its first item is used), or a list of
      ``{"question"|"prompt", "answer"|"answers"}`` objects; prompts get the ``"nq question: "``
      prefix the zsRE releases use.
    * ``.jsonl``: one such object per line.
    * anything else: plain text (e.g. Wikitext-103 or OpenWebText), one passage per non-empty
      line (``= Heading =`` lines skipped); the first half of the words is the prompt and the rest
      the answer, so the passage can be scored with :func:`edit_data.collate_causal`.
    """
    path = Path(path)
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        out = []
        for line in text.splitlines():
            words = line.split()
            if len(words) < 2 or line.strip().startswith("="):
                continue
            cut = len(words) // 2
            out.append(LocalityExample(" ".join(words[:cut]), " ".join(words[cut:])))
        if not out:
            raise RecordError(str(path), "", None, "at least one passage of two or more words")
        return out
    if suffix == ".json":
        data = _json_document(path, text)
        if isinstance(data, dict):
            try:
                questions, answers = _str_list(data, "questions"), data.get("answers")
                if not isinstance(answers, list) or len(answers) != len(questions):
                    raise FieldError("answers", f"a list as long as 'questions' ({len(questions)})", answers)
            except FieldError as e:
                raise RecordError(str(path), "", e.field, e.expected, e.found) from None
            rows = [
                (f"index {i}", {"question": q, "answer": a})
                for i, (q, a) in enumerate(zip(questions, answers, strict=True))
            ]
        else:
            rows = _json_array(path, data)
    else:
        rows = _json_lines(path, text, skip_bad=False, skipped=[])
    out = []
    for where, obj in rows:
        try:
            prompt_key = "question" if isinstance(obj, dict) and "question" in obj else "prompt"
            prompt = _str(obj, prompt_key)
            answer_key = "answer" if isinstance(obj, dict) and "answer" in obj else "answers"
            answer = _field(obj, answer_key, answer_key)
            if isinstance(answer, list) and answer:
                answer = answer[0]
            if not isinstance(answer, str):
                raise FieldError(answer_key, "a string or a non-empty list of strings", answer)
        except FieldError as e:
            raise RecordError(str(path), where, e.field, e.expected, e.found) from None
        if prompt_key == "question" and not prompt.startswith(NQ_PREFIX):
            prompt = NQ_PREFIX + prompt
        out.append(LocalityExample(prompt, answer.strip()))
    return out


def _attach(
    records: list[EditRecord], pool: list[LocalityExample], k: int, seed: int, *, skip_self: bool
) -> None:
    """Give each record ``k`` examples from ``pool`` (deterministic; with ``skip_self`` the pool is
    aligned with ``records`` and a record never gets its own example)."""
    if not pool or k <= 0:
        return
    rng = random.Random(seed)
    for i, record in enumerate(records):
        choices = [
            j for j in rng.sample(range(len(pool)), min(len(pool), k + 1)) if not (skip_self and j == i)
        ]
        record.locality.extend(pool[j] for j in choices[:k])


# ----------------------------------------------------------------------------- public entry points


def read_records(
    path: str | Path,
    format: str = "auto",
    *,
    locality_path: str | Path | None = None,
    skip_bad: bool = False,
    tokenizer: Any = None,
    n_locality: int = 3,
    seed: int = 0,
    progress: bool | None = None,
) -> LoadResult:
    """Like :func:`load_records` but also returns what was skipped and the detected format.

    ``tokenizer`` (wikitext only) splits the target by model tokens instead of whitespace words.
    ``n_locality`` examples from ``locality_path`` (or, for FEVER, from the other claims) are
    added to each record, chosen deterministically from ``seed``. ``progress=None`` shows a
    progress bar only on a terminal.
    """
    path = Path(path)
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {list(FORMATS)}")
    skipped: list[SkippedRecord] = []
    rows, fmt = _parse(path, _read_text(path), format, skip_bad, skipped)
    pool = load_locality(locality_path) if locality_path is not None else []

    def fail(where: str, e: FieldError) -> None:
        if not skip_bad:
            raise RecordError(str(path), where, e.field, e.expected, e.found) from None
        skipped.append(SkippedRecord(where, f"field {e.field!r}: expected {e.expected}"))

    if fmt == "wikitext":
        expanded: list[tuple[str, Any]] = []
        for where, obj in rows:
            try:
                expanded += [(f"{where} {sub}", row) for sub, row in _wikitext_rows(obj)]
            except FieldError as e:
                fail(where, e)
        rows = expanded

    records: list[EditRecord] = []
    name = path.name
    disable = None if progress is None else not progress  # None: only on a terminal
    for where, obj in tqdm(rows, desc=f"reading {name}", unit="rec", disable=disable):
        try:
            if fmt == "wikitext":
                record = _wikitext(obj, tokenizer, random.Random(f"{seed}:{where}"))
            else:
                record = _CONVERTERS[fmt](obj)
        except FieldError as e:
            fail(where, e)
            continue
        except Unusable as e:
            skipped.append(SkippedRecord(where, f"unusable for editing: {e}"))
            continue
        if not record.source:
            record.source = _source(name, where)
        records.append(record)

    if not records:
        detail = (
            f" ({len(skipped)} skipped: {skipped[0].location}: {skipped[0].reason} ...)" if skipped else ""
        )
        raise RecordError(str(path), "", None, f"at least one usable record{detail}")
    if fmt == "fever":
        _attach(
            records,
            [LocalityExample(r.prompt, r.original or "") for r in records],
            n_locality,
            seed,
            skip_self=True,
        )
    _attach(records, pool, n_locality, seed, skip_self=False)
    if fmt == "zsre_rome":
        _same_subject_hard_locality(records)
    result = LoadResult(str(path), fmt, records, skipped)
    if skipped:
        log.warning(result.summary())
    return result


def _source(name: str, where: str) -> str:
    """Provenance: ``"line 12"`` -> ``"f.jsonl:12"``; ``"index 3 completions[2]"`` -> ``"f.json[3].completions[2]"``."""
    kind, _, rest = where.partition(" ")
    number, _, sub = rest.partition(" ")
    return f"{name}:{number}" if kind == "line" else f"{name}[{number}]" + (f".{sub}" if sub else "")


def _same_subject_hard_locality(records: list[EditRecord], k: int = 2) -> None:
    """zsRE (ROME) has subjects: other questions about the same subject, with their gold answers."""
    by_subject: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if r.subject and r.original:
            by_subject.setdefault(r.subject, []).append(i)
    for i, r in enumerate(records):
        others = [j for j in by_subject.get(r.subject or "", []) if j != i and records[j].prompt != r.prompt]
        r.hard_locality.extend(
            LocalityExample(records[j].prompt, records[j].original or "") for j in others[:k]
        )


def load_records(
    path: str | Path,
    format: str = "auto",
    *,
    locality_path: str | Path | None = None,
    skip_bad: bool = False,
    tokenizer: Any = None,
) -> list[EditRecord]:
    """Read a public editing-dataset file into :class:`EditRecord` s.

    ``format`` is one of ``auto``, ``zsre`` (either release), ``zsre_mend``, ``zsre_rome``,
    ``counterfact``, ``fever``, ``wikitext``, ``records``. Bad input raises :class:`RecordError`
    (file, line or index, field, expected); ``skip_bad=True`` skips bad records instead and logs
    how many and why (use :func:`read_records` to get that report as data).
    """
    return read_records(
        path, format, locality_path=locality_path, skip_bad=skip_bad, tokenizer=tokenizer
    ).records
