"""Training M (any `memory.kind`) on encoded latents, z resampled from N(mu, sigma) every batch.

Files under ``<run>/memory/`` (or another directory given by the caller)::

    model.safetensors (+ .json)   weights of the last finished epoch (training resumes
                                  from them)
    best.safetensors (+ .json)    weights of the chosen epoch: the lowest held-out NLL
                                  (the headline below), among the epochs that pass the
                                  held-action check when ``memory.select_max_held`` is
                                  set (:func:`selection_key`); later stages load these
    train_state.safetensors       optimizer state and counters (safetensors + JSON)
    metrics.json                  per epoch: train seconds, skipped batches and, on
                                  scored epochs (every ``memory.eval_every`` and the
                                  last), held-out NLL (nats / latent dim) as below,
                                  reward MSE, done accuracy, recall, precision and skill,
                                  and the epoch check's figures (``epoch_check``)
    held_check.png                the check per epoch (with ``memory.select_max_held``)
    epochs/epoch_<NNN>.safetensors  each scored epoch's weights (``memory.keep_epochs``)

Held-out NLL (:func:`evaluate_memory`), in nats per latent dimension, on the episodes
:func:`latent_split` holds out (at least ``data.holdout_min_episodes``):

* ``holdout_nll`` (the headline) ± ``holdout_nll_se``: each held-out episode scored from
  step 0 to its end with M's state carried through, z drawn from V's N(mu, sigma) with
  ``memory.eval_draws`` fixed seeds (the same for every model), averaged over the
  draws; the standard error is across the draws.
* ``holdout_nll_mu``: the same whole episodes with z = mu (no draw, deterministic).
* ``holdout_nll_windows`` ± ``holdout_nll_windows_se``: ``memory.seq_len`` windows with
  the state reset at each, as M trains, over the same number of draws.

Why that headline: C and the dream use M with its state carried through whole episodes,
so that is the likelihood that matters, and reset windows can flatter a model whose state
drifts beyond ``seq_len`` steps. M is trained on drawn z (Ha's resampling) and models
their density, so the NLL of drawn z is the quantity it fits; z = mu is a different,
smoother target (a cross-check that needs no draw, not the claim). One draw moved the
figure by about as much as the gaps between variants (issue 21), so the headline
averages several and says how much noise is left. Best-epoch selection and
``memory.patience`` use the headline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from worldmodels.atomic import check_writable
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
    SequenceDataset,
    ShardLoader,
    nested_subset,
    read_latents,
    split_usable,
    usable_shards,
)
from worldmodels.memory import MEMORY_KINDS, Memory, done_metrics
from worldmodels.monitoring import summary_writer
from worldmodels.pictures import plot_curves
from worldmodels.run_dir import MemoryFiles, RunDir, refuse_memory_of_other_v
from worldmodels.shards import (
    ShardError,
    ShardSpec,
    list_shards,
    read_meta,
    shard_index,
    shard_length,
)


@dataclass
class MemoryReport:
    """Held-out figures of the chosen epoch (``best_epoch``: the lowest headline NLL, or
    by :func:`selection_key` with ``memory.select_max_held``), whose weights are
    ``best.safetensors``; see :func:`evaluate_memory`."""

    epochs_done: int
    holdout_nll: float  # the headline, nats per latent dimension (evaluate_memory)
    holdout_reward_mse: float
    holdout_done_acc: float
    holdout_done_skill: float  # 1 - BCE / base-rate entropy (see frmdn.done_metrics)
    seconds_per_epoch: float  # median training time of the recorded epochs
    skipped_batches: int
    parameters: int
    skipped_shards: int = 0  # corrupt shards left out (data.skip_corrupt)
    best_epoch: int = 0  # the chosen epoch
    holdout_nll_se: float = float("nan")  # standard error of holdout_nll across z draws
    holdout_nll_mu: float = float("nan")  # whole episodes, z = mu
    holdout_nll_windows: float = float("nan")  # seq_len windows, state reset, over draws
    holdout_nll_windows_se: float = float("nan")
    last_holdout_nll: float = float("nan")  # the headline of the last scored epoch
    stopped_early: bool = False  # memory.patience ended training before memory.epochs
    held_worst_ratio: float = float("nan")  # the chosen epoch's check (memory.select_max_held)
    held_worst_action: int = -1
    held_passed: int = -1  # scored epochs of this call's selection that passed the check


#: a check of M's weights after a scored epoch (``train_memory``'s ``epoch_check``): its
#: figures go into the epoch's metrics row (``held_worst_ratio`` is the one selection reads)
EpochCheck = Callable[[torch.nn.Module], dict[str, float]]


def selection_key(row: dict[str, Any], max_held: float) -> tuple[int, float]:
    """How a scored epoch's metrics row ranks as the best epoch, lower first: with
    ``max_held`` > 0, the epochs whose held-action check (``held_worst_ratio``: the held
    action the dream overrates most, dream length / real length) is at most ``max_held``
    come first (an epoch never checked does not pass); then the lowest held-out NLL. If
    no epoch passes, that is the lowest NLL, as with ``max_held`` = 0. An epoch without a
    finite NLL ranks last, (2, inf), where the search for the best starts."""
    nll = row.get("holdout_nll", math.inf)
    if not math.isfinite(nll):
        return 2, math.inf
    fails = max_held > 0 and not row.get("held_worst_ratio", math.inf) <= max_held
    return int(fails), nll


def latent_split(cfg: ExperimentConfig, run: RunDir, check_digest: bool = True,
                 ) -> tuple[list[Path], list[Path], int]:
    """(train, held-out, corrupt shards skipped): the run's latent shards split by
    episode exactly as V's frames were (by :meth:`RunDir.data_seed`)."""
    directory = run.latents
    paths = list_shards(directory)
    spec = ShardSpec(z_dim=cfg.vae.z_dim, action_space=run_action_space(run, paths))
    shards, skipped = usable_shards(
        paths, lambda p: read_latents(p, cfg.vae.z_dim), cfg.data.skip_corrupt,
        run.skipped_shards_file, "latents", spec)
    if len(shards) < 2:
        raise ShardError(f"{directory}: {len(shards)} usable latent shard(s); "
                         "run encode.py first")
    if check_digest:
        check_latents_current(run, shards)
    listed = paths + list_shards(run.rollouts)  # an episode encode skipped has no latents
    return (*split_usable(shards, listed, cfg.data.holdout_fraction, run.data_seed(cfg),
                            cfg.data.holdout_min_episodes, holdout_base(cfg)),
            skipped)


def run_action_space(run: RunDir, paths: list[Path]) -> dict[str, Any] | None:
    """The action space every latent shard must have: as the run's M recorded it, else
    as the first shard's meta says (None if neither can be read: each shard is then
    checked against its own meta)."""
    if run.memory.model.exists():
        space = run.memory_meta().get("action_space")
        if space:
            return space
    try:
        return read_meta(paths[0]).get("action_space") if paths else None
    except ShardError:
        return None


def check_latents_current(run: RunDir, shards: list[Path]) -> None:
    """Refuse latents made by other V weights than the run's (an older VAE, say)."""
    model = run.vae.model
    if not model.exists():
        return  # latents supplied without their V: nothing to compare with
    digest = file_digest(model)
    for path in shards:
        made_by = read_meta(path).get("vae_digest")
        if made_by != digest:
            rollout = run.rollouts / path.name
            fix = ("rerun encode.py" if rollout.exists() else
                   f"its rollout {rollout} is gone, so encode.py cannot make it again: "
                   "delete this latent shard, or restore the rollout")
            raise ShardError(f"{path}: made by V weights {made_by}, but the run's V is {digest} "
                             f"({fix}; a rollout encode.py skips as corrupt leaves its old "
                             "latent shard too: delete it)")


def check_memory_matches_latents(model: Path, vae_digest: str | None) -> None:
    """Refuse to go on training (or to count as trained) an M whose checkpoint ``model``
    was trained on latents of other V weights than ``vae_digest``, the current latents'
    (:func:`worldmodels.run_dir.refuse_memory_of_other_v`)."""
    if model.exists() and vae_digest:
        refuse_memory_of_other_v(model, vae_digest)


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


def build_memory(cfg: ExperimentConfig, action_dim: int, discrete: bool) -> Memory:
    """An untrained M of kind ``cfg.memory.kind`` (a lookup in
    :data:`worldmodels.memory.MEMORY_KINDS`) with ``cfg``'s settings, for actions of size
    ``action_dim`` (Discrete(action_dim) if ``discrete``)."""
    kind = MEMORY_KINDS.get(cfg.memory.kind)
    if kind is None:
        raise ConfigError(f"config key 'memory.kind': no memory model '{cfg.memory.kind}' "
                          f"is registered (known: {', '.join(MEMORY_KINDS)})")
    return kind.build(cfg, action_dim, discrete)


def sample_z(mu: torch.Tensor, logvar: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """z ~ N(mu, exp(logvar)): Ha's resampling, so M sees V's uncertainty."""
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


def _batch_losses(model: Memory, batch: dict[str, torch.Tensor], cfg: ExperimentConfig,
                  device: torch.device, generator: torch.Generator | None = None):
    b = {k: v.to(device) for k, v in batch.items()}
    z = sample_z(b["mu"], b["logvar"], generator)
    return model.loss(z, b["action"], b["reward"], b["done"], b["mask"],
                      cfg.memory.reward_weight, cfg.memory.done_weight,
                      cfg.memory.done_pos_weight), b["mask"].sum()


#: seed of the first of M's held-out z draws (draw k uses DRAW_SEED + k): the same draws
#: for every variant, seed and epoch, so their figures differ by the model alone
DRAW_SEED = 12345


def episode_batches(paths: list[Path], cfg: ExperimentConfig) -> Iterator[dict[str, Tensor]]:
    """Whole episodes, each one window from step 0 to its end (padded to the longest of
    its batch, episodes of similar length batched together): scored this way, M's state
    is carried through the whole episode as when C or the dream uses it."""
    by_length = sorted(paths, key=shard_length)  # stable: equal lengths keep their order
    size = cfg.memory.batch_size
    for i in range(0, len(by_length), size):
        chunk = by_length[i : i + size]
        yield from SequenceDataset(chunk, max(shard_length(p) for p in chunk), len(chunk),
                                   shuffle=False, z_dim=cfg.vae.z_dim)


def window_batches(paths: list[Path], cfg: ExperimentConfig) -> Iterator[dict[str, Tensor]]:
    """Held-out windows of ``memory.seq_len`` steps as in training, state reset at each."""
    return iter(SequenceDataset(paths, cfg.memory.seq_len, cfg.memory.batch_size,
                                shuffle=False, z_dim=cfg.vae.z_dim))


@torch.no_grad()
def score_memory(model: Memory, batches: Iterable[dict[str, Tensor]], cfg: ExperimentConfig,
                 device: torch.device, draw_seed: int | None) -> dict[str, float]:
    """Step-weighted held-out means over ``batches``: z drawn from N(mu, sigma) by a
    generator seeded with ``draw_seed``, or z = mu when it is None."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(draw_seed or 0)
    sums: dict[str, float] = {}
    steps = 0.0
    for batch in batches:
        if draw_seed is None:  # sigma = exp(-inf) = 0: z = mu exactly
            batch = {**batch, "logvar": torch.full_like(batch["logvar"], -math.inf)}
        losses, n = _batch_losses(model, batch, cfg, device, gen)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item() * n.item()
        steps += n.item()
    return {k: v / steps for k, v in sums.items()}


def _over_draws(model: Memory, batches: Callable[[], Iterable[dict[str, Tensor]]],
                cfg: ExperimentConfig, device: torch.device, draws: int, draw_seed: int,
                ) -> tuple[dict[str, float], float]:
    """(rates averaged over ``draws`` fixed z draws, standard error of the NLL across
    them: sample std / sqrt(draws); nan for one draw)."""
    runs = [score_memory(model, batches(), cfg, device, draw_seed + k) for k in range(draws)]
    mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    nll = [r["nll"] for r in runs]
    se = float(np.std(nll, ddof=1) / math.sqrt(draws)) if draws > 1 else float("nan")
    return mean, se


@torch.no_grad()
def evaluate_memory(model: Memory, paths: list[Path], cfg: ExperimentConfig,
                    device: torch.device, draw_seed: int = DRAW_SEED) -> dict[str, float]:
    """M's held-out figures, in nats per latent dimension for the NLL:

    ``nll`` (the headline), ``nll_se``: whole episodes with M's state carried from step 0
    to the end, averaged over ``memory.eval_draws`` fixed z draws, and the standard error
    of that average across the draws. The other rates (reward MSE, done metrics) are
    the same average.
    ``nll_mu``: whole episodes with z = mu (no draw; deterministic).
    ``nll_windows``, ``nll_windows_se``: ``memory.seq_len`` windows with the state reset
    at each (as M trains), averaged over the same number of draws.
    """
    draws = cfg.memory.eval_draws
    rates, se = _over_draws(model, lambda: episode_batches(paths, cfg), cfg, device, draws,
                            draw_seed)
    mu = score_memory(model, episode_batches(paths, cfg), cfg, device, None)
    windows, windows_se = _over_draws(model, lambda: window_batches(paths, cfg), cfg, device,
                                      draws, draw_seed)
    return {**rates, **done_metrics(rates), "nll_se": se, "nll_mu": mu["nll"],
            "nll_windows": windows["nll"], "nll_windows_se": windows_se}


def train_memory(cfg: ExperimentConfig, run: RunDir | None = None,
                 out_dir: Path | None = None, seed: int | None = None,
                 progress: bool = True, train_episodes: int = 0, epochs: int | None = None,
                 select_after: int = 0, episodes_below: int = 0,
                 epoch_check: EpochCheck | None = None) -> MemoryReport:
    """Train (or resume) M on the run's latents up to ``cfg.memory.epochs`` epochs; the
    run is ``cfg``'s default directory unless given.

    ``out_dir``: where M's files go (default: the run's ``memory/``). ``seed`` seeds
    initialisation and z resampling (default ``cfg.seed``); the data split always
    follows :meth:`RunDir.data_seed`, so runs with different seeds see the same data.
    ``train_episodes`` > 0 trains on that many of the training episodes only
    (:func:`~worldmodels.datasets.nested_subset` by the data seed), scored on the same
    held-out episodes (a point of a data curve). ``episodes_below`` > 0 trains on the
    training episodes whose index is below it only (say the first rounds' data of
    iterative training), scored on the same held-out episodes.

    A later round of iterative training (``run.py`` with ``run.iterations`` > 1) gives
    ``epochs``, the round's cumulative target instead of ``memory.epochs``, and
    ``select_after``, the epoch M had when the round began: only later epochs can be
    the round's best (the earlier ones trained on less data, and were scored on fewer
    held-out episodes), and ``memory.patience`` counts from the round's best.

    ``epoch_check`` runs on M after every scored epoch (say run.py's held-action check,
    :func:`agents.dream_check.epoch_checker`); its figures join the epoch's metrics, and
    ``memory.select_max_held`` > 0 chooses the best epoch by :func:`selection_key`.
    """
    run = run or RunDir.for_config(cfg)
    m = cfg.memory
    target = m.epochs if epochs is None else epochs
    seed = cfg.seed if seed is None else seed
    device = torch_device(cfg.device)
    files = run.memory if out_dir is None else MemoryFiles.at(out_dir)
    train_paths, holdout_paths, skipped_shards = latent_split(cfg, run)
    if episodes_below:
        train_paths = [p for p in train_paths if shard_index(p) < episodes_below]
        if not train_paths:
            raise ConfigError(f"{run.latents}: no training episode has an index below "
                              f"{episodes_below}")
    if train_episodes:
        if train_episodes > len(train_paths):
            raise ConfigError(f"{train_episodes} training episodes asked, "
                              f"{len(train_paths)} exist")
        train_paths = nested_subset(train_paths, train_episodes, run.data_seed(cfg))
    action_dim, discrete = action_info(train_paths[0])
    first = read_meta(train_paths[0])
    action_space, vae_digest = first["action_space"], first.get("vae_digest")
    check_memory_matches_latents(files.model, vae_digest)

    torch.manual_seed(seed)
    model = build_memory(cfg, action_dim, discrete).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=m.lr)
    start_epoch, _ = resume_training(files.model, files.state, model, optimizer,
                                     expect=model.config())
    metrics = [x for x in read_json(files.metrics, [], ("epoch", "train_seconds"))
               if x["epoch"] <= start_epoch]
    max_held = m.select_max_held
    if max_held > 0 and epoch_check is None:
        raise ConfigError("memory.select_max_held > 0 needs the held-action check of each "
                          "epoch: train M through run.py, train_frmdn.py or "
                          "agents.dream_check.train_memory_checked")
    best_epoch, best_key = _best_so_far(files, metrics, max_held, select_after)
    if out_dir is None:
        run.write_config(cfg, outputs=(files.dir,))  # inputs accepted
    else:
        check_writable(files.dir)

    dataset = SequenceDataset(train_paths, m.seq_len, m.batch_size, m.shuffle_buffer, seed=seed,
                              z_dim=cfg.vae.z_dim)
    loader = ShardLoader(dataset, batch_size=None, num_workers=cfg.data.loader_workers)
    lengths = {p: shard_length(p) for p in train_paths}  # read once, replayed every epoch
    step = sum(x.get("batches", 0) for x in metrics)
    writer = summary_writer(files.tensorboard, resumed_at=step)
    skipped_total = sum(x.get("skipped", 0) for x in metrics)
    generator = torch.Generator(device=device)
    meta = {"seed": seed, "done_pos_weight": m.done_pos_weight, "action_space": action_space,
            **({"vae_digest": vae_digest} if vae_digest else {})}
    if (metrics and metrics[-1]["epoch"] == start_epoch > select_after
            and "holdout_nll" in metrics[-1]
            and selection_key(metrics[-1], max_held) < best_key):
        # the last epoch was the best, killed before its weights were copied: copy them now
        best_epoch, best_key = start_epoch, selection_key(metrics[-1], max_held)
        save_model(files.best, model, meta={"epoch": best_epoch, **meta})

    for epoch in range(start_epoch, target):
        # patience is judged after scored epochs only: between scorings best_epoch cannot
        # move, so counting there would stop before the next scoring could show progress
        last_scored = bool(metrics) and "holdout_nll" in metrics[-1]
        if m.patience and best_epoch and last_scored and epoch - best_epoch >= m.patience:
            if progress:
                tqdm.write(f"M: no better epoch for {epoch - best_epoch} epochs "
                           f"(memory.patience={m.patience}); stopped after epoch {epoch}, "
                           f"best epoch {best_epoch}")
            break
        model.train()
        dataset.set_epoch(epoch)
        generator.manual_seed(seed * 1000 + epoch)
        started = time.perf_counter()
        skipped = ran = 0
        batches = dataset.batches_per_epoch(cfg.data.loader_workers, lengths.__getitem__)
        bar = tqdm(loader, total=batches, unit="batch", desc=f"M epoch {epoch + 1}/{target}",
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
        if skipped and not ran:  # nothing learnt: an error, not a model
            raise ConfigError(
                f"{files.dir}: every batch of M's epoch {epoch + 1} was non-finite and "
                f"skipped ({skipped}, memory.nonfinite=skip), so no model is saved; "
                "lower memory.lr or change the model (memory.*)")
        seconds = time.perf_counter() - started
        scored = (epoch + 1) % m.eval_every == 0 or epoch + 1 == target
        held = evaluate_memory(model, holdout_paths, cfg, device) if scored else {}
        checked = epoch_check(model) if scored and epoch_check is not None else {}
        for k, v in held.items():
            writer.add_scalar(f"m/holdout_{k}", v, step)
        for k, v in checked.items():
            writer.add_scalar(f"m/{k}", v, step)
        writer.add_scalar("m/seconds_per_epoch", seconds, step)
        skipped_total += skipped
        metrics.append({"epoch": epoch + 1, "train_seconds": seconds, "batches": ran,
                        "skipped": skipped, **{f"holdout_{k}": v for k, v in held.items()},
                        **checked})
        write_json_atomic(files.metrics, metrics)  # first: see vae_training
        epoch_meta = {"epoch": epoch + 1, **meta}
        if scored and m.keep_epochs:  # before the last weights: a kill retrains the epoch
            files.epoch_weights(epoch + 1).parent.mkdir(parents=True, exist_ok=True)
            save_model(files.epoch_weights(epoch + 1), model, meta=epoch_meta)
        save_model(files.model, model, meta=epoch_meta)
        save_state(files.state, {"optimizer": optimizer.state_dict(), "epoch": epoch + 1})
        if not scored:  # memory.eval_every: this epoch is not a candidate for the best
            if progress:
                tqdm.write(f"M epoch {epoch + 1}: {seconds:.1f}s (held-out scored every "
                           f"{m.eval_every} epochs)")
            continue
        if checked:  # a picture: after every file training resumes from
            plot_held_check(files.held_check_png, metrics, max_held)
        key = selection_key(metrics[-1], max_held)
        if key < best_key:  # after the last weights: see the copy on resume above
            best_epoch, best_key = epoch + 1, key
            save_model(files.best, model, meta=epoch_meta)
        writer.add_scalar("m/best_epoch", best_epoch, step)
        if progress:
            done = f", done skill {held['done_skill']:.3f}" if "done_skill" in held else ""
            tqdm.write(f"M epoch {epoch + 1}: held-out NLL {held['nll']:.4f} "
                       f"± {held['nll_se']:.4f} nats/dim (z = mu {held['nll_mu']:.4f}, "
                       f"windows {held['nll_windows']:.4f}){done}, {seconds:.1f}s"
                       + (f", skipped {skipped} batches" if skipped else "")
                       + ("".join(f", {k} {v:.3g}" for k, v in checked.items()))
                       + (" (best)" if best_epoch == epoch + 1 else ""))
    writer.close()
    last = next((x for x in reversed(metrics) if "holdout_nll" in x), None)
    if last is None:
        raise CheckpointError(f"{files.dir}: no scored epochs recorded (memory.epochs=0?)")
    chosen = next((x for x in metrics if x["epoch"] == best_epoch), last)
    nan = float("nan")
    return MemoryReport(
        epochs_done=metrics[-1]["epoch"], holdout_nll=chosen["holdout_nll"],
        holdout_reward_mse=chosen.get("holdout_reward_mse", nan),
        holdout_done_acc=chosen.get("holdout_done_acc", nan),
        holdout_done_skill=chosen.get("holdout_done_skill", nan),
        # the median: on a shared machine one disturbed epoch should not move the figure
        seconds_per_epoch=float(np.median([x["train_seconds"] for x in metrics])),
        skipped_batches=skipped_total,
        parameters=sum(p.numel() for p in model.parameters()),
        skipped_shards=skipped_shards,
        best_epoch=chosen["epoch"], holdout_nll_se=chosen.get("holdout_nll_se", nan),
        holdout_nll_mu=chosen.get("holdout_nll_mu", nan),
        holdout_nll_windows=chosen.get("holdout_nll_windows", nan),
        holdout_nll_windows_se=chosen.get("holdout_nll_windows_se", nan),
        last_holdout_nll=last["holdout_nll"], stopped_early=metrics[-1]["epoch"] < target,
        held_worst_ratio=chosen.get("held_worst_ratio", nan),
        held_worst_action=int(chosen.get("held_worst_action", -1)),
        held_passed=(-1 if max_held <= 0 else sum(
            selection_key(x, max_held)[0] == 0 for x in metrics
            if x["epoch"] > select_after and "holdout_nll" in x)),
    )


def plot_held_check(path: Path, metrics: list[dict[str, Any]], max_held: float) -> None:
    """Each checked epoch's worst held action, dream length / real length (log scale),
    with ``memory.select_max_held``'s line, as PNG at ``path``."""
    rows = [x for x in metrics if "held_worst_ratio" in x]
    hlines = {f"memory.select_max_held={max_held:g}": max_held} if max_held > 0 else {}
    plot_curves(path, {"worst held action": ([x["epoch"] for x in rows],
                                             [x["held_worst_ratio"] for x in rows])},
                "M's dream: the held-action check of every epoch", "epoch",
                "dream / real length (log)", hlines={"1 (as real)": 1.0, **hlines}, logy=True)


def _best_so_far(files: MemoryFiles, metrics: list[dict[str, Any]], max_held: float,
                 select_after: int = 0) -> tuple[int, tuple[int, float]]:
    """(epoch, :func:`selection_key`) of the weights in ``files.best``, if they are of a
    recorded epoch after ``select_after``; (0, (2, inf)) otherwise."""
    if files.best.exists():
        epoch = int(read_header(files.best).get("meta", {}).get("epoch", 0))
        for x in metrics if epoch > select_after else []:
            if x["epoch"] == epoch and "holdout_nll" in x:
                return epoch, selection_key(x, max_held)
    return 0, (2, math.inf)


def report_dict(report: MemoryReport) -> dict[str, Any]:
    return asdict(report)
