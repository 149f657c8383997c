"""``load_model`` on GPU settings, checked on the CPU with CUDA faked: a model that would need CPU
or disk offload, or more GPUs than are visible, is refused with a clear error (edits need
backward through the edited layers and update weights in place)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("transformers")

import transformers

from editor_nets import load_model
from tiny_models import build_tiny


@pytest.fixture
def saved_llama(tmp_path):
    from edit_data import train_tokenizer

    tok = train_tokenizer(["Where was Bob born? Zorba"], add_bos=True)
    build_tiny("llama", tokenizer=tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return tmp_path


@pytest.fixture
def two_fake_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=2**30))


def test_a_split_that_offloads_to_cpu_or_disk_is_refused(saved_llama, two_fake_gpus, monkeypatch):
    asked = {}

    def fake_from_pretrained(path, **kwargs):
        asked.update(kwargs)
        model = build_tiny("llama")
        model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 1, "model.layers.1": "cpu"}
        return model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    with pytest.raises(ValueError, match="does not fit on 2 GPU"):
        load_model(saved_llama, num_gpus=2)
    assert asked["device_map"] == "auto" and set(asked["max_memory"]) == {0, 1}  # no "cpu" key


def test_more_gpus_than_visible_is_refused(saved_llama, two_fake_gpus):
    with pytest.raises(ValueError, match="asked for 4 GPUs but 2 are visible"):
        load_model(saved_llama, num_gpus=4)


def test_no_cuda_at_all_keeps_the_model_on_the_cpu(saved_llama):
    model, _ = load_model(saved_llama, num_gpus=2)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
