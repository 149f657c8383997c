"""Memory plans: models built on the meta device, traced peaks checked against real edits of the
tiny model table, the bundled configurations of published models, the command and its errors."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from typer.testing import CliRunner

from edit_data import train_tokenizer
from editor_nets import MendConfig, MendEditor
from editor_nets.cli import plan_app
from editor_nets.delta import EditDelta, LayerDelta, write_delta
from editor_nets.plan import MODEL_CONFIGS, TensorPeak, _records, memory_plan, meta_model
from tiny_models import TINY_MODELS, build_tiny

SEQ_LEN, RANK = 12, 16


def _config_dir(tmp_path, name: str):
    model = build_tiny(name)
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_planned_edit_memory_is_within_15_percent_of_a_real_edit(tmp_path, name):
    model = _config_dir(tmp_path, name)
    plan = memory_plan(tmp_path, dtype="fp32", rank=RANK, seq_len=SEQ_LEN)
    editor = MendEditor.for_model(model, MendConfig(rank=RANK))
    assert plan.targets == editor.targets
    assert plan.n_parameters == sum(p.numel() for p in model.parameters())
    assert plan.editor_parameters == sum(p.numel() for p in editor.parameters())
    record = _records(SEQ_LEN, 4, 3, 3, editor.spec.kind)[0]
    with TensorPeak() as real:  # the whole real path: batch, capture, editor, checked apply
        snapshot = editor.edit(model, train_tokenizer(["w"]), [record])
    assert 0.85 <= plan.edit_work_bytes / real.peak <= 1.15, (plan.edit_work_bytes, real.peak)
    # the rollback snapshot is part of both: every edited weight, in the model's dtype
    snapshot_bytes = sum(t.numel() * t.element_size() for t in snapshot.values())
    assert plan.edit_work_bytes > snapshot_bytes
    # a meta-training step holds at least the editor's gradients and Adam's two moments
    assert plan.meta_step_work_bytes > 3 * plan.editor_bytes * 0.9


def test_half_precision_halves_the_weights_and_keeps_the_editor(tmp_path):
    _config_dir(tmp_path, "llama")
    full, half = (memory_plan(tmp_path, dtype=d, rank=RANK, seq_len=SEQ_LEN) for d in ("fp32", "bf16"))
    params = half.n_parameters
    assert full.weights_bytes - half.weights_bytes == params * 2  # 4 -> 2 bytes; buffers stay fp32
    assert half.editor_bytes == full.editor_bytes  # the editor stays fp32
    assert half.edit_total(2) < half.edit_total(1) and half.meta_step_total(8) < half.meta_step_total(1)


# published parameter counts (billions): the Llama-2 paper, the Llama-3 and GPT-J model cards. T5 v1.1
# XXL has 11.14B with its own output matrix (32128 x 4096); transformers 5 always ties it to the input
# embedding (T5Config forces tie_word_embeddings), which leaves 11.00B.
PUBLISHED = {"llama-2-7b": 6.74, "llama-2-13b": 13.02, "llama-3-8b": 8.03, "gpt-j-6b": 6.05, "t5-xxl": 11.00}


def test_bundled_configs_have_their_published_sizes():
    assert set(MODEL_CONFIGS) == set(PUBLISHED)
    for name, billions in PUBLISHED.items():
        model = meta_model(name)
        n = sum(p.numel() for p in model.parameters()) / 1e9
        assert abs(n - billions) / billions < 0.01, (name, n)
        assert all(p.device.type == "meta" and p.dtype == torch.bfloat16 for p in model.parameters())


def test_write_delta_puts_back_the_layers_it_wrote_when_a_later_one_fails():
    layers = {"a": torch.nn.Linear(4, 3), "b": torch.nn.Linear(4, 3)}
    before = {n: m.weight.detach().clone() for n, m in layers.items()}
    good = LayerDelta(torch.ones(1, 4), torch.ones(1, 3), 0.5)
    bad = LayerDelta(torch.ones(1, 5), torch.ones(1, 3), 0.5)  # does not fit layer b
    with pytest.raises(ValueError, match="do not fit"):
        write_delta(layers, EditDelta({"a": good, "b": bad}))
    assert all(torch.equal(layers[n].weight, before[n]) for n in layers)


def test_edit_plan_prints_and_writes_the_table(tmp_path):
    _config_dir(tmp_path / "model", "gpt2")
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(
        plan_app, ["--model", str(tmp_path / "model"), "--rank", "16", "--seq-len", "12", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "meta-train" in result.output and "GPT2LMHeadModel" in result.output
    plan = json.loads(out.read_text())
    assert set(plan["per_gpu"]) == {"1", "2", "4", "8"}
    assert plan["per_gpu"]["8"]["meta_train"] < plan["per_gpu"]["1"]["meta_train"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "llama-9000"], "not a bundled model config"),
        (["--model", "llama-2-7b", "--dtype", "int3"], "dtype must be one of"),
        (["--model", "llama-2-7b", "--seq-len", "3"], "target_len"),
    ],
)
def test_edit_plan_names_bad_input(args, message):
    result = CliRunner().invoke(plan_app, args)
    assert result.exit_code == 2 and message in result.output
