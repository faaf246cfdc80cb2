"""Training V: Adam over streamed frames, held-out scoring, checkpoints that resume.

Files under ``<run>/vae/``::

    model.safetensors (+ .json)   weights of the last finished epoch
    train_state.safetensors       optimizer state and counters (safetensors + JSON)
    mean_frame.npy                the mean training frame (the MSE baseline)
    recon.png                     held-out frames (top) over their reconstructions (bottom)
    metrics.json                  per-epoch held-out MSE, baseline MSE, wall time
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from worldmodels.atomic import write_atomic
from worldmodels.checkpoint import (
    CheckpointError,
    file_digest,
    read_header,
    read_json,
    resume_training,
    save_model,
    save_state,
    write_json_atomic,
)
from worldmodels.config import ConfigError, ExperimentConfig, holdout_base, torch_device
from worldmodels.datasets import (
    FrameDataset,
    ShardLoader,
    count_frames,
    mean_frame,
    split_usable,
    usable_shards,
)
from worldmodels.monitoring import peak_rss_mib, summary_writer
from worldmodels.pictures import recon_grid, save_png
from worldmodels.run_dir import RunDir
from worldmodels.shards import RolloutShard, ShardError, ShardSpec, list_shards, load_frames
from worldmodels.vae import ConvVAE, to_float_frames, vae_loss

#: what every record of ``vae/metrics.json`` holds
VAE_METRIC_KEYS = ("epoch", "holdout_mse", "mean_frame_mse", "holdout_frames")


@dataclass
class VAEReport:
    epochs_done: int
    train_frames: int
    holdout_frames_scored: int
    holdout_mse: float
    mean_frame_mse: float
    seconds: float
    peak_rss_mib: float
    skipped_shards: int = 0  # corrupt shards left out (data.skip_corrupt)

    @property
    def mse_ratio(self) -> float:
        """Held-out MSE as a fraction of the mean-frame baseline's MSE."""
        return self.holdout_mse / self.mean_frame_mse if self.mean_frame_mse > 0 else float("nan")


def rollout_split(cfg: ExperimentConfig, run: RunDir) -> tuple[list[Path], list[Path], int]:
    """(train, held-out, corrupt shards skipped): split by episode name, fixed by
    :meth:`RunDir.data_seed` (the seed V's training recorded, else ``cfg.seed``)."""
    directory = run.rollouts
    listed = list_shards(directory)
    shards, skipped = usable_shards(listed, RolloutShard.load,
                                    cfg.data.skip_corrupt, run.skipped_shards_file, "rollouts",
                                    ShardSpec(frame_size=cfg.env.frame_size))
    if len(shards) < 2:
        raise ShardError(
            f"{directory}: {len(shards)} usable shard(s); training V needs at least 2 "
            "(run collect.py with the same config first)"
        )
    train, held = split_usable(shards, listed, cfg.data.holdout_fraction, run.data_seed(cfg),
                               cfg.data.holdout_min_episodes, holdout_base(cfg))
    for name, side in (("training", train), ("held-out", held)):
        if not side:  # (corrupt shards skipped on one side of the split)
            raise ShardError(
                f"{directory}: no usable {name} episode ({skipped} corrupt shard(s) "
                f"skipped, listed in {run.skipped_shards_file}); V needs both sides of the "
                "split: collect more episodes or replace the corrupt ones")
    return train, held, skipped


#: an object pixel differs from the mean training frame by more than this (any channel)
OBJECT_DEVIATION = 0.25
#: frames binned by their object pixels: [low, high) (None: no upper end). A distant
#: fireball in VizdoomTakeCover is a few pixels at 64x64
OBJECT_BINS: tuple[tuple[int, int | None], ...] = ((1, 10), (10, 40), (40, 150), (150, None))


class ObjectTally:
    """How much of the small things in frames V keeps, which a frame's MSE hides.

    An object pixel of a frame differs from the mean training frame by more than
    :data:`OBJECT_DEVIATION` in some channel; it is kept when the reconstruction from mu
    is off by less than half that difference (max over channels): within half the
    frame's deviation from the mean. Frames are counted, batch by batch, in bins by their
    number of object pixels."""

    def __init__(self, bins: tuple[tuple[int, int | None], ...] = OBJECT_BINS):
        self.bins = bins
        self.frames = np.zeros(len(bins), dtype=np.int64)
        self.pixels = np.zeros(len(bins), dtype=np.int64)
        self.kept = np.zeros(len(bins), dtype=np.int64)

    def add(self, x: torch.Tensor, recon: torch.Tensor, mean: torch.Tensor) -> None:
        """``x``, ``recon``: float (B, 3, F, F) in [0, 1]; ``mean``: (3, F, F)."""
        deviation = (x - mean).abs().amax(dim=1)  # (B, F, F)
        objects = deviation > OBJECT_DEVIATION
        close = (recon - x).abs().amax(dim=1) < deviation / 2
        count = objects.flatten(1).sum(1)
        for i, (low, high) in enumerate(self.bins):
            in_bin = count >= low if high is None else (count >= low) & (count < high)
            sel = objects & in_bin[:, None, None]
            self.frames[i] += int(in_bin.sum())
            self.pixels[i] += int(sel.sum())
            self.kept[i] += int((sel & close).sum())

    def result(self) -> list[dict[str, Any]]:
        """Per bin: ``low``, ``high``, ``frames``, ``pixels`` (object pixels) and ``kept``
        (their share kept; None for an empty bin, so that JSON stays valid)."""
        return [{"low": low, "high": high, "frames": int(self.frames[i]),
                 "pixels": int(self.pixels[i]),
                 "kept": float(self.kept[i] / self.pixels[i]) if self.pixels[i] else None}
                for i, (low, high) in enumerate(self.bins)]


@dataclass(frozen=True)
class HoldoutScore:
    """V on held-out frames: per-pixel MSE of reconstructions from mu, the mean frame's,
    the frames scored, and the object pixels kept by object size (:class:`ObjectTally`)."""

    mse: float
    mean_frame_mse: float
    frames: int
    objects: list[dict[str, Any]]

    @property
    def small_objects_kept(self) -> float:
        """The share kept of the smallest objects' pixels (frames with under 10; NaN if
        no frame has such objects)."""
        kept = self.objects[0]["kept"]
        return float("nan") if kept is None else kept


@torch.no_grad()
def score_holdout(
    model: ConvVAE, paths: list[Path], mean: np.ndarray, device: torch.device,
    max_frames: int = 0, batch_size: int = 500,
) -> HoldoutScore:
    """V's reconstructions from mu on up to ``max_frames`` (0: all) frames of ``paths``."""
    model.eval()
    mean_t = torch.from_numpy(mean).float().permute(2, 0, 1).to(device)
    sq_vae = sq_mean = 0.0
    n = 0
    tally = ObjectTally()
    for batch in FrameDataset(paths, batch_size, shuffle=False, max_frames=max_frames):
        x = to_float_frames(batch.to(device))
        mu, _ = model.encode(x)
        recon = model.decode(mu)
        sq_vae += (recon - x).pow(2).sum().item()
        sq_mean += (x - mean_t).pow(2).sum().item()
        tally.add(x, recon, mean_t)
        n += x.shape[0]
    pixels = n * 3 * 64 * 64
    return HoldoutScore(sq_vae / pixels, sq_mean / pixels, n, tally.result())


def object_bin_label(b: dict[str, Any]) -> str:
    """An :class:`ObjectTally` bin's object pixels as a label: ``"1-9"``, ``">=150"``."""
    return f"{b['low']}-{b['high'] - 1}" if b["high"] is not None else f">={b['low']}"


def _kept(score: HoldoutScore) -> dict[str, float | None]:
    """``metrics.json``'s ``objects_kept``: per object-size bin (:func:`object_bin_label`),
    the share of object pixels kept (None: no such frame)."""
    return {object_bin_label(b): b["kept"] for b in score.objects}


def grid_frames(paths: list[Path], count: int) -> np.ndarray:
    """``count`` frames from inside the first (up to 4) held-out episodes.

    Interior frames only: first frames are alike, and some envs (ViZDoom) end on a blank one.
    """
    episodes = paths[:4]
    per_episode = -(-count // len(episodes))
    picked: list[np.ndarray] = []
    for path in episodes:
        frames = load_frames(path)
        idx = np.linspace(0, len(frames) - 1, per_episode + 2)[1:-1].round().astype(int)
        picked += list(frames[idx])
    return np.stack(picked[:count])


def import_vae(cfg: ExperimentConfig, run: RunDir, progress: bool = True) -> VAEReport:
    """``vae.pretrained``: the V of another run (or shipped agent) becomes this run's,
    scored on this run's held-out frames like a trained V's epoch (``metrics.json``:
    epoch 0, with the source and its weights' SHA-256; the weights' header says the same).
    A rerun with the same source and weights does nothing; a run that trained its own V,
    or imported other weights, is refused (its latents and M came from that V)."""
    v, files = cfg.vae, run.vae
    source = RunDir(Path(v.pretrained).expanduser())
    if not source.vae.model.exists():
        raise CheckpointError(f"config key 'vae.pretrained': {source.vae.model}: no trained V")
    digest = file_digest(source.vae.model)
    started = time.perf_counter()
    if files.model.exists():
        meta = read_header(files.model).get("meta", {})
        if meta.get("pretrained_sha256") != digest:
            was = (f"imported from {meta['pretrained']} ({meta['pretrained_sha256']})"
                   if "pretrained" in meta else "trained here")
            raise ConfigError(f"config key 'vae.pretrained': {files.model} was {was}, not "
                              f"{source.vae.model} ({digest}); use a new run")
        last = (read_json(files.metrics, []) or [{}])[-1]
        last = last if isinstance(last, dict) else {}
        return VAEReport(0, int(last.get("frames", 0)), int(last.get("holdout_frames", 0)),
                         float(last.get("holdout_mse", "nan")),
                         float(last.get("mean_frame_mse", "nan")),
                         time.perf_counter() - started, peak_rss_mib())
    device = torch_device(cfg.device)
    model = source.load_vae(v.z_dim, cfg.device)  # z_dim checked, naming the file
    train_paths, holdout_paths, skipped_shards = rollout_split(cfg, run)
    run.write_config(cfg, outputs=(files.dir,))  # inputs accepted
    mean = mean_frame(train_paths)
    write_atomic(files.mean, lambda fh: np.save(fh, mean, allow_pickle=False))
    score = score_holdout(model, holdout_paths, mean, device, v.max_holdout_frames)
    holdout_mse, base_mse, n_scored = score.mse, score.mean_frame_mse, score.frames
    if v.grid_frames > 0:
        save_grid(model, holdout_paths, v.grid_frames, files.grid, device)
    frames = count_frames(train_paths)
    origin = {"pretrained": str(source.home), "pretrained_sha256": digest}
    write_json_atomic(files.metrics, [{"epoch": 0, "holdout_mse": holdout_mse,
                                       "mean_frame_mse": base_mse, "holdout_frames": n_scored,
                                       "objects_kept": _kept(score), "frames": frames,
                                       **origin}])
    save_model(files.model, model, meta={"epoch": 0, "seed": cfg.seed,
                                         "data_seed": run.data_seed(cfg), **origin})
    if progress:
        print(f"V from {source.home}: held-out MSE {holdout_mse:.5f} (mean frame "
              f"{base_mse:.5f}, ratio {holdout_mse / base_mse:.3f}) on this run's frames")
    return VAEReport(0, frames, n_scored, holdout_mse, base_mse, time.perf_counter() - started,
                     peak_rss_mib(), skipped_shards)


def train_vae(cfg: ExperimentConfig, run: RunDir | None = None,
              progress: bool = True) -> VAEReport:
    """Train (or resume) V on the run's rollouts up to ``cfg.vae.epochs`` epochs; the
    run is ``cfg``'s default directory unless given. With ``vae.pretrained``, import
    that V instead (:func:`import_vae`)."""
    run = run or RunDir.for_config(cfg)
    v = cfg.vae
    if v.pretrained:
        return import_vae(cfg, run, progress)
    device = torch_device(cfg.device)
    files = run.vae
    data_seed = run.data_seed(cfg)  # recorded with V: the split stays V's
    train_paths, holdout_paths, skipped_shards = rollout_split(cfg, run)

    torch.manual_seed(cfg.seed)
    model = ConvVAE(z_dim=v.z_dim).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=v.lr)
    start_epoch, state = resume_training(files.model, files.state, model, optimizer,
                                         expect={"z_dim": cfg.vae.z_dim})
    mean = read_mean_frame(files.mean, cfg.env.frame_size) if files.mean.exists() else None
    metrics = [m for m in read_json(files.metrics, [], VAE_METRIC_KEYS)
               if m["epoch"] <= start_epoch]
    run.write_config(cfg, outputs=(files.dir, run.tensorboard("vae")))  # inputs accepted

    if mean is None:
        mean = mean_frame(train_paths)
        write_atomic(files.mean, lambda fh: np.save(fh, mean, allow_pickle=False))

    frames_total = count_frames(train_paths)
    frames_per_epoch = min(frames_total, v.max_frames_per_epoch or frames_total)
    dataset = FrameDataset(train_paths, v.batch_size, cfg.data.shuffle_buffer, seed=cfg.seed,
                           max_frames=v.max_frames_per_epoch)
    loader = ShardLoader(dataset, batch_size=None, num_workers=cfg.data.loader_workers,
                        persistent_workers=False)
    step = int(state.get("step", start_epoch * (frames_per_epoch // v.batch_size)))
    writer = summary_writer(run.tensorboard("vae"), resumed_at=step)
    started = time.perf_counter()
    holdout_mse, base_mse, n_scored = float("nan"), float("nan"), 0
    if start_epoch >= v.epochs and metrics:
        holdout_mse, base_mse = metrics[-1]["holdout_mse"], metrics[-1]["mean_frame_mse"]
        n_scored = metrics[-1]["holdout_frames"]

    for epoch in range(start_epoch, v.epochs):
        model.train()
        dataset.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 1000 + epoch)
        epoch_start = time.perf_counter()
        batches = -(-frames_per_epoch // v.batch_size)  # (the last one may be partial)
        bar = tqdm(loader, total=batches, unit="batch",
                   desc=f"vae epoch {epoch + 1}/{v.epochs}", disable=not progress)
        for batch in bar:
            x = to_float_frames(batch.to(device, non_blocking=True))
            recon, mu, logvar = model(x)
            losses = vae_loss(x, recon, mu, logvar, v.kl_tolerance, v.kl_weight)
            if not torch.isfinite(losses["loss"]):
                raise FloatingPointError(f"vae: loss is {losses['loss'].item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
            step += 1
            if step % 20 == 0:
                for k, val in losses.items():
                    writer.add_scalar(f"vae/{k}", val.item(), step)
                bar.set_postfix(mse=f"{losses['mse'].item():.4f}", kl=f"{losses['kl'].item():.1f}")
        train_seconds = time.perf_counter() - epoch_start

        score = score_holdout(model, holdout_paths, mean, device, v.max_holdout_frames)
        holdout_mse, base_mse, n_scored = score.mse, score.mean_frame_mse, score.frames
        writer.add_scalar("vae/holdout_mse", holdout_mse, step)
        writer.add_scalar("vae/holdout_mse_ratio", holdout_mse / base_mse, step)
        for b in score.objects:
            if b["kept"] is not None:
                writer.add_scalar(f"vae/objects_kept_from_{b['low']}px", b["kept"], step)
        writer.add_scalar("vae/frames_per_s", frames_per_epoch / train_seconds, step)
        if v.grid_frames > 0:
            save_grid(model, holdout_paths, v.grid_frames, files.grid, device)
        metrics.append({"epoch": epoch + 1, "holdout_mse": holdout_mse,
                        "mean_frame_mse": base_mse, "holdout_frames": n_scored,
                        "objects_kept": _kept(score),
                        "train_seconds": train_seconds, "frames": frames_per_epoch})
        # metrics, then weights, then optimizer: a kill between writes leaves a state that
        # resume_training recognises (metrics past the weights' epoch are dropped on resume)
        write_json_atomic(files.metrics, metrics)
        save_model(files.model, model, meta={"epoch": epoch + 1, "seed": cfg.seed,
                                             "data_seed": data_seed})
        save_state(files.state, {"optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                                    "step": step})
        if progress:
            tqdm.write(f"epoch {epoch + 1}: held-out MSE {holdout_mse:.5f} "
                       f"(mean frame {base_mse:.5f}, ratio {holdout_mse / base_mse:.3f}), "
                       f"small objects kept {score.small_objects_kept:.2f}, "
                       f"{frames_per_epoch / train_seconds:.0f} frames/s")
    writer.close()
    if dataset.skipped:
        print(f"skipped {len(dataset.skipped)} corrupt shard(s): {dataset.skipped[:3]}")
    return VAEReport(
        epochs_done=max(start_epoch, v.epochs), train_frames=frames_total,
        holdout_frames_scored=n_scored, holdout_mse=holdout_mse, mean_frame_mse=base_mse,
        seconds=time.perf_counter() - started, peak_rss_mib=peak_rss_mib(),
        skipped_shards=skipped_shards,
    )


@torch.no_grad()
def save_grid(model: ConvVAE, holdout_paths: list[Path], count: int, path: Path,
              device: torch.device) -> None:
    frames = grid_frames(holdout_paths, count)
    model.eval()
    mu, _ = model.encode(torch.from_numpy(frames).to(device))
    recon = (model.decode(mu).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    save_png(path, recon_grid(frames, recon))


def read_mean_frame(path: Path, frame_size: int) -> np.ndarray:
    """The saved mean training frame, float (F, F, 3) in [0, 1]; an empty, corrupt or
    pickled file, or one of another shape, is a :class:`CheckpointError` naming it."""
    try:
        with open(path, "rb") as fh:
            if fh.read(6) != b"\x93NUMPY":  # (np.load would call a text file pickled data)
                raise ValueError("not a .npy file")
        mean = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise CheckpointError(f"{path}: unreadable mean frame ({type(err).__name__}: {err}); "
                              "delete it and train_vae.py recomputes it") from None
    shape = (frame_size, frame_size, 3)
    if not isinstance(mean, np.ndarray) or mean.shape != shape \
            or mean.dtype.kind != "f" or not np.isfinite(mean).all():
        raise CheckpointError(f"{path}: the mean frame is {getattr(mean, 'dtype', '?')} "
                              f"{getattr(mean, 'shape', '?')}, expected finite floats {shape}; "
                              "delete it and train_vae.py recomputes it")
    return mean


def report_dict(report: VAEReport) -> dict:
    return {**asdict(report), "mse_ratio": report.mse_ratio}
