"""The sidecar on GPUs with a 1B+ Llama-architecture model (random weights): Edit, Generate,
Rollback and a restart that replays the journal, over gRPC, with ``load_served(num_gpus=N)``.

The model (24 blocks, width 2048, MLP 5632, grouped-query attention with 4 key/value heads: the
TinyLlama shape, 1.0B parameters with the synthetic world's vocabulary; bf16) is written with a
word-level tokenizer and a fresh MEND editor on the MLPs of its last 3 blocks, then loaded as
``edit-serve --num-gpus N`` loads it. The front is served in-process (``edit_serve.backend.serving``,
the same ``EditService`` and gRPC front the Ray replica runs), so the check also runs where Ray
is not installed. Checked: the edit raises the target's log-probability, Generate names the new
version, a rollback gives back the base weights bitwise, and a restart replays the journal to
the same digest. Measured: edit, generate and rollback latency, load and replay time, and the
peak CUDA memory.

Run: ``python bench/gpu_sidecar.py [--num-gpus 1]`` (part of ``bench/gpu_check.sh``); ``--quick``
uses a 2-block, 64-wide Llama (a smoke run, also on the CPU). Writes
``bench/results/gpu_sidecar.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_memory import RESULTS, random_model

LLAMA_1B = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 2048,
    "intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
}  # fmt: skip
QUICK = {**LLAMA_1B, "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2}  # fmt: skip


def write_artifacts(root: Path, shape: dict) -> list[tuple[str, str]]:
    """``root/model`` (random bf16 Llama + tokenizer) and ``root/editor``; the world's edit pairs."""
    from edit_data import build_world, train_tokenizer
    from editor_nets import MendConfig, MendEditor

    world = build_world(n_entities=24, seed=0)
    tok = train_tokenizer(world.corpus, add_bos=True)
    config = {**shape, "vocab_size": len(tok), "bos_token_id": tok.bos_token_id,
              "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}  # fmt: skip
    (root / "config.json").write_text(json.dumps(config))
    model = random_model(root / "config.json", torch.bfloat16)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    MendEditor.for_model(model, MendConfig(rank=256, alpha_init=1e-1)).save_pretrained(root / "editor")
    return [(r.prompt, r.target) for r in world.records]


def check(root: Path, pairs: list[tuple[str, str]], num_gpus: int) -> dict:
    from edit_serve import EditClient, EditJournal, EditService, SamplingParams
    from edit_serve.backend import serving
    from edit_serve.loading import load_served

    def start() -> tuple[EditService, float]:
        t0 = time.perf_counter()
        loaded = load_served(root / "model", root / "editor", num_gpus=num_gpus)
        service = EditService(
            loaded.model, loaded.tokenizer, loaded.editor, EditJournal(root / "journal"), device=loaded.device
        )
        return service, time.perf_counter() - t0

    (p1, t1), (p2, t2) = pairs[:2]
    greedy = SamplingParams(max_new_tokens=8)
    out: dict = {}
    service, out["load_seconds"] = start()
    out["device"], out["n_parameters"] = service.device, sum(p.numel() for p in service.model.parameters())
    try:
        with serving(service) as port, EditClient(f"127.0.0.1:{port}") as c:
            digest0 = c.health(weights_digest=True).weights_sha256
            t0 = time.perf_counter()
            before = c.generate(p1, greedy)
            out["generate_8_tokens_ms"] = (time.perf_counter() - t0) * 1000
            edit = c.edit(p1, t1)
            out["edit_ms"] = edit.latency_ms
            out["edit_logprob"] = [edit.target_logprob_before, edit.target_logprob_after]
            after = c.generate(p1, greedy)
            t0 = time.perf_counter()
            c.rollback(edit_id=edit.edit_id)
            out["rollback_ms"] = (time.perf_counter() - t0) * 1000
            out["checks"] = {
                "edit_raises_target_logprob": edit.target_logprob_after > edit.target_logprob_before,
                "generate_names_the_new_version": after.version == edit.version,
                "rollback_restores_base_bitwise": c.health(weights_digest=True).weights_sha256 == digest0,
                "text_after_rollback_as_before": c.generate(p1, greedy).text == before.text,
            }
            c.edit(p2, t2)  # active across the restart
            digest_before_restart = c.health(weights_digest=True).weights_sha256
    finally:
        service.close()
    del service
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    service, out["restart_seconds"] = start()  # replays the journal: one active edit
    try:
        out["checks"]["restart_replays_to_the_same_digest"] = (
            service.health(with_digest=True).weights_sha256 == digest_before_restart
        )
    finally:
        service.close()
    if torch.cuda.is_available():
        out["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def main(argv: list[str] | None = None) -> dict:
    from editor_nets.report import machine_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-gpus", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a 2-block, 64-wide Llama (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_sidecar.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        pairs = write_artifacts(root, QUICK if args.quick else LLAMA_1B)
        print(f"[bench] model and editor written in {time.perf_counter() - t0:.0f}s", flush=True)
        result = {"machine": machine_info(), "num_gpus": args.num_gpus, **check(root, pairs, args.num_gpus)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for key, value in result.items():
        if key != "machine":
            print(f"[bench] {key}: {value}")
    print(f"[bench] wrote {args.out}")
    if not all(result["checks"].values()):
        raise SystemExit(f"failed checks: {[k for k, ok in result['checks'].items() if not ok]}")
    return result


if __name__ == "__main__":
    main()
