"""Real facts shaped like CounterFact, from the ISO 3166 tables that ``pycountry`` ships.

The subjects are real places: ISO 3166-2 subdivisions (their country, the kind of subdivision
they are, the subdivision they belong to) and ISO 3166-1 countries (their official name).
Every relation has question prompts and statement prompts that end where the answer goes
("Canillo is located in the country of"), and statement sentences for the corpus and the
claims. Counterfactual targets are real alternatives (another country, another kind of
subdivision); locality prompts are neighbourhood prompts (other subjects with the same true
object, as in CounterFact) and other facts; hard locality asks the same subject another
relation. The records, claims and corpus come from the same builders as the synthetic world,
so the two datasets have one layout. ``pycountry`` is an optional extra of edit-data.
"""

from __future__ import annotations

import random
from collections import Counter

from edit_data.world import Fact, Relation, World, _claim_records, _claims, _corpus, _records

__all__ = ["ISO_RELATIONS", "build_iso3166"]

ISO_RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in [
        Relation(
            "in_country",
            "subdivision",
            "country",
            (
                "In which country is {s}?",
                "{s} is located in the country of",
                "Which country does {s} belong to?",
                "{s} is an administrative division of",
            ),
            ("{s} is located in {o}.", "{s} is an administrative division of {o}."),
        ),
        Relation(
            "division_type",
            "subdivision",
            "division_type",
            (
                "What kind of administrative division is {s}?",
                "In its country, {s} has the status of a",
                "Which type of subdivision is {s}?",
                "The administrative status of {s} is",
            ),
            ("{s} is a {o}.", "The administrative status of {s} is {o}."),
        ),
        Relation(
            "part_of",
            "subdivision",
            "region",
            (
                "Which larger region is {s} part of?",
                "{s} is a part of the region of",
                "Within which region does {s} lie?",
                "The region that contains {s} is",
            ),
            ("{s} is part of {o}.", "The region that contains {s} is {o}."),
        ),
        Relation(
            "official_name",
            "country",
            "official_name",
            (
                "What is the official name of {s}?",
                "The official name of {s} is",
                "How is {s} officially called?",
                "Officially, {s} is called the",
            ),
            ("The official name of {s} is {o}.", "{s} is officially called the {o}."),
        ),
    ]
}


def _require_pycountry():
    try:
        import pycountry
    except ImportError as err:
        raise ImportError(
            "the iso3166 dataset needs the pycountry package: pip install 'edit-data[iso3166]'"
        ) from err
    return pycountry


def _clean(name: str) -> str:
    """``"Swansea [Abertawe GB-ATA]"`` -> ``"Swansea"``."""
    return name.split(" [", 1)[0].strip()


def build_iso3166(
    n_subdivisions: int = 400,
    seed: int = 0,
    *,
    n_locality: int = 10,
    n_neighbourhood: int = 5,
    n_hard_locality: int = 2,
) -> World:
    """Real facts about ``n_subdivisions`` ISO 3166-2 subdivisions drawn with ``seed`` (and the
    countries they are in), as a :class:`edit_data.World`.

    Subdivisions whose name is not unique are left out, and only countries with at least three
    drawn subdivisions are kept, so every fact has neighbours. Each record gets
    ``n_neighbourhood`` neighbourhood prompts (other subjects, same relation, same true object)
    and ``n_locality - n_neighbourhood`` prompts of other facts. Deterministic per seed."""
    pycountry = _require_pycountry()
    if n_subdivisions < 3:
        raise ValueError(f"n_subdivisions must be at least 3, got {n_subdivisions}")
    subdivisions = sorted(pycountry.subdivisions, key=lambda s: s.code)
    names = Counter(_clean(s.name) for s in subdivisions)
    by_code = {s.code: s for s in subdivisions}
    countries = {c.alpha_2: getattr(c, "common_name", None) or c.name for c in pycountry.countries}
    officials = {c.alpha_2: getattr(c, "official_name", None) for c in pycountry.countries}
    pool = [s for s in subdivisions if names[_clean(s.name)] == 1 and s.country_code in countries]
    rng = random.Random(seed)
    chosen = rng.sample(pool, min(n_subdivisions, len(pool)))
    per_country = Counter(s.country_code for s in chosen)
    chosen = sorted((s for s in chosen if per_country[s.country_code] >= 3), key=lambda s: s.code)
    if not chosen:
        raise ValueError(f"no country has three of the {n_subdivisions} drawn subdivisions; draw more")

    facts: list[Fact] = []
    for s in chosen:
        facts.append(Fact(_clean(s.name), "in_country", countries[s.country_code]))
        facts.append(Fact(_clean(s.name), "division_type", s.type.lower()))
        parent = by_code.get(s.parent_code or "")
        if parent is not None and names[_clean(parent.name)] == 1:
            facts.append(Fact(_clean(s.name), "part_of", _clean(parent.name)))
    for code in sorted({s.country_code for s in chosen}):
        if officials[code] and officials[code] != countries[code]:
            facts.append(Fact(countries[code], "official_name", officials[code]))
    rels = [r for r in ISO_RELATIONS.values() if any(f.relation == r.name for f in facts)]
    entities: dict[str, list[str]] = {}
    for f in facts:
        r = ISO_RELATIONS[f.relation]
        for kind, name in ((r.subject_type, f.subject), (r.object_type, f.object)):
            if name not in entities.setdefault(kind, []):
                entities[kind].append(name)
    corpus = _corpus(rng, rels, facts)
    records = _records(rng, rels, entities, facts, seed, n_locality, n_hard_locality, n_neighbourhood)
    for record in records:
        record.source = record.source.replace("world(", "iso3166(", 1)
    claims = _claims(rng, rels, entities, facts)
    return World(
        seed,
        rels,
        entities,
        facts,
        corpus,
        records,
        claims,
        _claim_records(rng, rels, claims, seed, n_locality),
    )
