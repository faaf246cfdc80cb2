"""Training M: the FRMDN on encoded latents, z resampled from N(mu, sigma) every batch.

Files under ``<run>/memory/`` (or another directory given by the caller)::

    model.safetensors (+ .json)   weights of the last finished epoch
    train_state.pt                optimizer state and counters (weights_only load)
    metrics.json                  per epoch: held-out NLL (nats / latent dim), reward MSE,
                                  done accuracy, recall, precision and skill, train
                                  seconds, skipped batches
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from worldmodels.checkpoint import (
    CheckpointError,
    file_digest,
    read_json,
    resume_training,
    save_model,
    save_state,
    write_json_atomic,
)
from worldmodels.config import ExperimentConfig
from worldmodels.datasets import SequenceDataset, read_latents, split_episodes, usable_shards
from worldmodels.frmdn import FRMDN, done_metrics
from worldmodels.monitoring import summary_writer
from worldmodels.run_dir import MemoryFiles, RunDir
from worldmodels.shards import ShardError, list_shards, read_meta, shard_length


@dataclass
class MemoryReport:
    epochs_done: int
    holdout_nll: float  # nats per latent dimension
    holdout_reward_mse: float
    holdout_done_acc: float
    holdout_done_skill: float  # 1 - BCE / base-rate entropy (see frmdn.done_metrics)
    seconds_per_epoch: float  # median training time of the recorded epochs
    skipped_batches: int
    parameters: int
    skipped_shards: int = 0  # corrupt shards left out (data.skip_corrupt)


def latent_split(cfg: ExperimentConfig, run: RunDir, check_digest: bool = True,
                 ) -> tuple[list[Path], list[Path], int]:
    """(train, held-out, corrupt shards skipped): the run's latent shards split by
    episode exactly as V's frames were."""
    directory = run.latents
    shards, skipped = usable_shards(
        list_shards(directory), lambda p: read_latents(p, cfg.vae.z_dim), cfg.data.skip_corrupt,
        run.skipped_shards_file, "latents")
    if len(shards) < 2:
        raise ShardError(f"{directory}: {len(shards)} usable latent shard(s); "
                         "run encode.py first")
    if check_digest:
        check_latents_current(run, shards)
    return (*split_episodes(shards, cfg.data.holdout_fraction, cfg.seed,
                              cfg.data.holdout_min_episodes), skipped)


def check_latents_current(run: RunDir, shards: list[Path]) -> None:
    """Refuse latents made by other V weights than the run's (an older VAE, say)."""
    model = run.vae.model
    if not model.exists():
        return  # latents supplied without their V: nothing to compare with
    digest = file_digest(model)
    for path in shards:
        made_by = read_meta(path).get("vae_digest")
        if made_by != digest:
            raise ShardError(f"{path}: made by V weights {made_by}, but the run's V is {digest} "
                             "(rerun encode.py)")


def action_info(path: Path) -> tuple[int, bool]:
    """(action size, discrete?) of the episodes, from a shard's metadata."""
    space = read_meta(path).get("action_space")
    if not space:
        raise ShardError(f"{path}: meta has no action_space (collect.py writes one)")
    if space["type"] == "discrete":
        if int(space.get("start", 0)) != 0:
            raise ShardError(f"{path}: Discrete actions starting at {space['start']} "
                             "are not supported (M one-hot encodes 0..n-1)")
        return int(space["n"]), True
    return int(math.prod(space["shape"])), False


def build_memory(cfg: ExperimentConfig, action_dim: int, discrete: bool) -> FRMDN:
    m = cfg.memory
    return FRMDN(
        z_dim=cfg.vae.z_dim, action_dim=action_dim, discrete_actions=discrete,
        hidden=m.hidden, mixtures=m.mixtures, precision=m.precision,
        overcomplete_m=m.overcomplete_m, flow=m.flow, flow_layers=m.flow_layers,
        flow_hidden=m.flow_hidden, flow_conditional=m.flow_conditional,
        reward_head=m.reward_head, done_head=m.done_head,
    )


def sample_z(mu: torch.Tensor, logvar: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """z ~ N(mu, exp(logvar)): Ha's resampling, so M sees V's uncertainty."""
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


def _batch_losses(model: FRMDN, batch: dict[str, torch.Tensor], cfg: ExperimentConfig,
                  device: torch.device, generator: torch.Generator | None = None):
    b = {k: v.to(device) for k, v in batch.items()}
    z = sample_z(b["mu"], b["logvar"], generator)
    return model.loss(z, b["action"], b["reward"], b["done"], b["mask"],
                      cfg.memory.reward_weight, cfg.memory.done_weight,
                      cfg.memory.done_pos_weight), b["mask"].sum()


@torch.no_grad()
def evaluate_memory(model: FRMDN, paths: list[Path], cfg: ExperimentConfig,
                    device: torch.device) -> dict[str, float]:
    """Held-out means over all valid steps; z drawn with a fixed seed so runs compare."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(12345)
    sums: dict[str, float] = {}
    steps = 0.0
    for batch in SequenceDataset(paths, cfg.memory.seq_len, cfg.memory.batch_size,
                                 shuffle=False, z_dim=cfg.vae.z_dim):
        losses, n = _batch_losses(model, batch, cfg, device, gen)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item() * n.item()
        steps += n.item()
    rates = {k: v / steps for k, v in sums.items()}
    return {**rates, **done_metrics(rates)}


def train_memory(cfg: ExperimentConfig, run: RunDir | None = None,
                 out_dir: Path | None = None, seed: int | None = None,
                 progress: bool = True) -> MemoryReport:
    """Train (or resume) M on the run's latents up to ``cfg.memory.epochs`` epochs; the
    run is ``cfg``'s default directory unless given.

    ``out_dir``: where M's files go (default: the run's ``memory/``). ``seed`` seeds
    initialisation and z resampling (default ``cfg.seed``); the data split always
    follows ``cfg.seed``, so runs with different seeds see the same data.
    """
    run = run or RunDir.for_config(cfg)
    m = cfg.memory
    seed = cfg.seed if seed is None else seed
    device = torch.device(cfg.device)
    files = run.memory if out_dir is None else MemoryFiles.at(out_dir)
    train_paths, holdout_paths, skipped_shards = latent_split(cfg, run)
    action_dim, discrete = action_info(train_paths[0])
    action_space = read_meta(train_paths[0])["action_space"]

    torch.manual_seed(seed)
    model = build_memory(cfg, action_dim, discrete).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=m.lr)
    start_epoch, _ = resume_training(files.model, files.state, model, optimizer,
                                     expect=model.config())
    if out_dir is None:
        run.write_config(cfg)  # inputs accepted
    files.dir.mkdir(parents=True, exist_ok=True)

    dataset = SequenceDataset(train_paths, m.seq_len, m.batch_size, m.shuffle_buffer, seed=seed,
                              z_dim=cfg.vae.z_dim)
    loader = DataLoader(dataset, batch_size=None, num_workers=cfg.data.loader_workers)
    lengths = {p: shard_length(p) for p in train_paths}  # read once, replayed every epoch
    writer = summary_writer(run.tensorboard("memory") if out_dir is None
                            else files.dir.parent / "tensorboard" / files.dir.name)
    metrics = [x for x in read_json(files.metrics, []) if x["epoch"] <= start_epoch]
    step = sum(x.get("batches", 0) for x in metrics)
    skipped_total = sum(x.get("skipped", 0) for x in metrics)
    generator = torch.Generator(device=device)

    for epoch in range(start_epoch, m.epochs):
        model.train()
        dataset.set_epoch(epoch)
        generator.manual_seed(seed * 1000 + epoch)
        started = time.perf_counter()
        skipped = ran = 0
        batches = dataset.batches_per_epoch(cfg.data.loader_workers, lengths.__getitem__)
        bar = tqdm(loader, total=batches, unit="batch", desc=f"M epoch {epoch + 1}/{m.epochs}",
                   disable=not progress)
        for batch in bar:
            optimizer.zero_grad(set_to_none=True)
            error = None
            try:  # a failed factorisation is a non-finite batch too
                losses, _ = _batch_losses(model, batch, cfg, device, generator)
                loss = losses["loss"]
                bad = None if torch.isfinite(loss) else f"loss is {loss.item()}"
                if bad is None:
                    loss.backward()
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                          m.grad_clip or math.inf)
                    bad = None if torch.isfinite(norm) else f"gradient norm is {norm.item()}"
            except torch.linalg.LinAlgError as exc:
                error, bad = exc, f"LinAlgError ({exc})"
            if bad is not None:
                if m.nonfinite == "raise":
                    raise FloatingPointError(
                        f"M: {bad} at epoch {epoch + 1}, step {step} "
                        "(set memory.nonfinite=skip to skip such batches)") from error
                skipped += 1
                continue
            optimizer.step()
            step += 1
            ran += 1
            if step % 10 == 0:
                for k, v in losses.items():
                    writer.add_scalar(f"m/{k}", v.item(), step)
                bar.set_postfix(nll=f"{losses['nll'].item():.3f}")
        seconds = time.perf_counter() - started
        held = evaluate_memory(model, holdout_paths, cfg, device)
        for k, v in held.items():
            writer.add_scalar(f"m/holdout_{k}", v, step)
        writer.add_scalar("m/seconds_per_epoch", seconds, step)
        skipped_total += skipped
        metrics.append({"epoch": epoch + 1, "train_seconds": seconds, "batches": ran,
                        "skipped": skipped, **{f"holdout_{k}": v for k, v in held.items()}})
        write_json_atomic(files.metrics, metrics)  # first: see vae_training
        save_model(files.model, model, meta={"epoch": epoch + 1, "seed": seed,
                                             "done_pos_weight": m.done_pos_weight,
                                             "action_space": action_space})
        save_state(files.state, {"optimizer": optimizer.state_dict(), "epoch": epoch + 1})
        if progress:
            done = f", done skill {held['done_skill']:.3f}" if "done_skill" in held else ""
            tqdm.write(f"M epoch {epoch + 1}: held-out NLL {held['nll']:.4f} nats/dim{done}, "
                       f"{seconds:.1f}s" + (f", skipped {skipped} batches" if skipped else ""))
    writer.close()
    if not metrics:
        raise CheckpointError(f"{files.dir}: no epochs recorded (memory.epochs=0?)")
    last = metrics[-1]
    return MemoryReport(
        epochs_done=last["epoch"], holdout_nll=last["holdout_nll"],
        holdout_reward_mse=last.get("holdout_reward_mse", float("nan")),
        holdout_done_acc=last.get("holdout_done_acc", float("nan")),
        holdout_done_skill=last.get("holdout_done_skill", float("nan")),
        # the median: on a shared machine one disturbed epoch should not move the figure
        seconds_per_epoch=float(np.median([x["train_seconds"] for x in metrics])),
        skipped_batches=skipped_total,
        parameters=sum(p.numel() for p in model.parameters()),
        skipped_shards=skipped_shards,
    )


def report_dict(report: MemoryReport) -> dict[str, Any]:
    return asdict(report)
