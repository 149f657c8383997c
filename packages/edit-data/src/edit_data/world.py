"""A seeded, fictional world: the offline default for pre-training, editing and evaluation.

Entities (people, cities, countries, companies, languages, rivers) get names made of random
syllables, so no real-world knowledge leaks in and a word-level tokenizer gives each name one
token. Every relation has several question templates and statement templates: the corpus
states every fact in every template, so the other templates of an edited fact are real
paraphrases (in-scope rephrasings) of the edit prompt.

Corpus QA lines use exactly the causal-LM edit format ``"<question> <answer>"`` (see
:func:`edit_data.collate_causal`), so a model pre-trained on the corpus answers edit prompts
in the same format.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from edit_data.records import EditRecord, LocalityExample


@dataclass(frozen=True)
class Relation:
    """A relation type: ``subject_type -> object_type`` with its templates (``{s}`` = subject,
    ``{o}`` = object; questions end where the answer goes)."""

    name: str
    subject_type: str
    object_type: str
    questions: tuple[str, ...]
    statements: tuple[str, ...]


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    object: str


@dataclass(frozen=True)
class Claim:
    """A fact-checking example: ``label`` is ``"SUPPORTS"`` or ``"REFUTES"``."""

    text: str
    label: str
    subject: str = ""
    relation: str = ""


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in [
        Relation(
            "born_in",
            "person",
            "city",
            (
                "Where was {s} born?",
                "In which city was {s} born?",
                "What is the birthplace of {s}?",
                "Which city is the hometown of {s}?",
            ),
            ("{s} was born in {o}.", "The birthplace of {s} is {o}."),
        ),
        Relation(
            "works_for",
            "person",
            "company",
            (
                "Who does {s} work for?",
                "Which company employs {s}?",
                "What is the employer of {s}?",
                "For which company does {s} work?",
            ),
            ("{s} works for {o}.", "The employer of {s} is {o}."),
        ),
        Relation(
            "speaks",
            "person",
            "language",
            (
                "What language does {s} speak?",
                "Which language is spoken by {s}?",
                "What is the native language of {s}?",
                "In which language does {s} talk?",
            ),
            ("{s} speaks {o}.", "The native language of {s} is {o}."),
        ),
        Relation(
            "citizen_of",
            "person",
            "country",
            (
                "Which country is {s} a citizen of?",
                "What is the nationality of {s}?",
                "Of which country is {s} a citizen?",
                "Which passport does {s} hold?",
            ),
            ("{s} is a citizen of {o}.", "The nationality of {s} is {o}."),
        ),
        Relation(
            "located_in",
            "city",
            "country",
            (
                "In which country is {s}?",
                "Which country is {s} located in?",
                "Where is the city of {s}?",
                "What country contains the city of {s}?",
            ),
            ("{s} is located in {o}.", "The city of {s} lies in {o}."),
        ),
        Relation(
            "headquartered_in",
            "company",
            "city",
            (
                "Where is {s} headquartered?",
                "In which city is {s} based?",
                "What city hosts the headquarters of {s}?",
                "Where are the offices of {s}?",
            ),
            ("{s} is headquartered in {o}.", "The headquarters of {s} are in {o}."),
        ),
        Relation(
            "capital",
            "country",
            "city",
            (
                "What is the capital of {s}?",
                "Which city is the capital of {s}?",
                "Where is the seat of government of {s}?",
                "The capital city of {s} is which?",
            ),
            ("The capital of {s} is {o}.", "{s} is governed from {o}."),
        ),
        Relation(
            "official_language",
            "country",
            "language",
            (
                "What is the official language of {s}?",
                "Which language is official in {s}?",
                "What language do people speak in {s}?",
                "Which language does the government of {s} use?",
            ),
            ("The official language of {s} is {o}.", "People in {s} speak {o}."),
        ),
        Relation(
            "flows_through",
            "river",
            "country",
            (
                "Which country does the {s} river flow through?",
                "Through which country does the {s} flow?",
                "Where does the {s} river run?",
                "In which country is the {s} river?",
            ),
            ("The {s} river flows through {o}.", "The {s} runs across {o}."),
        ),
        Relation(
            "founded_by",
            "company",
            "person",
            (
                "Who founded {s}?",
                "Who is the founder of {s}?",
                "By whom was {s} founded?",
                "Which person started {s}?",
            ),
            ("{s} was founded by {o}.", "The founder of {s} is {o}."),
        ),
    ]
}

DEFAULT_RELATIONS: tuple[str, ...] = (
    "born_in",
    "works_for",
    "speaks",
    "citizen_of",
    "located_in",
    "headquartered_in",
    "capital",
    "official_language",
)

# Share of the entity budget per type (only the types the chosen relations use are made).
TYPE_WEIGHTS: dict[str, float] = {
    "person": 0.42,
    "city": 0.2,
    "company": 0.14,
    "country": 0.1,
    "language": 0.07,
    "river": 0.07,
}
MIN_PER_TYPE = 3

_ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "kr",
    "st",
    "tr",
    "th",
)
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ia", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "m")
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "person": ("", "o", "in", "a"),
    "city": ("ford", "holm", "burg", "mar"),
    "country": ("ia", "land", "stan", "ria"),
    "company": ("corp", "tech", "works", "ex"),
    "language": ("ish", "ese", "ic", "an"),
    "river": ("a", "el", "ine", "os"),
}


@dataclass
class World:
    """The generated world. ``records`` are counterfactual QA edits, one per fact;
    ``claims`` a true and a false claim per fact (fact-checking view)."""

    seed: int
    relations: list[Relation]
    entities: dict[str, list[str]]
    facts: list[Fact]
    corpus: list[str]
    records: list[EditRecord]
    claims: list[Claim]
    classification_records: list[EditRecord] = field(default_factory=list)
    name: str = "world"  # where the facts come from: "world" (generated) or "iso3166"


def _make_name(rng: random.Random, kind: str) -> str:
    n_syllables = rng.choice((1, 2, 2, 3))
    stem = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n_syllables))
    return (stem + rng.choice(_SUFFIXES[kind])).capitalize()


def _entity_counts(n_entities: int, types: list[str]) -> dict[str, int]:
    total_weight = sum(TYPE_WEIGHTS[t] for t in types)
    counts = {t: max(MIN_PER_TYPE, round(n_entities * TYPE_WEIGHTS[t] / total_weight)) for t in types}
    return counts


def _make_entities(rng: random.Random, counts: dict[str, int], reserved: set[str]) -> dict[str, list[str]]:
    used = set(reserved)
    entities: dict[str, list[str]] = {}
    for kind, count in counts.items():
        names: list[str] = []
        while len(names) < count:
            name = _make_name(rng, kind)
            if name.lower() in used or len(name) < 4:
                continue
            used.add(name.lower())
            names.append(name)
        entities[kind] = names
    return entities


def _template_words(relations: list[Relation]) -> set[str]:
    words: set[str] = set()
    for r in relations:
        for t in r.questions + r.statements:
            for w in t.replace("{s}", " ").replace("{o}", " ").split():
                words.add(w.strip("?.,").lower())
    return words


def _question(template: str, subject: str) -> str:
    return template.format(s=subject)


def _statement(template: str, subject: str, obj: str) -> str:
    return template.format(s=subject, o=obj)


def build_world(
    n_entities: int = 120,
    seed: int = 0,
    relations: list[str] | tuple[str, ...] | None = None,
    *,
    n_locality: int = 3,
    n_hard_locality: int = 2,
) -> World:
    """Generate a fictional world deterministically from ``seed``.

    ``n_entities`` is the total entity budget split over the entity types the chosen
    ``relations`` (names from :data:`RELATIONS`; default :data:`DEFAULT_RELATIONS`) need, with
    at least 3 entities of each type so every fact has a counterfactual target. Each record
    gets ``n_locality`` locality examples (other subjects' facts, true answers) and up to
    ``n_hard_locality`` of each hard kind (same subject / other relation and same relation /
    other subject). The same arguments give byte-identical output.
    """
    names = list(DEFAULT_RELATIONS if relations is None else relations)
    unknown = [n for n in names if n not in RELATIONS]
    if unknown:
        raise ValueError(f"unknown relation(s) {unknown}; known: {sorted(RELATIONS)}")
    if not names:
        raise ValueError("relations must name at least one relation")
    if len(set(names)) != len(names):
        raise ValueError(f"relations has duplicates: {names}")
    if n_entities < 1:
        raise ValueError(f"n_entities must be positive, got {n_entities}")
    rels = [RELATIONS[n] for n in names]
    rng = random.Random(seed)

    types: list[str] = []
    for r in rels:
        for t in (r.subject_type, r.object_type):
            if t not in types:
                types.append(t)
    entities = _make_entities(rng, _entity_counts(n_entities, types), _template_words(rels))

    facts: list[Fact] = []
    for r in rels:
        for subject in entities[r.subject_type]:
            candidates = [o for o in entities[r.object_type] if o != subject]
            facts.append(Fact(subject, r.name, rng.choice(candidates)))

    corpus = _corpus(rng, rels, facts)
    records = _records(rng, rels, entities, facts, seed, n_locality, n_hard_locality)
    claims = _claims(rng, rels, entities, facts)
    claim_records = _claim_records(rng, rels, claims, seed, n_locality)
    return World(seed, rels, entities, facts, corpus, records, claims, claim_records)


def _corpus(rng: random.Random, rels: list[Relation], facts: list[Fact]) -> list[str]:
    by_name = {r.name: r for r in rels}
    lines: list[str] = []
    for f in facts:
        r = by_name[f.relation]
        lines.extend(f"{_question(q, f.subject)} {f.object}" for q in r.questions)
        lines.extend(_statement(s, f.subject, f.object) for s in r.statements)
    rng.shuffle(lines)
    return lines


def _records(
    rng: random.Random,
    rels: list[Relation],
    entities: dict[str, list[str]],
    facts: list[Fact],
    seed: int,
    n_locality: int,
    n_hard: int,
    n_neighbourhood: int = 0,
    name: str = "world",
) -> list[EditRecord]:
    """One counterfactual QA record per fact. Locality: ``n_neighbourhood`` neighbourhood prompts
    (other subjects with the same relation and true object) and other subjects' facts up to
    ``n_locality``; hard locality: same subject / other relation and same relation / other subject."""
    by_name = {r.name: r for r in rels}
    by_subject: dict[str, list[int]] = {}
    by_relation: dict[str, list[int]] = {}
    by_answer: dict[tuple[str, str], list[int]] = {}
    for i, f in enumerate(facts):
        by_subject.setdefault(f.subject, []).append(i)
        by_relation.setdefault(f.relation, []).append(i)
        by_answer.setdefault((f.relation, f.object), []).append(i)

    def ask(i: int) -> LocalityExample:
        f = facts[i]
        return LocalityExample(_question(rng.choice(by_name[f.relation].questions), f.subject), f.object)

    records: list[EditRecord] = []
    for i, f in enumerate(facts):
        r = by_name[f.relation]
        target = rng.choice([o for o in entities[r.object_type] if o not in (f.object, f.subject)])
        order = list(range(len(r.questions)))
        rng.shuffle(order)
        prompts = [_question(r.questions[k], f.subject) for k in order]
        others = [j for j in range(len(facts)) if facts[j].subject != f.subject]
        locality: list[LocalityExample] = []
        if n_neighbourhood:
            neighbours = [j for j in by_answer[(f.relation, f.object)] if facts[j].subject != f.subject]
            picked = set(rng.sample(neighbours, min(n_neighbourhood, n_locality, len(neighbours))))
            locality = [ask(j) for j in sorted(picked)]
            others = [j for j in others if j not in picked]
        locality += [ask(j) for j in rng.sample(others, max(0, min(n_locality - len(locality), len(others))))]
        same_subject = [j for j in by_subject[f.subject] if j != i]
        same_relation = [j for j in by_relation[f.relation] if j != i]
        hard = [ask(j) for j in rng.sample(same_subject, min(n_hard, len(same_subject)))]
        hard += [ask(j) for j in rng.sample(same_relation, min(n_hard, len(same_relation)))]
        records.append(
            EditRecord(
                prompt=prompts[0],
                target=target,
                rephrases=prompts[1:],
                locality=locality,
                hard_locality=hard,
                original=f.object,
                subject=f.subject,
                relation=f.relation,
                task="qa",
                source=f"{name}(seed={seed})#{i}",
            )
        )
    return records


def _claims(
    rng: random.Random, rels: list[Relation], entities: dict[str, list[str]], facts: list[Fact]
) -> list[Claim]:
    by_name = {r.name: r for r in rels}
    claims: list[Claim] = []
    for f in facts:
        r = by_name[f.relation]
        wrong = rng.choice([o for o in entities[r.object_type] if o not in (f.object, f.subject)])
        claims.append(
            Claim(
                _statement(rng.choice(r.statements), f.subject, f.object), "SUPPORTS", f.subject, f.relation
            )
        )
        claims.append(
            Claim(_statement(rng.choice(r.statements), f.subject, wrong), "REFUTES", f.subject, f.relation)
        )
    return claims


def _claim_records(
    rng: random.Random,
    rels: list[Relation],
    claims: list[Claim],
    seed: int,
    n_locality: int,
    name: str = "world",
) -> list[EditRecord]:
    """Label-flip edits on the claims (task ``"classification"``): the rephrases are the same
    claim in the relation's other statement templates; locality: claims about other subjects;
    hard locality: the claims about the same subject's other relations (the near misses), in
    order, without drawing from ``rng`` (so the rest of the world does not change with them)."""
    by_name = {r.name: r for r in rels}
    by_subject: dict[str, list[int]] = {}
    for j, c in enumerate(claims):
        by_subject.setdefault(c.subject, []).append(j)
    records: list[EditRecord] = []
    for i, c in enumerate(claims):
        hard = [
            LocalityExample(claims[j].text, claims[j].label)
            for j in by_subject[c.subject]
            if claims[j].relation != c.relation
        ]
        r = by_name[c.relation]
        obj = _object_of(c.text, r, c.subject)
        rephrases = [_statement(s, c.subject, obj) for s in r.statements]
        rephrases = [t for t in rephrases if t != c.text]
        others = [j for j in range(len(claims)) if claims[j].subject != c.subject]
        locality = [
            LocalityExample(claims[j].text, claims[j].label)
            for j in rng.sample(others, min(n_locality, len(others)))
        ]
        records.append(
            EditRecord(
                prompt=c.text,
                target="REFUTES" if c.label == "SUPPORTS" else "SUPPORTS",
                rephrases=rephrases,
                locality=locality,
                hard_locality=hard,
                original=c.label,
                subject=c.subject,
                relation=c.relation,
                task="classification",
                source=f"{name}(seed={seed})/claims#{i}",
            )
        )
    return records


def _object_of(text: str, relation: Relation, subject: str) -> str:
    for s in relation.statements:
        prefix, _, suffix = s.format(s=subject, o="\0").partition("\0")
        if text.startswith(prefix) and text.endswith(suffix):
            return text[len(prefix) : len(text) - len(suffix)]
    raise ValueError(f"claim {text!r} matches no statement template of {relation.name}")
