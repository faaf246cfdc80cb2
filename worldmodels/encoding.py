"""Encode each rollout shard's frames with V into a latent shard for M.

``<run>/latents/ep_XXXXXX.npz`` holds ``mu``, ``logvar`` float32 (T+1, z) and the
episode's ``action``, ``reward``, ``terminated``, ``truncated``, with the V weights'
digest in ``meta.vae_digest`` and the rollout's size in ``meta.rollout_bytes``; a latent
shard made by other weights, or from a rollout since replaced, is encoded again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from worldmodels.checkpoint import file_digest
from worldmodels.config import ExperimentConfig, torch_device
from worldmodels.datasets import add_skipped, usable_shards
from worldmodels.run_dir import RunDir
from worldmodels.shards import (
    RolloutShard,
    ShardError,
    ShardSpec,
    list_shards,
    read_meta,
    remove_partial_files,
    write_npz_atomic,
)
from worldmodels.vae import ConvVAE


@dataclass
class EncodeReport:
    episodes: int
    encoded: int
    frames: int
    seconds: float
    vae_digest: str = ""  # of the V every latent shard is now encoded with


@torch.no_grad()
def encode_frames(model: ConvVAE, frames: np.ndarray, batch_size: int,
                  device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 64, 64, 3) -> (mu, logvar), float32 (N, z) each."""
    mus, logvars = [], []
    for i in range(0, len(frames), batch_size):
        mu, logvar = model.encode(torch.from_numpy(frames[i : i + batch_size]).to(device))
        mus.append(mu.cpu())
        logvars.append(logvar.cpu())
    return torch.cat(mus).numpy(), torch.cat(logvars).numpy()


def latent_is_current(path: Path, digest: str, rollout: Path | None = None) -> bool:
    """Whether the latent shard at ``path`` was made by the V of ``digest`` from the
    rollout shard ``rollout`` as it is now (its size, recorded since stop 53: a rollout
    replaced under the same name is encoded again)."""
    if not path.exists():
        return False
    try:
        meta = read_meta(path)
    except ShardError:
        return False
    size = meta.get("rollout_bytes")
    return meta.get("vae_digest") == digest and (
        rollout is None or size is None or size == rollout.stat().st_size)


def encode_rollouts(cfg: ExperimentConfig, run: RunDir | None = None,
                    progress: bool = True) -> EncodeReport:
    """Write a latent shard for every rollout shard of the run that lacks a current one;
    the run is ``cfg``'s default directory unless given."""
    run = run or RunDir.for_config(cfg)
    device = torch_device(cfg.device)
    model = run.load_vae(cfg.vae.z_dim, cfg.device).to(device)
    digest = file_digest(run.vae.model)
    src, dst = run.rollouts, run.latents
    shards = list_shards(src)
    if not shards:
        raise ShardError(f"{src}: no rollout shards to encode (run collect.py first)")
    spec = ShardSpec(frame_size=cfg.env.frame_size)
    skip, record = cfg.data.skip_corrupt, run.skipped_shards_file
    # every shard fits V before any is encoded (data.skip_corrupt: those that do not are
    # left out and listed under "encode", beside V's own "rollouts" list)
    shards, _ = usable_shards(shards, lambda path: None, skip, record, "encode", spec,
                              check_kind="rollouts")
    run.write_config(cfg, outputs=(dst,))  # inputs accepted
    remove_partial_files(dst)
    todo = [p for p in shards if not latent_is_current(dst / p.name, digest, p)]
    start = time.perf_counter()
    frames = encoded = 0
    for path in tqdm(todo, desc="encode", unit="ep", disable=not progress):
        try:
            shard = RolloutShard.load(path)
        except ShardError as err:  # a payload that its header did not show to be bad
            if not skip:
                raise
            add_skipped(record, "encode", str(err))
            continue
        mu, logvar = encode_frames(model, shard.obs, cfg.encode.batch_size, device)
        frames += len(shard.obs)
        meta = {**shard.meta, "vae_digest": digest, "z_dim": cfg.vae.z_dim,
                "rollout_bytes": path.stat().st_size}
        write_npz_atomic(dst / path.name, {
            "mu": mu, "logvar": logvar, "action": shard.action, "reward": shard.reward,
            "terminated": shard.terminated, "truncated": shard.truncated,
            "meta": np.array(json.dumps(meta)),
        }, compress_level=cfg.collect.compress_level)
        encoded += 1
    return EncodeReport(len(shards), encoded, frames, time.perf_counter() - start, digest)
