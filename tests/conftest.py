"""Shared fixtures: small synthetic shards and configs that write under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
if "PYTEST_XDIST_WORKER" in os.environ:
    # One pytest worker a core (pyproject's `-n auto`): a worker on torch's default thread
    # count would share its core with the other workers' threads, and OpenMP's spinning
    # threads then wait on each other (benchmark (g)); 1 thread each took CI's pytest from
    # 6 min 19 s to 5 min 15 s on 2 cores. Set before torch is imported, so the
    # subprocesses the tests start (kill-and-rerun tests, process back-ends) inherit it.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from worldmodels.config import load_config  # noqa: E402
from worldmodels.shards import RolloutShard, shard_name  # noqa: E402


def synthetic_shard(index: int, T: int = 30, action_dim: int = 3) -> RolloutShard:
    """Frames whose pixel (0, 0) encodes (episode, step), so tests can track each frame."""
    rng = np.random.default_rng(index)
    obs = rng.integers(0, 256, size=(T + 1, 64, 64, 3), dtype=np.uint8)
    obs[:, 0, 0, 0] = index
    obs[:, 0, 0, 1] = np.arange(T + 1) % 256
    obs[:, 0, 0, 2] = np.arange(T + 1) // 256
    return RolloutShard(
        obs=obs,
        action=rng.uniform(-1, 1, size=(T, action_dim)).astype(np.float32),
        reward=rng.normal(size=T).astype(np.float32),
        terminated=np.eye(1, T, T - 1, dtype=bool)[0],
        truncated=np.zeros(T, dtype=bool),
        meta={"env_id": "synthetic", "index": index},
    )


def write_shards(directory: Path, n: int, T: int = 30) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = directory / shard_name(i)
        synthetic_shard(i, T).save(path)
        paths.append(path)
    return paths


class PicklePayload:
    """Unpickling this creates ``marker``: proof that a loader executed a pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs) for every Ray test of the session: starting Ray's
    worker processes (each imports torch) costs more than the tests themselves."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def pickle_marker(tmp_path):
    """A path that exists only if a planted pickle was executed."""
    marker = tmp_path / "pickle_was_executed"
    yield marker
    assert not marker.exists(), "a planted pickle was executed"


@pytest.fixture
def tiny_cfg(tmp_path):
    """The CarRacing quick preset, shrunk, writing under tmp_path."""
    return load_config("carracing", ["quick"], [
        f"root={tmp_path / 'runs'}", "collect.episodes=2", "env.max_episode_steps=20",
        "collect.workers=1", "vae.epochs=1", "vae.batch_size=16", "data.shuffle_buffer=64",
        "vae.grid_frames=4", "vae.max_holdout_frames=0",
    ])


def run_of(cfg) -> Path:
    """The directory of ``cfg``'s run at its default place."""
    from worldmodels.run_dir import RunDir

    return RunDir.for_config(cfg).path


#: CarRacing's action space as collect.py records it in shard and checkpoint meta
CAR_ACTIONS = {"type": "box", "shape": [3], "low": [-1.0, 0.0, 0.0], "high": [1.0, 1.0, 1.0]}


@pytest.fixture
def tiny_run(tiny_cfg):
    """A run directory with small random V and M, for CarRacing capped at 80 steps."""
    cfg = tiny_cfg
    cfg.vae.z_dim = 4
    cfg.memory.hidden = 8
    cfg.env.max_episode_steps = 80
    c = cfg.controller
    c.population, c.rollouts, c.generations, c.eval_every, c.engine = 4, 1, 4, 0, "serial"
    write_tiny_run(cfg)
    return cfg


def write_tiny_run(cfg):
    """config.yaml and small random V and M weights in ``run_of(cfg)``."""
    import torch

    from tests.builders import make_frmdn
    from worldmodels.checkpoint import save_model
    from worldmodels.config import save_config
    from worldmodels.run_dir import RunDir
    from worldmodels.vae import ConvVAE

    run_of(cfg).mkdir(parents=True)
    cfg.memory.mixtures = 2  # the M below: the config says what the run's files are
    save_config(cfg, run_of(cfg) / "config.yaml")
    torch.manual_seed(0)
    save_model(RunDir(run_of(cfg)).vae.model, ConvVAE(z_dim=4))
    save_model(run_of(cfg) / "memory" / "model.safetensors",
               make_frmdn(z_dim=4, action_dim=3, hidden=8, mixtures=2),
               meta={"done_pos_weight": 1.0, "action_space": CAR_ACTIONS})
