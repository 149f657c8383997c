"""EditService as a plain class (no Ray, no gRPC): edits, exact rollback, replay, limits."""

from __future__ import annotations

import threading

import pytest
import torch

from edit_serve import EditItem, SamplingParams, ServeError, WeightStore, weights_digest
from edit_serve.loading import load_served


def _edit(service, prompt, target, rephrases=(), **kwargs):
    return service.edit(EditItem(prompt, target, tuple(rephrases)), **kwargs)


def _state(service) -> tuple[str, int, int, list]:
    """Everything a failed request must leave unchanged."""
    files = sorted(p.name for p in service.journal.directory.iterdir())
    return weights_digest(service.model), service.version, len(service.journal.entries), files


def test_edit_raises_target_logprob_and_is_journaled_before_reply(make_service, tiny_artifacts) -> None:
    s = make_service()
    base = weights_digest(s.model)
    prompt, target = tiny_artifacts.prompts[0]
    r = _edit(s, prompt, target, provenance={"who": "test"})
    assert r.version == 1 and s.version == 1 and not r.replayed
    assert r.target_logprob_after > r.target_logprob_before
    assert weights_digest(s.model) != base
    record = s.journal.directory / "00000001.json"
    assert record.is_file() and (s.journal.directory / "00000001.edit.safetensors").is_file()
    info = s.get_edit(r.edit_id)
    assert (info.status, info.prompt, info.target, info.provenance) == (
        "active",
        prompt,
        target,
        {"who": "test"},
    )
    assert info.applied_at_version == 1
    g = s.generate(prompt, SamplingParams(max_new_tokens=4))
    assert g.version == 1 and g.num_tokens <= 4


def test_rollback_of_a_middle_edit_is_bitwise_a_server_that_never_applied_it(
    make_service, tiny_artifacts, replay_digest
) -> None:
    s = make_service()
    base = weights_digest(s.model)
    ids = [_edit(s, p, t).edit_id for p, t in tiny_artifacts.prompts[:3]]
    r = s.rollback(edit_id=ids[1])
    assert r.rolled_back == [ids[1]] and r.version == 4
    assert [i.edit_id for i in s.list_edits()] == [ids[0], ids[2]]
    assert s.get_edit(ids[1]).status == "rolled_back" and s.get_edit(ids[1]).rolled_back_at
    # a server that applied only edits 0 and 2 (same stored factors, same order)
    assert weights_digest(s.model) == replay_digest(
        tiny_artifacts.model_dir, tiny_artifacts.editor_dir, s.journal.directory, [ids[0], ids[2]]
    )
    r = s.rollback(to_version=0)
    assert sorted(r.rolled_back) == sorted([ids[0], ids[2]]) and r.version == 5
    assert weights_digest(s.model) == base
    assert s.rollback(to_version=0).rolled_back == []  # nothing left: no new version
    assert s.version == 5


def test_restart_replays_the_journal_bitwise(make_service, tiny_artifacts, tmp_path) -> None:
    s = make_service(tmp_path / "j")
    ids = [
        _edit(s, p, t, idempotency_key=f"k{i}").edit_id for i, (p, t) in enumerate(tiny_artifacts.prompts[:3])
    ]
    s.rollback(edit_id=ids[0])
    before = (weights_digest(s.model), s.version, s.list_edits(include_rolled_back=True))
    text = s.generate(tiny_artifacts.prompts[1][0], SamplingParams(max_new_tokens=6)).text
    s.close()
    s2 = make_service(tmp_path / "j")
    assert (weights_digest(s2.model), s2.version, s2.list_edits(include_rolled_back=True)) == before
    assert s2.generate(tiny_artifacts.prompts[1][0], SamplingParams(max_new_tokens=6)).text == text
    again = _edit(s2, *tiny_artifacts.prompts[2], idempotency_key="k2")
    assert again.replayed and again.edit_id == ids[2] and s2.version == before[1]


def test_idempotency_key_applies_once(make_service, tiny_artifacts) -> None:
    s = make_service()
    p, t = tiny_artifacts.prompts[0]
    first = _edit(s, p, t, idempotency_key="retry-1")
    digest = weights_digest(s.model)
    second = _edit(s, p, t, idempotency_key="retry-1")
    assert second.replayed and second.edit_id == first.edit_id and second.version == first.version
    assert second.target_logprob_after == first.target_logprob_after
    assert weights_digest(s.model) == digest and len(s.journal.entries) == 1
    with pytest.raises(ServeError) as err:
        _edit(s, p, "something else", idempotency_key="retry-1")
    assert err.value.code == "FAILED_PRECONDITION" and "retry-1" in err.value.message


def test_norm_bound_and_non_finite_edits_change_nothing(make_service, tiny_artifacts, monkeypatch) -> None:
    s = make_service(max_edit_norm=1e-9)
    p, t = tiny_artifacts.prompts[0]
    state = _state(s)
    with pytest.raises(ServeError) as err:
        _edit(s, p, t)
    assert err.value.code == "FAILED_PRECONDITION" and "exceeds the bound" in err.value.message
    assert _state(s) == state

    s.limits = type(s.limits)()  # default bound
    real = s.editor.compute_delta

    def poisoned(*args, **kwargs):
        delta = real(*args, **kwargs)
        name = next(iter(delta.layers))
        delta.layers[name].u[0, 0] = float("nan")
        return delta

    monkeypatch.setattr(s.editor, "compute_delta", poisoned)
    with pytest.raises(ServeError) as err:
        _edit(s, p, t)
    assert err.value.code == "FAILED_PRECONDITION" and "non-finite" in err.value.message
    assert _state(s) == state


def test_a_failed_journal_write_undoes_the_edit(make_service, tiny_artifacts, monkeypatch) -> None:
    s = make_service()
    _edit(s, *tiny_artifacts.prompts[0])
    state = _state(s)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(s.journal, "append_edit", disk_full)
    with pytest.raises(ServeError) as refused:
        _edit(s, *tiny_artifacts.prompts[1])
    assert refused.value.code == "RESOURCE_EXHAUSTED" and "nothing was changed" in refused.value.message
    assert _state(s) == state and len(s.store.active) == 1


LONG = "word " * 100


@pytest.mark.parametrize(
    ("kwargs", "code", "text"),
    [
        (dict(prompt="", target="x"), "INVALID_ARGUMENT", "prompt is empty"),
        (dict(prompt="   ", target="x"), "INVALID_ARGUMENT", "prompt is empty"),
        (dict(prompt="Who?", target=""), "INVALID_ARGUMENT", "target is empty"),
        (dict(prompt="x" * 5000, target="y"), "INVALID_ARGUMENT", "5000 characters"),
        (dict(prompt="a\x00b", target="y"), "INVALID_ARGUMENT", "NUL"),
        (dict(prompt="Who?", target="y", rephrases=[""]), "INVALID_ARGUMENT", "rephrases[0] is empty"),
        (dict(prompt="Who?", target="y", rephrases=["r"] * 17), "INVALID_ARGUMENT", "17 rephrases"),
        (dict(prompt="Who?", target="y", idempotency_key="k" * 300), "INVALID_ARGUMENT", "idempotency_key"),
        (dict(prompt="Who?", target="y", provenance={"": "x"}), "INVALID_ARGUMENT", "provenance key"),
        (dict(prompt=LONG, target="y"), "RESOURCE_EXHAUSTED", "tokens"),
    ],
)
def test_bad_edit_requests_are_refused_and_change_nothing(make_service, kwargs, code, text) -> None:
    s = make_service(max_prompt_tokens=40)
    state = _state(s)
    with pytest.raises(ServeError) as err:
        _edit(s, **kwargs)
    assert err.value.code == code and text in err.value.message
    assert _state(s) == state


@pytest.mark.parametrize(
    ("prompt", "sampling", "code", "text"),
    [
        ("", {}, "INVALID_ARGUMENT", "prompt is empty"),
        ("Who?", dict(temperature=-1.0), "INVALID_ARGUMENT", "temperature"),
        ("Who?", dict(temperature=float("nan")), "INVALID_ARGUMENT", "temperature"),
        ("Who?", dict(top_p=1.5), "INVALID_ARGUMENT", "top_p"),
        ("Who?", dict(top_p=float("inf")), "INVALID_ARGUMENT", "top_p"),
        ("Who?", dict(stop=("",)), "INVALID_ARGUMENT", "stop[0]"),
        ("Who?", dict(stop=("a",) * 9), "INVALID_ARGUMENT", "9 stop strings"),
        ("Who?", dict(max_new_tokens=10_000), "RESOURCE_EXHAUSTED", "max_new_tokens"),
        ("Who?", dict(max_new_tokens=-1), "INVALID_ARGUMENT", "max_new_tokens"),
        (LONG, {}, "RESOURCE_EXHAUSTED", "prompt is 100 tokens"),
    ],
)
def test_bad_generate_requests(make_service, prompt, sampling, code, text) -> None:
    s = make_service(max_prompt_tokens=40)
    with pytest.raises(ServeError) as err:
        s.generate(prompt, SamplingParams(**sampling))
    assert err.value.code == code and text in err.value.message
    assert s.lock.readers == 0 and s._inflight == 0


def test_rollback_and_lookup_errors(make_service, tiny_artifacts) -> None:
    s = make_service()
    e = _edit(s, *tiny_artifacts.prompts[0]).edit_id
    cases = [
        (lambda: s.rollback(edit_id="nope"), "NOT_FOUND"),
        (lambda: s.get_edit("nope"), "NOT_FOUND"),
        (lambda: s.get_edit(""), "INVALID_ARGUMENT"),
        (lambda: s.rollback(), "INVALID_ARGUMENT"),
        (lambda: s.rollback(to_version=99), "INVALID_ARGUMENT"),
    ]
    for call, code in cases:
        with pytest.raises(ServeError) as err:
            call()
        assert err.value.code == code
    s.rollback(edit_id=e)
    with pytest.raises(ServeError) as err:
        s.rollback(edit_id=e)
    assert err.value.code == "FAILED_PRECONDITION"


def test_generation_seed_stop_and_stream_agree(make_service, tiny_artifacts) -> None:
    s = make_service()
    prompt = tiny_artifacts.prompts[0][0]
    a = s.generate(prompt, SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7))
    b = s.generate(prompt, SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7))
    assert a == b and a.num_tokens > 0
    assert (
        s.generate(prompt, SamplingParams(max_new_tokens=12)).text
        == s.generate(prompt, SamplingParams(max_new_tokens=12)).text
    )
    steps = list(
        s.generate_stream(prompt, SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7))
    )
    assert "".join(step.text for step, _ in steps) == a.text
    assert steps[-1][0].done and not any(step.done for step, _ in steps[:-1])
    words = a.text.split()
    assert len(words) >= 3  # stop at the third word: text ends before it, in both paths
    stop = " " + words[2]
    cut = s.generate(
        prompt, SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7, stop=(stop,))
    )
    assert cut.text == a.text[: a.text.find(stop)]
    streamed = s.generate_stream(
        prompt, SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7, stop=(stop,))
    )
    assert "".join(step.text for step, _ in streamed) == cut.text


def test_concurrency_limit_and_stream_release(make_service, tiny_artifacts) -> None:
    s = make_service(max_concurrent_generations=1)
    prompt = tiny_artifacts.prompts[0][0]
    stream = s.generate_stream(prompt, SamplingParams(max_new_tokens=8))
    next(stream)
    assert s._inflight == 1  # an open stream holds its slot (the read lock only during each step)
    with pytest.raises(ServeError) as err:
        s.generate(prompt)
    assert err.value.code == "RESOURCE_EXHAUSTED"
    stream.close()
    assert s._inflight == 0
    dropped = s.generate_stream(prompt, SamplingParams(max_new_tokens=8))  # never iterated, then dropped
    del dropped
    assert s.generate(prompt, SamplingParams(max_new_tokens=2)).num_tokens <= 2


def test_generate_during_edit_never_sees_a_half_applied_edit(make_service, tiny_artifacts) -> None:
    s = make_service()
    prompt = tiny_artifacts.prompts[0][0]
    expected = {0: s.generate(prompt, SamplingParams(max_new_tokens=8)).text}
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            g = s.generate(prompt, SamplingParams(max_new_tokens=8))
            results.append((g.version, g.text))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for p, t in tiny_artifacts.prompts[:3]:
        _edit(s, p, t)
    stop.set()
    for t in threads:
        t.join()
    # what each version generates, computed with nothing running concurrently
    for version in range(s.version, 0, -1):
        expected[version] = s.generate(prompt, SamplingParams(max_new_tokens=8)).text
        s.rollback(edit_id=s.list_edits()[-1].edit_id)
    assert results, "no generation ran"
    for version, text in results:
        assert text == expected[version], f"version {version} produced a text no consistent state produces"


def test_weight_store_restores_originals_on_failed_check(tiny_artifacts) -> None:
    loaded = load_served(tiny_artifacts.model_dir, tiny_artifacts.editor_dir)
    from edit_data import EditRecord

    delta = loaded.editor.compute_delta(
        loaded.model, loaded.tokenizer, [EditRecord(*tiny_artifacts.prompts[0])]
    )
    store = WeightStore(loaded.model)
    base = weights_digest(loaded.model)
    with pytest.raises(ValueError, match="bad"):
        store.apply("e", delta, check=lambda: "bad")
    assert weights_digest(loaded.model) == base and store.originals == {} and not store.active
    store.apply("e", delta)
    assert all(torch.isfinite(v).all() for v in store.originals.values())
    store.rollback(["e"])
    assert weights_digest(loaded.model) == base


def test_prompt_limit_is_capped_by_the_context_length(make_service) -> None:
    s = make_service()  # default max_prompt_tokens=512; the tiny GPT-2 has 64 positions
    assert s.max_prompt_tokens == 63
    state = _state(s)
    for call in (lambda: s.generate("w " * 70), lambda: _edit(s, "w " * 70, "x")):
        with pytest.raises(ServeError) as err:
            call()
        assert err.value.code == "RESOURCE_EXHAUSTED" and "63" in err.value.message
    assert _state(s) == state
    near = s.generate("w " * 60, SamplingParams(max_new_tokens=20))  # stops at the context length
    assert near.num_tokens <= 4
