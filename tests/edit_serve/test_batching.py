"""Batched decoding (``edit_serve.batching.DecodeLoop``): requests decoded together give the text
each gives alone, on every language model family of the table; an edit lands between decode steps
and every piece names the version that produced it."""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch

from edit_data import build_world
from edit_serve import SamplingParams, ServeLimits
from edit_serve.batching import DecodeLoop
from edit_serve.generation import generate_steps
from edit_serve.rwlock import ReadWriteLock
from tiny_models import TINY_MODELS, build_tiny, world_tokenizer

LMS = [name for name, spec in TINY_MODELS.items() if spec.kind in ("causal", "seq2seq")]
SAMPLINGS = [
    SamplingParams(max_new_tokens=12, temperature=0.0, seed=0),
    SamplingParams(max_new_tokens=9, temperature=1.0, top_p=0.9, seed=5),
    SamplingParams(max_new_tokens=14, temperature=0.7, seed=11, stop=("the",)),
]


@pytest.fixture(scope="module")
def world():
    return build_world(n_entities=12, seed=0)


def _alone(model, tokenizer, ids, params) -> str:
    return "".join(step.text for step in generate_steps(model, tokenizer, ids, params))


@pytest.mark.parametrize("name", LMS)
def test_requests_decoded_together_give_the_text_each_gives_alone(name, world) -> None:
    tokenizer = world_tokenizer(name, world.corpus)
    model = build_tiny(name, tokenizer=tokenizer)
    prompts = [r.prompt for r in world.records[:6]]
    requests = [
        (tokenizer(p, return_tensors="pt").input_ids, SAMPLINGS[i % 3].validated(ServeLimits()))
        for i, p in enumerate(prompts)
    ]
    expected = [_alone(model, tokenizer, ids, params) for ids, params in requests]
    lock = ReadWriteLock()
    loop = DecodeLoop(model, tokenizer, lock, lambda: 0)
    try:
        streams = [loop.submit(ids, params, restart=False, on_close=lambda: None) for ids, params in requests]
        texts = ["".join(step.text for step, _ in stream) for stream in streams]
        # a late joiner and an early leaver: the batch changes between steps
        late = loop.submit(*requests[0], restart=False, on_close=lambda: None)
        early = loop.submit(*requests[1], restart=False, on_close=lambda: None)
        next(early)
        early.close()
        late_text = "".join(step.text for step, _ in late)
        # a request joining a batch that is mid-generation (its cache rows are merged in)
        long = next(  # a sampled request that runs for a while (random tiny models may say eos at once)
            q
            for seed in range(50)
            if (q := SamplingParams(max_new_tokens=40, temperature=1.0, seed=seed).validated(ServeLimits()))
            and list(generate_steps(model, tokenizer, requests[2][0], q))[-1].num_tokens >= 10
        )
        running = loop.submit(requests[2][0], long, restart=False, on_close=lambda: None)
        first = next(running)
        with lock.write():  # the loop waits between two steps of ``running`` while the joiner arrives
            joiner = loop.submit(*requests[3], restart=False, on_close=lambda: None)
        joined_text = "".join(step.text for step, _ in joiner)
        running_text = first[0].text + "".join(step.text for step, _ in running)
    finally:
        loop.close()
    assert texts == expected
    assert late_text == expected[0]
    assert joined_text == expected[3]
    assert running_text == _alone(model, tokenizer, requests[2][0], long)
    if TINY_MODELS[name].kind == "causal":
        assert loop.batched and loop.largest_batch >= 2  # they really shared forward passes
        assert loop.merged_joins >= 1
    else:
        assert not loop.batched  # encoder-decoder models step one request at a time


class GatedLock(ReadWriteLock):
    """The decode loop's second step waits for ``gate`` before taking the read lock, so a writer
    can be put exactly between the first and second steps."""

    def __init__(self) -> None:
        super().__init__()
        self.reads, self.gate = 0, threading.Event()

    @contextlib.contextmanager
    def read(self):
        self.reads += 1
        if self.reads == 2:
            assert self.gate.wait(60)
        with super().read():
            yield


def test_an_edit_lands_between_steps_and_pieces_name_their_version(world) -> None:
    """A writer gets the lock between two decode steps of running streams (it does not wait for
    them to end); chunks after it name the new version, and a whole reply that was running when the
    version changed is exactly what the new version generates alone."""
    tokenizer = world_tokenizer("gpt2", world.corpus)
    model = build_tiny("gpt2", tokenizer=tokenizer)
    lock, version = GatedLock(), [0]
    params = SamplingParams(max_new_tokens=40, temperature=0.0, seed=0).validated(ServeLimits())
    ids = tokenizer(world.records[0].prompt, return_tensors="pt").input_ids
    loop = DecodeLoop(model, tokenizer, lock, lambda: version[0])
    try:
        stream = loop.submit(ids, params, restart=False, on_close=lambda: None)
        whole = loop.submit(ids, params, restart=True, on_close=lambda: None)
        seen = [next(stream)]
        with lock.write():  # the "edit": change the weights, bump the version
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.5)
            version[0] = 1
        lock.gate.set()
        seen += list(stream)
        reply = list(whole)
    finally:
        loop.close()
    versions = [v for _, v in seen]
    assert versions[0] == 0 and versions[-1] == 1 and versions == sorted(versions)
    assert seen[-1][0].done
    [(last, v)] = reply  # a whole reply is one piece
    assert v == 1 and last.done
    assert last.text == _alone(model, tokenizer, ids, params)


def test_a_failing_forward_fails_its_requests_not_the_loop(world) -> None:
    tokenizer = world_tokenizer("gpt2", world.corpus)
    model = build_tiny("gpt2", tokenizer=tokenizer)
    params = SamplingParams(max_new_tokens=4, temperature=0.0, seed=0).validated(ServeLimits())
    ids = tokenizer(world.records[0].prompt, return_tensors="pt").input_ids
    broken = threading.Event()

    def hook(*_):
        if broken.is_set():
            raise RuntimeError("boom")

    handle = model.transformer.h[0].register_forward_hook(hook)
    loop = DecodeLoop(model, tokenizer, ReadWriteLock(), lambda: 0)
    try:
        broken.set()
        with pytest.raises(RuntimeError, match="boom"):
            list(loop.submit(ids, params, restart=False, on_close=lambda: None))
        broken.clear()
        text = "".join(s.text for s, _ in loop.submit(ids, params, restart=False, on_close=lambda: None))
    finally:
        handle.remove()
        loop.close()
    assert text == _alone(model, tokenizer, ids, params)


def test_a_whole_reply_that_keeps_restarting_is_aborted_and_streams_go_on(world) -> None:
    """A new version at every step (an edit per decode step): a Generate restarts at most
    ``max_restarts`` times, then fails ABORTED; a stream beside it continues to its end, its chunks
    naming ever newer versions."""
    from edit_serve import ServeError

    tokenizer = world_tokenizer("gpt2", world.corpus)
    model = build_tiny("gpt2", tokenizer=tokenizer)
    versions = iter(range(10_000))
    params = SamplingParams(max_new_tokens=20, temperature=1.0, seed=1).validated(ServeLimits())
    ids = tokenizer(world.records[0].prompt, return_tensors="pt").input_ids
    loop = DecodeLoop(model, tokenizer, ReadWriteLock(), lambda: next(versions), max_restarts=2)
    try:
        whole = loop.submit(ids, params, restart=True, on_close=lambda: None)
        stream = loop.submit(ids, params, restart=False, on_close=lambda: None)
        with pytest.raises(ServeError) as aborted:
            list(whole)
        chunks = list(stream)
    finally:
        loop.close()
    assert aborted.value.code == "ABORTED" and "changed 3 times" in aborted.value.message
    seen = [v for _, v in chunks]
    assert chunks[-1][0].done and seen == sorted(seen) and len(set(seen)) == len(seen)
