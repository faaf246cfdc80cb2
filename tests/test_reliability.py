"""Crash safety and bad input: SIGKILL at random points of M and CMA-ES training, then a
rerun of the same command; corrupt, malformed and mismatched files refused by name."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_dream import write_latents as write_dream_latents
from tests.test_frmdn_training import write_latents
from worldmodels.checkpoint import file_digest, load_model, save_model
from worldmodels.config import save_config
from worldmodels.vae import ConvVAE
from worldmodels.vae_training import vae_paths

ROOT = Path(__file__).resolve().parent.parent


def run_and_kill(args: list[str], ready: Path, rng: np.random.Generator,
                 timeout: float = 120) -> bool:
    """Start ``args``; once ``ready`` exists, wait a random 0-0.4 s and SIGKILL the
    process group (workers too). True if the kill landed before the run ended."""
    proc = subprocess.Popen(args, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and not ready.exists() and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(float(rng.uniform(0, 0.4)))
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return killed


def no_partial_files(directory: Path) -> bool:
    return not [p for p in directory.rglob("*") if ".partial" in p.name]


@pytest.fixture
def latent_run(tiny_cfg):
    cfg = tiny_cfg
    cfg.vae.z_dim = 4
    for key, value in dict(hidden=16, mixtures=2, seq_len=10, batch_size=4, epochs=30,
                           flow_hidden=8, shuffle_buffer=8).items():
        setattr(cfg.memory, key, value)
    save_model(vae_paths(cfg.run_dir)["model"], ConvVAE(z_dim=4))
    write_latents(cfg.run_dir / "latents", n=10, T=60,
                  digest=file_digest(vae_paths(cfg.run_dir)["model"]))
    save_config(cfg, cfg.run_dir / "config.yaml")
    return cfg


@pytest.mark.parametrize("kill_seed", [0])
def test_sigkill_during_memory_training_then_rerun_completes(latent_run, kill_seed):
    from worldmodels.frmdn_training import memory_paths

    cfg = latent_run
    args = [sys.executable, str(ROOT / "train_frmdn.py"), "--config",
            str(cfg.run_dir / "config.yaml")]
    files = memory_paths(cfg.run_dir / "memory")
    assert run_and_kill(args, files["metrics"], np.random.default_rng(kill_seed))
    # whatever was on disk at the kill is whole: loadable weights, parseable metrics
    if files["model"].exists():
        load_model(files["model"])
        json.loads(files["metrics"].read_text())
    rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    epochs = [m["epoch"] for m in json.loads(files["metrics"].read_text())]
    assert epochs == list(range(1, 31))
    assert load_model(files["model"]).z_dim == 4
    assert no_partial_files(cfg.run_dir)


@pytest.fixture
def dream_cmaes_run(tiny_cfg):
    from tests.test_cmaes import write_tiny_run

    cfg = tiny_cfg
    cfg.vae.z_dim, cfg.memory.hidden = 4, 8
    cfg.env.max_episode_steps = 40
    c = cfg.controller
    c.population, c.rollouts, c.generations, c.eval_every, c.engine = 6, 3, 40, 0, "serial"
    c.environment = "dream"
    write_tiny_run(cfg)
    write_dream_latents(cfg)
    return cfg


@pytest.mark.parametrize("kill_seed", [1])
def test_sigkill_during_cmaes_then_rerun_equals_an_uninterrupted_run(dream_cmaes_run, kill_seed):
    import copy
    import shutil

    from agents.cmaes import controller_paths, train_cmaes
    from worldmodels.shards import read_npz

    cfg = dream_cmaes_run
    clean = copy.deepcopy(cfg)
    clean.name = "uninterrupted"
    shutil.copytree(cfg.run_dir, clean.run_dir)
    args = [sys.executable, str(ROOT / "train_controller.py"), "--config",
            str(cfg.run_dir / "config.yaml")]
    files = controller_paths(cfg.run_dir)
    assert run_and_kill(args, files["history"], np.random.default_rng(kill_seed))
    if files["history"].exists():  # a whole file, or none
        assert 1 <= len(read_npz(files["history"])["fitness"]) < 40
    rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert no_partial_files(cfg.run_dir)
    # the same 40 generations an uninterrupted run gives: replay + reproducible dreams
    train_cmaes(clean, progress=False)
    killed = read_npz(files["history"])["fitness"]
    uninterrupted = read_npz(controller_paths(clean.run_dir)["history"])["fitness"]
    assert killed.shape == (40, 6)
    np.testing.assert_array_equal(killed, uninterrupted)
