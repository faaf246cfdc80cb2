"""Datasets that stream from episode shards, so memory does not grow with the data.

* :func:`split_episodes` — a train / held-out split by episode, fixed by the seed and
  stable when more episodes are collected later.
* :func:`nested_subset` — nested training subsets of a data curve, fixed by the seed.
* :class:`FrameDataset` — shuffled batches of frames for V, through a bounded buffer.
* :class:`SequenceDataset` — shuffled batches of latent windows for M.

Both yield whole batches (use ``ShardLoader(ds, batch_size=None)``): collating frame by
frame would cost more than the model on a 2-core machine.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from worldmodels.checkpoint import read_json, write_json_atomic
from worldmodels.errors import InputError
from worldmodels.shards import (
    ShardError,
    ShardSpec,
    check_in_order,
    check_shard,
    load_frames,
    read_npz,
    shard_index,
    shard_length,
)


def _unit_hash(seed: int, name: str) -> float:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_usable(
    usable: Sequence[Path], listed: Sequence[Path], holdout_fraction: float, seed: int,
    min_episodes: int = 0, base_episodes: int = 0,
) -> tuple[list[Path], list[Path]]:
    """:func:`split_episodes` of every ``listed`` episode, corrupt ones too, then only
    the ``usable`` shards on each side: a shard skipped as corrupt
    (``data.skip_corrupt``) moves no other episode between training and held-out, where
    splitting the usable shards alone would whenever ``min_episodes`` tops the held-out
    set up. Episodes are matched by file name, so ``listed`` may name another stage's
    shards of the same episodes (M lists the rollouts too: an episode encode skipped
    has no latents)."""
    names = {Path(p).name: Path(p) for p in usable}
    every = {Path(p).name: Path(p) for p in listed} | names
    train, held = split_episodes(list(every.values()), holdout_fraction, seed, min_episodes,
                                 base_episodes)
    return ([names[p.name] for p in train if p.name in names],
            [names[p.name] for p in held if p.name in names])


def split_episodes(
    paths: Sequence[Path], holdout_fraction: float, seed: int, min_episodes: int = 0,
    base_episodes: int = 0,
) -> tuple[list[Path], list[Path]]:
    """Split shards into (train, held-out) by episode.

    Each episode gets a score fixed by ``(seed, file name)``; those scoring below
    ``holdout_fraction`` are held out (about that fraction of N). If that is fewer than
    ``min_episodes``, the next-lowest scores are held out too, up to the minimum. The
    minimum never takes more than half the episodes: with fewer than
    ``2 * min_episodes`` episodes, N // 2 are held out and one line on stderr says so.
    At least one episode always trains and, with two or more, at least one is held out.

    The below-threshold part never moves when episodes are added. The top-up can: while
    the minimum binds, a topped-up episode may go back to training as episodes are
    added, and while there are fewer than ``2 * min_episodes`` episodes (the warning's
    regime) N // 2 grows with N, so an episode a model trained on may become held-out.
    From ``2 * min_episodes`` episodes on, no training episode becomes held-out. (Topping up to
    ``round(fraction * N)`` as well would move episodes at every size, so the fraction
    is kept as the threshold.) V and M both split with this function, so their
    held-out episodes are the same.

    ``base_episodes`` > 0 (iterative training, :func:`worldmodels.config.holdout_base`):
    only the episodes with an index below it are split as above; those at or above it
    (added by later rounds) are held out by the threshold alone, so the first round's
    split never changes and each new episode's side is fixed by its own name.
    """
    if base_episodes > 0:
        first = [Path(p) for p in paths if shard_index(Path(p)) < base_episodes]
        later = sorted(Path(p) for p in paths if shard_index(Path(p)) >= base_episodes)
        train, held = split_episodes(first, holdout_fraction, seed, min_episodes)
        late_held = {p for p in later if _unit_hash(seed, p.name) < holdout_fraction}
        return (sorted(train + [p for p in later if p not in late_held]),
                sorted(held + sorted(late_held)))
    paths = sorted(Path(p) for p in paths)
    n = len(paths)
    scores = {p: _unit_hash(seed, p.name) for p in paths}
    ranked = sorted(paths, key=scores.__getitem__)
    floor = min(min_episodes, n // 2)
    wanted = max(floor, 1 if n >= 2 else 0)
    count = sum(scores[p] < holdout_fraction for p in paths)
    count = min(max(count, wanted), max(n - 1, 0))
    if floor < min_episodes:
        print(f"warning: only {n} episode(s), so {count} held out, fewer than "
              f"data.holdout_min_episodes={min_episodes} (collect at least "
              f"{2 * min_episodes})", file=sys.stderr)
    held = set(ranked[:count])
    return [p for p in paths if p not in held], [p for p in paths if p in held]


def nested_subset(paths: Sequence[Path], n: int, seed: int) -> list[Path]:
    """``n`` of ``paths`` (sorted by name on return): those first in an order fixed by
    ``(seed, file name)``. The subsets are nested (the first n of a larger n are the
    same episodes) and, unlike the first n by name, draw from every part of the data
    in proportion, e.g. from each policy of a mixed collection (``random:2000,linear``
    names its random episodes first)."""
    ranked = sorted((Path(p) for p in paths), key=lambda p: _unit_hash(seed, "subset:" + p.name))
    return sorted(ranked[:n])


def _worker_slice(items: Sequence) -> tuple[Sequence, int]:
    info = get_worker_info()
    if info is None:
        return items, 0
    return items[info.id :: info.num_workers], info.id


class WorkerFailure:
    """Bad input (an :class:`InputError`) met in a DataLoader worker, passed to the
    main process as data: DataLoader would re-raise it wrapped in the worker's whole
    traceback; :class:`ShardLoader` raises the error itself, its one line intact."""

    def __init__(self, error: InputError):
        self.error = error


class ShardLoader(DataLoader):
    """A DataLoader over a shard stream that raises a worker's :class:`InputError` as
    it was raised (one line naming the shard), not as a wrapped worker traceback."""

    def __iter__(self):  # type: ignore[override]
        for batch in super().__iter__():
            if isinstance(batch, WorkerFailure):
                raise batch.error
            yield batch


class _ShardStream(IterableDataset):
    """Common part: shard order per epoch, worker split, corrupt-shard policy."""

    def __iter__(self) -> Iterator:
        try:
            yield from self._iter()
        except InputError as err:
            if get_worker_info() is None:
                raise
            yield WorkerFailure(err)  # see ShardLoader

    def _iter(self) -> Iterator:
        raise NotImplementedError

    def __init__(self, paths: Sequence[Path], seed: int, shuffle: bool, skip_corrupt: bool):
        self.paths = [Path(p) for p in paths]
        self.seed = seed
        self.shuffle = shuffle
        self.skip_corrupt = skip_corrupt
        self.epoch = 0
        self.skipped: list[str] = []

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle differently (but reproducibly) each epoch."""
        self.epoch = epoch

    def _ordered(self, worker: tuple[int, int] | None = None,
                 ) -> tuple[list[Path], np.random.Generator]:
        """This epoch's shard order and random stream for the calling DataLoader worker,
        or for ``worker`` = (id, number of workers)."""
        if worker is None:
            paths, index = _worker_slice(self.paths)
        else:
            paths, index = self.paths[worker[0] :: worker[1]], worker[0]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        order = list(paths)
        if self.shuffle:
            order = [order[i] for i in rng.permutation(len(order))]
        return order, rng

    def _read(self, path: Path, reader: Callable[[Path], object]) -> object | None:
        try:
            return reader(path)
        except ShardError:
            if not self.skip_corrupt:
                raise
            self.skipped.append(str(path))
            return None


class FrameDataset(_ShardStream):
    """Batches of frames ``uint8 (B, 64, 64, 3)`` streamed from rollout shards.

    Memory is bounded by ``shuffle_buffer`` frames plus one episode: when the buffer
    fills, a random half is emitted as batches and the rest stays to mix with the next
    episodes. With ``shuffle=False`` frames stream in shard order with no buffer.
    ``max_frames`` > 0 ends the pass after about that many frames.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        batch_size: int,
        shuffle_buffer: int = 20000,
        seed: int = 0,
        shuffle: bool = True,
        max_frames: int = 0,
        skip_corrupt: bool = False,
    ):
        super().__init__(paths, seed, shuffle, skip_corrupt)
        self.batch_size = batch_size
        self.capacity = max(shuffle_buffer, 2 * batch_size)
        self.max_frames = max_frames

    def _iter(self) -> Iterator[torch.Tensor]:
        order, rng = self._ordered()
        info = get_worker_info()
        budget = self.max_frames // (info.num_workers if info else 1)
        batches = self._shuffled(order, rng) if self.shuffle else self._in_order(order)
        emitted = 0
        for batch in batches:
            yield torch.from_numpy(batch)
            emitted += len(batch)
            if budget and emitted >= budget:
                return

    def _frames(self, order: list[Path]) -> Iterator[np.ndarray]:
        shape = None
        for path in order:
            frames = self._read(path, load_frames)
            if frames is None:
                continue
            if shape is not None and frames.shape[1:] != shape:
                raise ShardError(f"{path}: frames {frames.shape[1:]}, others {shape}")
            shape = frames.shape[1:]
            yield frames

    def _in_order(self, order: list[Path]) -> Iterator[np.ndarray]:
        """Shard order, no buffer: memory is one episode whatever the data size."""
        B = self.batch_size
        carry: np.ndarray | None = None
        for frames in self._frames(order):
            if carry is not None:
                frames = np.concatenate([carry, frames])
            full = len(frames) // B * B
            for i in range(0, full, B):
                yield frames[i : i + B]
            carry = frames[full:] if full < len(frames) else None
        if carry is not None:
            yield carry

    def _shuffled(self, order: list[Path], rng: np.random.Generator) -> Iterator[np.ndarray]:
        """A buffer of ``capacity`` frames: when full, emit a random half, keep the rest.

        The kept frames are moved into the emitted slots in chunks, so the only memory
        beyond the buffer is one episode and one chunk, however much data streams through.
        """
        B = self.batch_size
        buf: np.ndarray | None = None
        n = 0
        for frames in self._frames(order):
            if buf is None:
                buf = np.empty((self.capacity, *frames.shape[1:]), dtype=np.uint8)
            pos = 0
            while pos < len(frames):
                take = min(self.capacity - n, len(frames) - pos)
                buf[n : n + take] = frames[pos : pos + take]
                n += take
                pos += take
                if n == self.capacity:
                    perm = rng.permutation(n)
                    k = n // 2 // B * B
                    for i in range(0, k, B):
                        yield buf[np.sort(perm[i : i + B])]
                    n = _compact(buf, perm[:k], n)
        if buf is not None and n:
            perm = rng.permutation(n)
            for i in range(0, n, B):
                yield buf[np.sort(perm[i : i + B])]


def _compact(buf: np.ndarray, emitted: np.ndarray, n: int, chunk: int = 1024) -> int:
    """Move the frames of ``buf[:n]`` not in ``emitted`` to the front; returns the new count.

    Kept frames already below the new end stay put; those above it fill the emitted
    slots below it, ``chunk`` frames at a time (no copy of the whole buffer).
    """
    new_n = n - len(emitted)
    holes = np.sort(emitted[emitted < new_n])
    is_emitted = np.zeros(n, dtype=bool)
    is_emitted[emitted] = True
    movers = np.nonzero(~is_emitted[new_n:])[0] + new_n
    for i in range(0, len(holes), chunk):
        buf[holes[i : i + chunk]] = buf[movers[i : i + chunk]]
    return new_n


def count_frames(paths: Sequence[Path]) -> int:
    """Total frames (T+1 per episode) without decompressing any frames."""
    return sum(shard_length(p) + 1 for p in paths)


def mean_frame(paths: Sequence[Path]) -> np.ndarray:
    """The mean training frame, float64 (H, W, 3) in [0, 1], accumulated shard by shard."""
    total: np.ndarray | None = None
    count = 0
    for path in paths:
        frames = load_frames(path)
        s = frames.sum(axis=0, dtype=np.float64)
        total = s if total is None else total + s
        count += len(frames)
    if total is None:
        raise ShardError("mean_frame: no frames in the given shards")
    return total / count / 255.0


LATENT_KEYS = ("mu", "logvar", "action", "reward", "terminated")


def read_latents(path: Path, z_dim: int | None = None) -> dict[str, np.ndarray]:
    """A latent shard's arrays, checked: mu, logvar float32 (T+1, z) finite; reward
    float32 (T,) finite; terminated bool (T,); action (T, ...) finite. ``z_dim`` is the size
    the caller expects. Any violation is a :class:`ShardError` naming the file."""
    data = read_npz(path, LATENT_KEYS)
    mu, logvar = data["mu"], data["logvar"]
    reward, action, terminated = data["reward"], data["action"], data["terminated"]
    T = len(reward) if reward.ndim == 1 else -1
    checks = [  # in order (check_in_order): np.isfinite only on what is a number type
        (lambda: reward.dtype == np.float32 and reward.ndim == 1,
         f"reward is {reward.dtype} {reward.shape}, expected float32 (T,)"),
        (lambda: mu.dtype == np.float32 and mu.ndim == 2 and mu.shape[0] == T + 1,
         f"mu is {mu.dtype} {mu.shape}, expected float32 ({T + 1}, z)"),
        (lambda: logvar.shape == mu.shape and logvar.dtype == np.float32,
         f"logvar is {logvar.dtype} {logvar.shape}, expected float32 {mu.shape}"),
        (lambda: z_dim is None or mu.shape[-1] == z_dim,
         f"latents have z = {mu.shape[-1]}, but the config's vae.z_dim is {z_dim}"),
        (lambda: terminated.shape == (T,) and terminated.dtype == np.bool_,
         "terminated must be bool (T,)"),
        (lambda: action.shape[:1] == (T,), f"action shape {action.shape} for {T} steps"),
        (lambda: bool(np.isfinite(mu).all() and np.isfinite(logvar).all()),
         "mu or logvar has NaN/Inf"),
        (lambda: bool(np.isfinite(reward).all()), "reward has NaN/Inf"),
        (lambda: np.issubdtype(action.dtype, np.number),
         f"action dtype {action.dtype}, expected a number type"),
        (lambda: bool(np.isfinite(action).all()), "action has NaN/Inf"),
    ]
    check_in_order(path, checks)
    return data


def usable_shards(paths: Sequence[Path], reader: Callable[[Path], object], skip_corrupt: bool,
                  record: Path, kind: str, spec: ShardSpec | None = None,
                  check_kind: str | None = None) -> tuple[list[Path], int]:
    """The one place where a stage accepts its shards, before any work.

    Every shard's arrays are checked against ``spec`` (what the run's config fixes:
    frame size, z size, action space) from their headers, which is cheap. Without
    ``skip_corrupt``, the first bad shard stops the stage (a :class:`ShardError` naming
    the file and the array) and all shards are returned with 0. With it, (the shards
    that pass and that ``reader`` reads whole, how many failed), the failed ones listed
    under ``kind`` (``rollouts`` or ``latents``; a stage with a list of its own, such as
    ``encode``, names the shards' kind in ``check_kind``) in the JSON file ``record``."""
    spec = spec or ShardSpec()
    check_kind = check_kind or kind
    if not skip_corrupt:
        for path in paths:
            check_shard(path, check_kind, spec)
        return list(paths), 0

    def read(path: Path) -> object:
        check_shard(path, check_kind, spec)
        return reader(path)

    good, bad = screen_shards(paths, read)
    listed = read_json(record, {})
    listed[kind] = bad
    write_json_atomic(record, listed)
    if bad:
        print(f"skipped {len(bad)} corrupt {kind} shard(s) of {len(paths)} "
              f"(listed in {record}); first: {bad[0]}")
    return good, len(bad)


def add_skipped(record: Path, kind: str, error: str) -> None:
    """List one more corrupt ``kind`` shard (its error line) in the JSON file ``record``."""
    listed = read_json(record, {})
    if error not in listed.get(kind, []):
        listed[kind] = [*listed.get(kind, []), error]
        write_json_atomic(record, listed)
    print(f"skipped a corrupt {kind} shard: {error}")


def screen_shards(paths: Sequence[Path], reader: Callable[[Path], object],
                  ) -> tuple[list[Path], list[str]]:
    """(readable shards, one error line per bad one): every shard read once by ``reader``."""
    good, bad = [], []
    for path in paths:
        try:
            reader(path)
            good.append(Path(path))
        except ShardError as err:
            bad.append(str(err))
    return good, bad


class SequenceDataset(_ShardStream):
    """Batches of latent windows for M, streamed from latent shards.

    Each episode is cut into windows of ``seq_len + 1`` latents (a random offset per
    epoch when shuffling); windows pass through a bounded shuffle buffer. A batch is a
    dict of tensors::

        mu, logvar  float32 (B, L+1, z)    latents of frames t .. t+L
        action      float32 (B, L, A) or int64 (B, L)
        reward      float32 (B, L)
        done        float32 (B, L)         1 where the episode terminated
        mask        float32 (B, L)         0 on padding after an episode's end
    """

    def __init__(
        self,
        paths: Sequence[Path],
        seq_len: int,
        batch_size: int,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        shuffle: bool = True,
        skip_corrupt: bool = False,
        z_dim: int | None = None,
    ):
        super().__init__(paths, seed, shuffle, skip_corrupt)
        self.z_dim = z_dim
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.capacity = max(shuffle_buffer, 2 * batch_size)

    def _starts(self, T: int, rng: np.random.Generator) -> list[int]:
        """Where an episode of T steps is cut into windows this epoch.

        With shuffling the cut points move by a random offset each epoch; the pieces
        before the first cut and after the last are padded windows (so the first steps
        and the terminal step are trained every epoch), which makes one window more
        than ceil(T / L) for most offsets.
        """
        L = self.seq_len
        offset = int(rng.integers(L)) if self.shuffle and T > L else 0
        return ([0] if offset else []) + list(range(offset, T, L))

    def _windows(self, data: dict[str, np.ndarray], rng: np.random.Generator) -> list[dict]:
        """Cut an episode into windows that cover every step exactly once."""
        L = self.seq_len
        T = len(data["reward"])
        starts = self._starts(T, rng)
        out = []
        for i, s in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else T
            n = min(L, end - s)
            pad = L - n
            act = data["action"][s : s + n]
            window = {
                "mu": _pad(data["mu"][s : s + n + 1], pad),
                "logvar": _pad(data["logvar"][s : s + n + 1], pad),
                "action": _pad(act, pad),
                "reward": _pad(data["reward"][s : s + n], pad),
                "done": _pad(data["terminated"][s : s + n].astype(np.float32), pad),
                "mask": _pad(np.ones(n, np.float32), pad),
            }
            out.append(window)
        return out

    def _iter(self) -> Iterator[dict[str, torch.Tensor]]:
        def windows(path: Path, rng: np.random.Generator) -> list[dict]:
            data = self._read(path, lambda p: read_latents(p, self.z_dim))
            return [] if data is None else self._windows(data, rng)

        for batch in self._batches(*self._ordered(), windows):
            yield _stack(batch)

    def batches_per_epoch(self, workers: int = 0,
                          lengths: Callable[[Path], int] = shard_length) -> int:
        """Batches this epoch (see :meth:`set_epoch`) yields through a DataLoader with
        ``workers`` worker processes: the same cuts and shuffles, replayed from each
        shard's length alone (no corrupt shards skipped)."""
        def windows(path: Path, rng: np.random.Generator) -> list[None]:
            return [None] * len(self._starts(lengths(path), rng))

        slices = [(i, workers) for i in range(workers)] if workers > 0 else [None]
        return sum(sum(1 for _ in self._batches(*self._ordered(w), windows)) for w in slices)

    def _batches(self, order: list[Path], rng: np.random.Generator,
                 windows: Callable[[Path, np.random.Generator], list]) -> Iterator[list]:
        """Lists of windows in batches: through the bounded shuffle buffer, which emits
        whole batches of a shuffled half when full, then the rest at the end."""
        buffer: list = []
        for path in order:
            buffer += windows(path, rng)
            if len(buffer) >= self.capacity:
                if self.shuffle:
                    buffer = [buffer[i] for i in rng.permutation(len(buffer))]
                k = (len(buffer) // 2 // self.batch_size) * self.batch_size
                for i in range(0, k, self.batch_size):
                    yield buffer[i : i + self.batch_size]
                buffer = buffer[k:]
        if self.shuffle:
            buffer = [buffer[i] for i in rng.permutation(len(buffer))]
        for i in range(0, len(buffer), self.batch_size):
            yield buffer[i : i + self.batch_size]


def _pad(x: np.ndarray, pad: int) -> np.ndarray:
    if pad == 0:
        return x
    return np.concatenate([x, np.zeros((pad, *x.shape[1:]), dtype=x.dtype)])


def _stack(windows: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.stack([w[k] for w in trim_padding(windows)]))
            for k in windows[0]}


#: window keys with one entry per frame (L+1); the others have one per step (L)
FRAME_KEYS = ("mu", "logvar")


def trim_padding(windows: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The windows of one batch without the trailing steps that every one of them pads:
    steps (L, ...) cut to the longest window's n, latents (L+1, z) to n+1 (views).

    Whole-episode windows (``memory.seq_len`` above most episodes' length) are mostly
    padding: TakeCover's data episodes run a few hundred of 1,000 steps. The losses are
    masked means and M is causal, so the cut changes no loss, only the work."""
    steps = max(1, max(int(w["mask"].sum()) for w in windows))
    if steps == len(windows[0]["mask"]):
        return windows
    return [{k: v[: steps + (k in FRAME_KEYS)] for k, v in w.items()} for w in windows]
