"""Benchmark: graddecomp.capture versus a full backward pass.

A GPT-2-small-shaped model (12 layers, width 768, random weights), one sequence of 64
tokens, targets the MLP layers (c_fc, c_proj) of the last 3 blocks. Compared:

* ``full``: forward + ``loss.backward()`` filling every parameter's ``.grad``;
* ``capture``: forward + ``cap.backward(loss)`` inside ``graddecomp.capture``.

Each measurement runs in its own process. Peak memory above the weights is the peak
resident set (VmHWM, reset through /proc/self/clear_refs after the model is built)
minus the resident set right after building the model; it is taken on the first
(cold) step, times on the warm steps after it. Medians over processes and steps.

    python bench/graddecomp_capture.py [--procs 3] [--steps 5] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGETS = [f"transformer.h.{i}.mlp.{m}" for i in (9, 10, 11) for m in ("c_fc", "c_proj")]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(mode: str, steps: int, seed: int) -> dict:
    import gc

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from graddecomp import capture

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024)).eval()
    ids = torch.randint(0, 50257, (1, 64))

    def step() -> None:
        if mode == "full":
            model.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids).loss.backward()
        else:
            with capture(model, TARGETS) as cap:
                cap.backward(model(input_ids=ids, labels=ids).loss)

    gc.collect()
    base = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    t0 = time.perf_counter()
    step()
    cold = time.perf_counter() - t0
    peak = _rss_kib("VmHWM")
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "mode": mode,
        "cold_s": cold,
        "times_s": times,
        "peak_above_weights_bytes": (peak - base) * 1024,
        "weights_bytes": weights,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="capture vs full backward on a GPT-2-small-shaped model")
    parser.add_argument("--procs", type=int, default=3, help="processes per mode")
    parser.add_argument("--steps", type=int, default=5, help="timed warm steps per process")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--child", choices=["full", "capture"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, seed=0)))
        return
    from editor_nets.report import machine_info

    try:
        from tqdm import tqdm
    except ImportError:  # graddecomp alone does not depend on tqdm

        def tqdm(x, **_):
            return x

    runs: dict[str, list[dict]] = {"full": [], "capture": []}
    jobs = [m for _ in range(args.procs) for m in ("full", "capture")]  # interleaved
    for mode in tqdm(jobs, desc="processes", unit="proc"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--steps", str(args.steps)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))

    def med_time(mode: str) -> float:
        return statistics.median(t for r in runs[mode] for t in r["times_s"])

    def med_mem(mode: str) -> float:
        return statistics.median(r["peak_above_weights_bytes"] for r in runs[mode])

    result = {
        "machine": {**machine_info(), "torch_threads": runs["full"][0]["threads"], "device": "cpu"},
        "model": "GPT-2-small shape (12 x 768, vocab 50257), random weights, 1 x 64 tokens",
        "targets": TARGETS,
        "full": {"median_s": med_time("full"), "median_peak_above_weights_mib": med_mem("full") / 2**20},
        "capture": {
            "median_s": med_time("capture"),
            "median_peak_above_weights_mib": med_mem("capture") / 2**20,
        },
        "time_ratio": med_time("capture") / med_time("full"),
        "memory_ratio": med_mem("capture") / med_mem("full"),
        "targets_met": {"time_ratio<=0.6": None, "memory_ratio<=0.3": None},
        "runs": runs,
    }
    result["targets_met"] = {
        "time_ratio<=0.6": result["time_ratio"] <= 0.6,
        "memory_ratio<=0.3": result["memory_ratio"] <= 0.3,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "graddecomp_capture.json").write_text(json.dumps(result, indent=2))
    m = result["machine"]
    print(
        f"machine: {m['processor']}, {m['cpus']} cpus, torch {m['torch']} ({m['torch_threads']} threads), {m['device']}"
    )
    for mode in ("full", "capture"):
        r = result[mode]
        print(
            f"{mode:>8}: median {r['median_s'] * 1e3:8.1f} ms   peak above weights {r['median_peak_above_weights_mib']:8.1f} MiB"
        )
    print(f"time ratio capture/full   = {result['time_ratio']:.3f}  (target <= 0.6)")
    print(f"memory ratio capture/full = {result['memory_ratio']:.3f}  (target <= 0.3)")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        axes[0].bar(
            ["full backward", "capture"],
            [result["full"]["median_s"] * 1e3, result["capture"]["median_s"] * 1e3],
        )
        axes[0].set_ylabel("median ms / step")
        axes[1].bar(
            ["full backward", "capture"],
            [
                result["full"]["median_peak_above_weights_mib"],
                result["capture"]["median_peak_above_weights_mib"],
            ],
        )
        axes[1].set_ylabel("peak MiB above weights")
        fig.suptitle(f"GPT-2-small shape, 64 tokens ({m['cpus']} CPUs)")
        fig.tight_layout()
        fig.savefig(args.out / "graddecomp_capture.png", dpi=110)
    except ImportError:
        pass
    print(f"wrote {args.out / 'graddecomp_capture.json'}")


if __name__ == "__main__":
    main()
