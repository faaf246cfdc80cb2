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
import torch

from agents.rollouts import torch_threads
from tests.builders import make_controller, make_frmdn
from tests.conftest import run_of
from tests.test_dream import write_dream_run
from tests.test_frmdn_training import write_latents
from worldmodels.checkpoint import CheckpointError, file_digest, load_model, save_model
from worldmodels.config import save_config
from worldmodels.run_dir import MemoryFiles, RunDir
from worldmodels.shards import RolloutShard, ShardError, write_npz_atomic
from worldmodels.vae import ConvVAE

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
    save_model(RunDir(run_of(cfg)).vae.model, ConvVAE(z_dim=4))
    write_latents(run_of(cfg) / "latents", n=10, T=60,
                  digest=file_digest(RunDir(run_of(cfg)).vae.model))
    save_config(cfg, run_of(cfg) / "config.yaml")
    return cfg


@pytest.mark.parametrize("kill_seed", [0])
def test_sigkill_during_memory_training_then_rerun_completes(latent_run, kill_seed):

    cfg = latent_run
    args = [sys.executable, str(ROOT / "train_frmdn.py"), "--config",
            str(run_of(cfg) / "config.yaml")]
    files = MemoryFiles.at(run_of(cfg) / "memory")
    assert run_and_kill(args, files.metrics, np.random.default_rng(kill_seed))
    # whatever was on disk at the kill is whole: loadable weights, parseable metrics
    if files.model.exists():
        load_model(files.model)
        json.loads(files.metrics.read_text())
    rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    epochs = [m["epoch"] for m in json.loads(files.metrics.read_text())]
    assert epochs == list(range(1, 31))
    assert load_model(files.model).z_dim == 4
    assert no_partial_files(run_of(cfg))


@pytest.fixture
def dream_cmaes_run(tiny_cfg):
    # one dream thread in every process: the killed run (subprocesses) and the
    # uninterrupted one (this process, whose thread count earlier tests may have changed)
    # then do the same float operations, so equal means bit-equal
    tiny_cfg.dream.threads = 1
    return write_dream_run(tiny_cfg, population=6, rollouts=3, generations=40)


@pytest.mark.parametrize("kill_seed", [1])
def test_sigkill_during_cmaes_then_rerun_equals_an_uninterrupted_run(dream_cmaes_run, kill_seed):
    import copy
    import shutil

    from agents.cmaes import train_cmaes
    from worldmodels.shards import read_npz

    cfg = dream_cmaes_run
    clean = copy.deepcopy(cfg)
    clean.name = "uninterrupted"
    shutil.copytree(run_of(cfg), run_of(clean))
    args = [sys.executable, str(ROOT / "train_controller.py"), "--config",
            str(run_of(cfg) / "config.yaml")]
    files = RunDir(run_of(cfg)).controller
    assert run_and_kill(args, files.history, np.random.default_rng(kill_seed))
    if files.history.exists():  # a whole file, or none
        assert 1 <= len(read_npz(files.history)["fitness"]) < 40
    rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert no_partial_files(run_of(cfg))
    # the same 40 generations an uninterrupted run gives: replay + reproducible dreams
    with torch_threads(torch.get_num_threads()):  # restored after the dream's 1 thread
        train_cmaes(clean, progress=False)
    killed = read_npz(files.history)["fitness"]
    uninterrupted = read_npz(RunDir(run_of(clean)).controller.history)["fitness"]
    assert killed.shape == (40, 6)
    np.testing.assert_array_equal(killed, uninterrupted)


# ---------------------------------------------------------------- bad input, by name


def test_corrupt_rollout_shards_are_skipped_and_counted_when_asked(tiny_cfg):
    from tests.conftest import write_shards
    from worldmodels.vae_training import train_vae

    paths = write_shards(run_of(tiny_cfg) / "rollouts", 5, T=20)
    paths[1].write_bytes(paths[1].read_bytes()[:3000])  # truncated
    shard = RolloutShard.load(paths[3])
    write_npz_atomic(paths[3], {  # wrong shapes: one frame short
        "obs": shard.obs[:-1], "action": shard.action, "reward": shard.reward,
        "terminated": shard.terminated, "truncated": shard.truncated,
        "meta": np.array("{}")})
    with pytest.raises(ShardError, match=r"ep_00000[13]\.npz"):
        train_vae(tiny_cfg, progress=False)
    tiny_cfg.data.skip_corrupt = True
    report = train_vae(tiny_cfg, progress=False)
    assert report.skipped_shards == 2 and report.epochs_done == 1
    listed = json.loads((run_of(tiny_cfg) / "skipped_shards.json").read_text())["rollouts"]
    assert len(listed) == 2 and "ep_000001.npz" in listed[0] + listed[1]


def test_skip_corrupt_carries_collect_and_encode_past_an_unreadable_shard(tiny_cfg):
    """data.skip_corrupt holds for every stage that reads rollouts, so run.py can use it:
    collect keeps an unreadable shard as it is (and does not collect it again), V and
    encode leave it out and list it."""
    from agents.collect import collect
    from worldmodels.encoding import encode_rollouts
    from worldmodels.vae_training import train_vae

    tiny_cfg.collect.episodes = 3
    collect(tiny_cfg, progress=False)
    bad = run_of(tiny_cfg) / "rollouts" / "ep_000001.npz"
    bad.write_bytes(bad.read_bytes()[:3000])  # truncated
    kept = bad.read_bytes()
    tiny_cfg.collect.episodes = 4
    with pytest.raises(ShardError, match=r"ep_000001\.npz"):
        collect(tiny_cfg, progress=False)
    tiny_cfg.data.skip_corrupt = True
    assert collect(tiny_cfg, progress=False).episodes_new == 1  # only ep_000003
    assert bad.read_bytes() == kept
    train_vae(tiny_cfg, progress=False)
    tiny_cfg.data.skip_corrupt = False
    with pytest.raises(ShardError, match=r"ep_000001\.npz"):
        encode_rollouts(tiny_cfg, progress=False)
    tiny_cfg.data.skip_corrupt = True
    report = encode_rollouts(tiny_cfg, progress=False)
    assert report.encoded == 3
    latents = sorted(p.name for p in (run_of(tiny_cfg) / "latents").glob("ep_*.npz"))
    assert latents == ["ep_000000.npz", "ep_000002.npz", "ep_000003.npz"]
    listed = json.loads((run_of(tiny_cfg) / "skipped_shards.json").read_text())
    assert [len(listed["rollouts"]), len(listed["encode"])] == [1, 1]  # V's and encode's
    assert "ep_000001.npz" in listed["rollouts"][0] and "ep_000001.npz" in listed["encode"][0]
    # V and M hold out the same episodes: the split of all 4, less the skipped one (the
    # 3 usable split alone hold out 1, where the minimum holds out 2 of the 4)
    from worldmodels.datasets import split_episodes
    from worldmodels.frmdn_training import latent_split
    from worldmodels.run_dir import RunDir
    from worldmodels.shards import list_shards
    from worldmodels.vae_training import rollout_split

    run = RunDir(run_of(tiny_cfg))
    d = tiny_cfg.data
    every = split_episodes(list_shards(run.rollouts), d.holdout_fraction,
                           run.data_seed(tiny_cfg), d.holdout_min_episodes)

    def names(paths):
        return [p.name for p in paths if p.name != "ep_000001.npz"]

    usable = split_episodes([p for p in list_shards(run.rollouts)
                             if p.name != "ep_000001.npz"], d.holdout_fraction,
                            run.data_seed(tiny_cfg), d.holdout_min_episodes)
    assert len(usable[1]) == 1 and len(every[1]) == 2
    for train, held, _ in (rollout_split(tiny_cfg, run), latent_split(tiny_cfg, run)):
        assert (names(train), names(held)) == (names(every[0]), names(every[1]))


def test_rollout_shard_with_nan_reward_or_action_or_float_frames_is_refused(tmp_path):
    from tests.conftest import synthetic_shard

    shard = synthetic_shard(0)
    shard.reward[3] = np.nan
    with pytest.raises(ShardError, match="reward has NaN"):
        shard.save(tmp_path / "ep_000000.npz")
    shard = synthetic_shard(0)
    shard.action = shard.action.astype(np.float32)
    shard.action[2] = np.nan
    with pytest.raises(ShardError, match="action has NaN"):
        shard.save(tmp_path / "ep_000000.npz")
    good = synthetic_shard(1)
    frames = good.obs.astype(np.float32)
    frames[0, 0, 0, 0] = np.nan  # NaN frames can only come as floats: refused by dtype
    write_npz_atomic(tmp_path / "ep_000001.npz", {
        "obs": frames, "action": good.action, "reward": good.reward,
        "terminated": good.terminated, "truncated": good.truncated, "meta": np.array("{}")})
    with pytest.raises(ShardError, match="ep_000001.npz: obs dtype float32"):
        RolloutShard.load(tmp_path / "ep_000001.npz")


def test_empty_data_directories_are_clear_errors(tiny_cfg):
    from worldmodels.encoding import encode_rollouts
    from worldmodels.frmdn_training import train_memory
    from worldmodels.vae_training import train_vae

    (run_of(tiny_cfg) / "rollouts").mkdir(parents=True)
    with pytest.raises(ShardError, match=r"rollouts: 0 usable shard\(s\).*collect.py"):
        train_vae(tiny_cfg, progress=False)
    save_model(RunDir(run_of(tiny_cfg)).vae.model, ConvVAE(z_dim=tiny_cfg.vae.z_dim))
    with pytest.raises(ShardError, match="no rollout shards to encode"):
        encode_rollouts(tiny_cfg, progress=False)
    with pytest.raises(ShardError, match=r"latents: 0 usable latent shard\(s\).*encode.py"):
        train_memory(tiny_cfg, progress=False)


def test_latents_with_nan_or_another_z_size_are_refused_by_name(latent_run):
    from worldmodels.frmdn_training import train_memory

    cfg = latent_run
    cfg.memory.epochs = 1
    victim = run_of(cfg) / "latents" / "ep_000004.npz"
    data = dict(np.load(victim, allow_pickle=False))
    data["mu"] = data["mu"].copy()
    data["mu"][3, 1] = np.inf
    write_npz_atomic(victim, data)
    with pytest.raises(ShardError, match="ep_000004.npz: mu or logvar has NaN/Inf"):
        train_memory(cfg, progress=False)
    data["mu"][3, 1] = 0.0
    data["action"] = data["action"].astype(np.float32)
    data["action"].flat[0] = np.nan
    write_npz_atomic(victim, data)
    with pytest.raises(ShardError, match="ep_000004.npz: action has NaN/Inf"):
        train_memory(cfg, progress=False)
    cfg.data.skip_corrupt = True
    assert train_memory(cfg, progress=False).skipped_shards == 1
    cfg.data.skip_corrupt = False
    cfg.vae.z_dim = 8  # latents are z = 4
    with pytest.raises(ShardError, match="z = 4, but the config's vae.z_dim is 8"):
        train_memory(cfg, out_dir=run_of(cfg) / "memory_z8", progress=False)


def test_memory_checkpoint_of_another_action_size_is_refused_on_resume(latent_run):
    from worldmodels.frmdn_training import train_memory

    cfg = latent_run
    save_model(run_of(cfg) / "memory" / "model.safetensors",
               make_frmdn(z_dim=4, action_dim=5, hidden=16, mixtures=2), meta={"epoch": 1})
    with pytest.raises(CheckpointError, match="action_dim=5.*action_dim=3"):
        train_memory(cfg, progress=False)


def test_controller_weights_of_another_shape_are_refused(tmp_path):
    from worldmodels.checkpoint import load_weights

    save_model(tmp_path / "c.safetensors", make_controller(4, 8, 3, low=[0] * 3, high=[1] * 3))
    other = make_controller(6, 8, 3, low=[0] * 3, high=[1] * 3)
    with pytest.raises(CheckpointError, match="c.safetensors"):
        load_weights(tmp_path / "c.safetensors", other)
    assert torch.isfinite(other.get_flat()).all()


def test_weights_without_a_header_beside_a_sidecar_that_is_not_text_are_refused(tmp_path):
    """A weights file whose header lacks the model config is read with its JSON sidecar;
    one of bytes that are not UTF-8 is a CheckpointError naming it (was a traceback)."""
    from safetensors.torch import save_file

    from worldmodels.checkpoint import read_header, sidecar

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    sidecar(path).write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(CheckpointError, match=f"{sidecar(path)}: model config is not JSON"):
        read_header(path)


def test_another_kind_of_model_in_the_checkpoints_place_is_refused_by_name(tmp_path):
    """An M's weights where V's belong (the same z_dim, so ``expect`` alone passes it):
    a CheckpointError naming the file, not torch's missing-keys RuntimeError."""
    from tests.builders import make_frmdn
    from worldmodels.checkpoint import CheckpointError, resume_training, save_model
    from worldmodels.vae import ConvVAE

    path = tmp_path / "model.safetensors"
    save_model(path, make_frmdn(4, 3, hidden=8), meta={"epoch": 2})
    model = ConvVAE(z_dim=4)
    with pytest.raises(CheckpointError, match=rf"{path}: holds a FRMDN.*ConvVAE"):
        resume_training(path, tmp_path / "state.safetensors", model,
                        torch.optim.Adam(model.parameters()), expect={"z_dim": 4})


def test_a_resumed_optimizer_keeps_its_moments_and_takes_the_configs_learning_rate(tmp_path):
    """A rerun with memory.lr (or vae.lr) changed trains at the new rate: the saved
    optimizer state brings back Adam's moments, not the old rate."""
    from worldmodels.checkpoint import resume_training, save_model, save_state
    from worldmodels.vae import ConvVAE

    torch.manual_seed(0)
    model = ConvVAE(z_dim=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(2, 3, 64, 64))[0].sum().backward()
    optimizer.step()
    save_model(tmp_path / "model.safetensors", model, meta={"epoch": 1})
    save_state(tmp_path / "state.safetensors", {"optimizer": optimizer.state_dict(), "epoch": 1})
    again = ConvVAE(z_dim=4)
    resumed = torch.optim.Adam(again.parameters(), lr=0.5)
    epoch, _ = resume_training(tmp_path / "model.safetensors", tmp_path / "state.safetensors",
                               again, resumed)
    assert epoch == 1
    assert [g["lr"] for g in resumed.param_groups] == [0.5]
    saved, loaded = optimizer.state_dict()["state"], resumed.state_dict()["state"]
    assert saved.keys() == loaded.keys()
    for k in saved:
        torch.testing.assert_close(loaded[k]["exp_avg"], saved[k]["exp_avg"])


def test_a_replaced_rollout_is_encoded_again_and_an_empty_held_out_side_is_named(tiny_cfg):
    """A latent shard is current for its V *and* its rollout as it is (its size); V
    refuses a split whose held-out side lost every episode to data.skip_corrupt, naming
    the directory, before an epoch is trained (was: ZeroDivisionError after one)."""
    from agents.collect import collect
    from worldmodels.datasets import split_episodes
    from worldmodels.encoding import encode_rollouts
    from worldmodels.run_dir import RunDir
    from worldmodels.shards import list_shards
    from worldmodels.vae_training import rollout_split, train_vae

    tiny_cfg.collect.episodes = 6
    collect(tiny_cfg, progress=False)
    train_vae(tiny_cfg, progress=False)
    assert encode_rollouts(tiny_cfg, progress=False).encoded == 6
    assert encode_rollouts(tiny_cfg, progress=False).encoded == 0
    run = RunDir(run_of(tiny_cfg))
    a, b = run.rollouts / "ep_000002.npz", run.rollouts / "ep_000003.npz"
    assert a.stat().st_size != b.stat().st_size
    a.write_bytes(b.read_bytes())  # another episode under ep_000002's name
    assert encode_rollouts(tiny_cfg, progress=False).encoded == 1

    d = tiny_cfg.data
    held = split_episodes(list_shards(run.rollouts), d.holdout_fraction,
                          run.data_seed(tiny_cfg), d.holdout_min_episodes)[1]
    for path in held:
        path.write_bytes(path.read_bytes()[:3000])  # truncated
    tiny_cfg.data.skip_corrupt = True
    with pytest.raises(ShardError, match=r"rollouts: no usable held-out episode"):
        rollout_split(tiny_cfg, run)
