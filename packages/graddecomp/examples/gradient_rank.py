"""How low-rank is a linear layer's gradient, and how much memory do its factors save?

Runs as is with only torch and einops installed: a small randomly initialised
Transformer encoder (torch's own ``nn.TransformerEncoder``), one batch of sequences with
padding, a regression loss, and ``graddecomp.capture`` on the feed-forward layers.

    python packages/graddecomp/examples/gradient_rank.py            # 6 layers, width 256
    python packages/graddecomp/examples/gradient_rank.py --quick    # tiny, for CI
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from graddecomp import capture, dense_gradient_bytes, factor_bytes, gradient_rank, gradient_singular_values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model (seconds)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    width, layers, seq = (32, 2, 12) if args.quick else (256, 6, 48)

    torch.manual_seed(args.seed)
    layer = nn.TransformerEncoderLayer(
        width, nhead=4, dim_feedforward=4 * width, batch_first=True, dropout=0.0
    )
    model = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False).eval()
    head = nn.Linear(width, 1)

    x = torch.randn(2, seq, width)
    lengths = torch.tensor([seq, seq // 2])
    real = torch.arange(seq)[None, :] < lengths[:, None]  # [batch, seq], True = real token
    y = torch.randn(2, seq)

    with capture(model, "layers.*.linear1", mask=real) as cap:
        h = model(x, src_key_padding_mask=~real)
        loss = ((head(h).squeeze(-1) - y) ** 2 * real).sum() / real.sum()
        cap.backward(loss)

    print(f"{'layer':<20} {'rows':>5} {'rank':>5} {'top-3 singular values':>30} {'factors/dense bytes':>20}")
    for name, f in cap.factors.items():
        s = gradient_singular_values(f)[:3].tolist()
        ratio = factor_bytes(f) / dense_gradient_bytes(cap.modules[name], torch.float32)
        print(
            f"{name:<20} {f.u.shape[0]:>5} {gradient_rank(f):>5} {[round(v, 4) for v in s]!s:>30} {ratio:>20.3f}"
        )
    print(f"(rank is at most the number of real tokens: {int(real.sum())})")


if __name__ == "__main__":
    main()
