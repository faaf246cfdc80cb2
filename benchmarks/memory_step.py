"""Benchmark: training-step cost of each M variant against the RMDN, side by side.

    python benchmarks/memory_step.py --z 32 --hidden 128
    python benchmarks/memory_step.py --z 64 --hidden 128

One Adam step (forward, backward, update) on a batch of windows of random latents, for
every variant of ``worldmodels.memory_compare.VARIANTS``. Rounds interleave the variants
so that drift in the machine's load hits them alike; the median round is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from worldmodels.config import doc_summary, load_config
from worldmodels.frmdn_training import build_memory
from worldmodels.memory_compare import VARIANTS, variant_config


def main() -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--z", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    B, L, d, A = args.batch, args.seq, args.z, 3
    z, a = torch.randn(B, L + 1, d), torch.randn(B, L, A)
    reward, done, mask = torch.randn(B, L), torch.zeros(B, L), torch.ones(B, L)
    # no config file: the dataclasses' M (K = 5, flow 2 x 64) at this z and hidden size
    cfg = load_config(None, [], [f"vae.z_dim={d}", f"memory.hidden={args.hidden}"])
    models = {}
    for name in VARIANTS:
        model = build_memory(variant_config(cfg, name), A, False)
        models[name] = (model, torch.optim.Adam(model.parameters()))

    def step(name: str) -> float:
        model, opt = models[name]
        start = time.perf_counter()
        loss = model.loss(z, a, reward, done, mask)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    for name in models:  # warm-up
        step(name)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name in models:
            times[name].append(min(step(name) for _ in range(3)))
    base = statistics.median(times["rmdn_diag"])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; z={d}, hidden={args.hidden}, batch {B}x{L}")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:26s} {t * 1e3:7.1f} ms/step   {t / base:5.2f}x rmdn_diag")


if __name__ == "__main__":
    main()
