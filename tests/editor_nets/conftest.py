"""The tiny causal models of the table taught the built-in world, shared by the editor tests."""

from __future__ import annotations

import pytest
from world_models import Learnt, train_on_answers

from edit_data import build_world
from editor_nets.keystats import Corpus
from editor_nets.scoring import score_targets
from tiny_models import build_tiny, world_tokenizer

CAUSAL = ["gpt2", "llama"]


@pytest.fixture(scope="package", params=CAUSAL)
def learnt(request) -> Learnt:
    world = build_world(n_entities=24, seed=0)
    tokenizer = world_tokenizer(request.param, world.corpus)
    model = train_on_answers(
        build_tiny(request.param, tokenizer=tokenizer), tokenizer, world.records, steps=400
    )
    known = [
        r
        for r in world.records
        if bool(score_targets(model, tokenizer, [r.prompt], [r.original]).exact.all())
    ]
    assert len(known) >= 20, f"the tiny {request.param} learnt only {len(known)} answers"
    return Learnt(model, tokenizer, world, known, Corpus(tuple(world.corpus), "world corpus"))
