"""Episode shards: one ``.npz`` file per episode, written atomically, read without pickle.

A rollout shard holds::

    obs         uint8   (T+1, 64, 64, 3)   frames o_0 .. o_T
    action      float32 (T, A)  or int64 (T,)
    reward      float32 (T,)
    terminated  bool    (T,)
    truncated   bool    (T,)
    meta        str     JSON: env id, seed, policy, episode index

A latent shard (written by ``encode``) holds the same ``action``/``reward``/... with
``mu`` and ``logvar`` float32 (T+1, z) in place of ``obs``.

Shards are written by :func:`worldmodels.atomic.write_atomic` (a hidden temporary name
in the same directory, flushed to disk, then renamed): a reader (or a rerun after
SIGKILL) never sees a partial file.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from worldmodels.atomic import remove_stale_temps, write_atomic
from worldmodels.errors import InputError

SHARD_GLOB = "ep_*.npz"


class ShardError(InputError, ValueError):
    """A shard is corrupt, truncated, or has the wrong keys, shapes or dtypes."""


def shard_name(index: int) -> str:
    return f"ep_{index:06d}.npz"


def shard_index(path: Path) -> int:
    return int(Path(path).stem.split("_")[1])


def is_shard_name(name: str) -> bool:
    """``ep_000042.npz`` as :func:`shard_name` writes it; not a copy a user left beside
    it (``ep_000042_bak.npz``, ``ep_42.npz``), which would count an episode twice."""
    stem, dot, ext = name.partition(".")
    digits = stem[3:]
    return (stem.startswith("ep_") and dot == "." and ext == "npz" and digits.isdigit()
            and digits.isascii() and shard_name(int(digits)) == name)


def list_shards(directory: Path) -> list[Path]:
    """Complete shards in ``directory``, sorted by episode index: temp files, and files
    not named as :func:`shard_name` names them, are not shards."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob(SHARD_GLOB) if is_shard_name(p.name))


def remove_partial_files(directory: Path) -> int:
    """Delete temp files left by killed writers (a live writer's, another host's, are
    kept: :func:`worldmodels.atomic.remove_stale_temps`); returns how many were removed."""
    return remove_stale_temps(directory)


def check_in_order(source: str | Path, checks: Sequence[tuple[Callable[[], bool], str]]) -> None:
    """Raise a :class:`ShardError` ``<source>: <why>`` for the first check that fails.
    Each check runs only once those before it hold, so a later one (``np.isfinite`` on
    the rewards) may assume the dtypes and shapes the earlier ones confirmed."""
    for ok, why in checks:
        if not ok():
            raise ShardError(f"{source}: {why}")


def write_npz_atomic(path: Path, arrays: Mapping[str, np.ndarray], compress_level: int = 1) -> None:
    """Write an ``.npz`` (readable by ``np.load``) atomically: temp file, fsync, rename.

    ``np.savez_compressed`` fixes zlib at level 6; level 1 writes several times faster
    for frames at nearly the same size, which keeps collection workers env-bound.
    """
    compression = zipfile.ZIP_DEFLATED if compress_level > 0 else zipfile.ZIP_STORED

    def write(raw) -> None:
        with zipfile.ZipFile(
            raw, "w", compression=compression,
            compresslevel=compress_level if compress_level > 0 else None,
        ) as zf:
            for key, value in arrays.items():
                with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)

    write_atomic(path, write)


#: first bytes of a zip archive (an .npz): a local file header, or an empty archive's end
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


def read_npz(path: Path, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Read (some) arrays of an ``.npz`` with ``allow_pickle=False``.

    Any failure (truncated zip, bad CRC, object arrays, missing key) becomes a
    :class:`ShardError` naming the file.
    """
    path = Path(path)
    with unreadable_as_shard_error(path), open(path, "rb") as fh:
        magic = fh.read(4)
        # (np.load would read a bare .npy as one array, and call a text file "pickled data")
        if magic not in ZIP_MAGICS:
            raise ShardError(f"{path}: unreadable shard: " + (
                "an empty file" if not magic else
                f"not an .npz archive (a zip file starts with b'PK', this one with {magic!r})"))
        fh.seek(0)
        with np.load(fh, allow_pickle=False) as data:
            names = keys if keys is not None else tuple(data.files)
            missing = [k for k in names if k not in data.files]
            if missing:
                raise ShardError(f"{path}: missing array(s) {missing} (has {data.files})")
            return {k: data[k] for k in names}


@contextmanager
def unreadable_as_shard_error(path: Path) -> Iterator[None]:
    """A truncated zip, a bad CRC or header, or an unreadable file inside the block
    becomes a :class:`ShardError` naming ``path`` (a missing file stays what it is)."""
    try:
        yield
    except (ShardError, FileNotFoundError):
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as err:
        raise ShardError(f"{path}: unreadable shard ({type(err).__name__}: {err})") from err


@dataclass
class RolloutShard:
    """One episode of frames, actions, rewards and end flags (see module docstring)."""

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        """Number of transitions T (there are T+1 frames)."""
        return len(self.reward)

    def validate(self, source: str = "shard") -> None:
        T = len(self.reward) if self.reward.ndim == 1 else -1
        checks = [  # in order, each evaluated only once those above it hold
            (lambda: self.reward.dtype == np.float32 and self.reward.ndim == 1,
             f"reward is {self.reward.dtype} {self.reward.shape}, expected float32 (T,)"),
            (lambda: self.obs.dtype == np.uint8, f"obs dtype {self.obs.dtype}, expected uint8"),
            (lambda: self.obs.ndim == 4 and self.obs.shape[-1] == 3,
             f"obs shape {self.obs.shape}, expected (T+1, H, W, 3)"),
            (lambda: self.obs.shape[0] == T + 1,
             f"obs has {self.obs.shape[0] if self.obs.ndim else 0} frames for {T} steps"),
            (lambda: self.action.shape[:1] == (T,),
             f"action shape {self.action.shape} for {T} steps"),
            (lambda: self.action.dtype in (np.float32, np.int64),
             f"action dtype {self.action.dtype}, expected float32 or int64"),
            (lambda: bool(np.isfinite(self.reward).all()), "reward has NaN/Inf"),
            (lambda: bool(np.isfinite(self.action).all()), "action has NaN/Inf"),
            (lambda: self.terminated.shape == (T,) and self.terminated.dtype == np.bool_,
             "terminated must be bool (T,)"),
            (lambda: self.truncated.shape == (T,) and self.truncated.dtype == np.bool_,
             "truncated must be bool (T,)"),
        ]
        check_in_order(source, checks)

    def save(self, path: Path, compress_level: int = 1) -> None:
        self.validate(str(path))
        write_npz_atomic(
            path,
            {
                "obs": self.obs,
                "action": self.action,
                "reward": self.reward,
                "terminated": self.terminated,
                "truncated": self.truncated,
                "meta": np.array(json.dumps(self.meta)),
            },
            compress_level=compress_level,
        )

    @classmethod
    def load(cls, path: Path) -> RolloutShard:
        data = read_npz(path, ("obs", "action", "reward", "terminated", "truncated", "meta"))
        shard = cls(
            obs=data["obs"],
            action=data["action"],
            reward=data["reward"],
            terminated=data["terminated"],
            truncated=data["truncated"],
            meta=_read_meta(data["meta"], path),
        )
        shard.validate(str(path))
        return shard


@dataclass(frozen=True)
class ShardSpec:
    """What a run fixes about its shards: the frame size (``env.frame_size``), the
    latent size (``vae.z_dim``) and the action space (:func:`describe_action_space`;
    None: each shard's own, from its meta)."""

    frame_size: int | None = None
    z_dim: int | None = None
    action_space: dict[str, Any] | None = None


def array_headers(path: Path, keys: tuple[str, ...]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of arrays of an ``.npz``, read from each member's ``.npy`` header
    alone: cheap however large the arrays (nothing past the header is decompressed)."""
    path = Path(path)
    out = {}
    with unreadable_as_shard_error(path), zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        missing = [k for k in keys if f"{k}.npy" not in names]
        if missing:
            raise ShardError(f"{path}: missing array(s) {missing}")
        for key in keys:
            with zf.open(f"{key}.npy") as fh:
                version = np.lib.format.read_magic(fh)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read(fh)
            if dtype.hasobject:
                raise ShardError(f"{path}: '{key}' holds Python objects (a pickle); refused")
            out[key] = (tuple(shape), dtype)
    return out


def _action_layout(space: dict[str, Any]) -> tuple[tuple[int, ...], type]:
    """(shape of one action, dtype) that an action space's shard arrays have."""
    if not isinstance(space, dict):
        raise ShardError(f"action space description {space!r} is not a mapping")
    if space.get("type") == "discrete":
        return (), np.int64
    try:
        return tuple(int(n) for n in space.get("shape", ())), np.float32
    except (TypeError, ValueError) as err:
        raise ShardError(f"action space description {space!r}: shape ({err})") from None


def check_shard(path: Path, kind: str, spec: ShardSpec) -> None:
    """Check a ``rollouts`` or ``latents`` shard's arrays against what the run fixes
    (``spec``), from their headers: a shard of another frame size, latent size or
    action width is a :class:`ShardError` naming the file and the array."""
    path = Path(path)
    image = ("obs",) if kind == "rollouts" else ("mu", "logvar")
    arrays = array_headers(path, (*image, "action", "reward"))
    if len(arrays["reward"][0]) != 1 or arrays["reward"][1] != np.float32:
        raise ShardError(f"{path}: 'reward' is {arrays['reward'][1]} {arrays['reward'][0]}, "
                         "expected float32 (T,)")
    T = arrays["reward"][0][0]
    if kind == "rollouts":
        F = spec.frame_size
        shape, dtype = arrays["obs"]
        want = (T + 1, F, F, 3) if F else None
        if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or shape[0] != T + 1 \
                or (want and shape != want):
            expected = f"uint8 {want}" if want else f"uint8 ({T + 1}, H, W, 3)"
            why = f" (env.frame_size={F})" if F else ""
            raise ShardError(f"{path}: 'obs' is {dtype} {shape}, expected {expected}{why}")
    else:
        for key in image:
            shape, dtype = arrays[key]
            z = spec.z_dim
            if dtype != np.float32 or len(shape) != 2 or shape[0] != T + 1:
                raise ShardError(f"{path}: '{key}' is {dtype} {shape}, expected float32 "
                                 f"({T + 1}, z)")
            if z and shape[1] != z:
                raise ShardError(f"{path}: latents have z = {shape[1]}, but the config's "
                                 f"vae.z_dim is {z} ('{key}' is {shape})")
    space = spec.action_space or read_meta(path).get("action_space")
    if space:
        try:
            tail, dtype = _action_layout(space)
        except ShardError as err:
            raise ShardError(f"{path}: {err}") from None
        shape, got = arrays["action"]
        if shape != (T, *tail) or got != dtype:
            raise ShardError(f"{path}: 'action' is {got} {shape}, but the run's action space "
                             f"({space.get('type')} {space.get('shape', space.get('n'))}) "
                             f"needs {np.dtype(dtype)} {(T, *tail)}")


def _read_meta(value: np.ndarray, path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(str(value))
    except json.JSONDecodeError as err:
        raise ShardError(f"{path}: meta is not JSON: {err}") from err
    if not isinstance(meta, dict):
        raise ShardError(f"{path}: meta must be a JSON object")
    return meta


def load_frames(path: Path) -> np.ndarray:
    """Only the frames of a rollout shard: uint8 (T+1, H, W, 3)."""
    obs = read_npz(path, ("obs",))["obs"]
    if obs.dtype != np.uint8 or obs.ndim != 4 or obs.shape[-1] != 3:
        raise ShardError(f"{path}: obs is {obs.dtype} {obs.shape}, expected uint8 (T+1, H, W, 3)")
    return obs


def shard_length(path: Path) -> int:
    """Transitions T of a shard, read from its small ``reward`` member only."""
    return int(read_npz(path, ("reward",))["reward"].shape[0])


def read_meta(path: Path) -> dict[str, Any]:
    return _read_meta(read_npz(path, ("meta",))["meta"], path)


def describe_action_space(space: gym.Space) -> dict[str, Any]:
    """JSON-able action space for a shard's meta: ``{"type": "discrete", "n": 3,
    "start": 0}`` or ``{"type": "box", "shape", "low", "high"}``."""
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.Box):
        return {"type": "box", "shape": list(space.shape), "low": space.low.tolist(),
                "high": space.high.tolist()}
    raise ValueError(f"unsupported action space {space}")


def action_space_from_meta(info: Any, source: Path | str = "action space") -> gym.Space:
    """The inverse of :func:`describe_action_space`; a description it cannot read is a
    :class:`ShardError` naming ``source`` (the file that holds it)."""
    try:
        if info.get("type") == "discrete":
            return gym.spaces.Discrete(int(info["n"]), start=int(info.get("start", 0)))
        if info.get("type") == "box":
            return gym.spaces.Box(np.array(info["low"], np.float32),
                                  np.array(info["high"], np.float32), tuple(info["shape"]),
                                  np.float32)
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ShardError(f"{source}: unreadable action space description {info!r} "
                         f"({type(err).__name__}: {err})") from None
    raise ShardError(f"{source}: unsupported action space description {info!r}")
