"""Numerics check: FRMDN training on a run's real latents, several seeds and variants,
counting every NaN/Inf in the loss, the gradient norm and the weights.

    python tools/frmdn_numerics.py --config doom_takecover --preset dream name=dream_frmdn
    python tools/frmdn_numerics.py --config carracing --preset quick --steps 300 --seeds 5

Each (variant, seed) trains a fresh M for ``--steps`` Adam steps with the run's memory
settings (windows, batch, lr, clip) and the variant's precision and flow. Nothing is
skipped: a non-finite value is counted and the step is not applied, so one bad step
cannot hide the next. Prints a table and exits 1 if anything was non-finite.
"""

from __future__ import annotations

import copy
import math
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from worldmodels.config import command_parser, load_config
from worldmodels.datasets import SequenceDataset
from worldmodels.errors import run_cli
from worldmodels.frmdn_training import _batch_losses, action_info, build_memory, latent_split
from worldmodels.run_dir import RunDir

VARIANTS = {
    "rmdn_diag": {"precision": "diag", "flow": "none", "flow_conditional": False},
    "frmdn_square_maf_cond": {"precision": "square", "flow": "maf", "flow_conditional": True},
    "frmdn_square_coupling_cond": {"precision": "square", "flow": "coupling",
                                   "flow_conditional": True},
    "frmdn_overcomplete_maf": {"precision": "overcomplete", "flow": "maf",
                               "flow_conditional": False},
}


def run(cfg, variant: dict, seed: int, steps: int) -> dict:
    cfg = copy.deepcopy(cfg)
    for k, v in variant.items():
        setattr(cfg.memory, k, v)
    m = cfg.memory
    train, _, _ = latent_split(cfg, RunDir.for_config(cfg))
    action_dim, discrete = action_info(train[0])
    torch.manual_seed(seed)
    model = build_memory(cfg, action_dim, discrete)
    opt = torch.optim.Adam(model.parameters(), lr=m.lr)
    gen = torch.Generator().manual_seed(seed)
    bad_loss = bad_grad = done = 0
    nll = float("nan")
    worst = 0.0
    while done < steps:
        data = SequenceDataset(train, m.seq_len, m.batch_size, m.shuffle_buffer,
                               seed=seed + done, z_dim=cfg.vae.z_dim)
        for batch in data:
            losses, _ = _batch_losses(model, batch, cfg, torch.device("cpu"), gen)
            opt.zero_grad(set_to_none=True)
            if not torch.isfinite(losses["loss"]):
                bad_loss += 1
            else:
                losses["loss"].backward()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), m.grad_clip or math.inf)
                if not torch.isfinite(norm):
                    bad_grad += 1
                else:
                    opt.step()
                    worst = max(worst, abs(losses["loss"].item()))
                    nll = losses["nll"].item()
            done += 1
            if done >= steps:
                break
    weights_ok = all(torch.isfinite(p).all() for p in model.parameters())
    return {"bad_loss": bad_loss, "bad_grad": bad_grad, "weights_finite": weights_ok,
            "max_abs_loss": worst, "last_nll": nll}


def main(argv: list[str]) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--config", default="carracing")
    parser.add_argument("--preset", action="append", default=None)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.preset, args.overrides)
    torch.set_num_threads(1)
    print(f"machine: {platform.platform()}; run {RunDir.for_config(cfg)}; z {cfg.vae.z_dim}, "
          f"LSTM {cfg.memory.hidden}, {args.steps} steps x {args.seeds} seeds, "
          f"lr {cfg.memory.lr}, clip {cfg.memory.grad_clip}")
    print("| variant | seed | NaN/Inf losses | NaN/Inf grads | weights finite | "
          "max abs loss | last NLL | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    failures = 0
    for name in args.variants:
        for seed in range(args.seeds):
            start = time.perf_counter()
            r = run(cfg, VARIANTS[name], seed, args.steps)
            failures += r["bad_loss"] + r["bad_grad"] + (not r["weights_finite"])
            print(f"| {name} | {seed} | {r['bad_loss']} | {r['bad_grad']} | "
                  f"{r['weights_finite']} | {r['max_abs_loss']:.3f} | {r['last_nll']:.4f} | "
                  f"{time.perf_counter() - start:.0f} |", flush=True)
    print(f"non-finite events: {failures}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    run_cli(main)
