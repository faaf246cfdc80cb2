import json
import pickle

import numpy as np
import pytest
import torch

from tests.conftest import PicklePayload, run_of, write_shards
from worldmodels.checkpoint import CheckpointError, load_model, load_state, save_model
from worldmodels.run_dir import RunDir
from worldmodels.vae import ConvVAE, vae_loss
from worldmodels.vae_training import ObjectTally, train_vae


def test_shapes_and_loss():
    torch.manual_seed(0)
    model = ConvVAE(z_dim=8)
    frames = torch.randint(0, 256, (5, 64, 64, 3), dtype=torch.uint8)
    recon, mu, logvar = model(frames)
    assert recon.shape == (5, 3, 64, 64) and mu.shape == logvar.shape == (5, 8)
    assert recon.min() >= 0 and recon.max() <= 1
    assert model.decode(mu).shape == (5, 3, 64, 64)
    x = frames.permute(0, 3, 1, 2).float() / 255
    losses = vae_loss(x, recon, mu, logvar, kl_tolerance=0.5)
    assert torch.isfinite(losses["loss"])
    # the KL floor: the loss uses at least kl_tolerance * z nats
    assert losses["loss"] >= losses["recon"] + 0.5 * 8 - 1e-4


def test_encode_mean_is_encodes_mu_also_channels_last():
    # what agents read: the mean alone, from a channels-last V (agents.vmc.VMCAgent)
    torch.manual_seed(0)
    vae = ConvVAE(z_dim=8).eval()
    frames = torch.randint(0, 256, (5, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        mu, _ = vae.encode(frames)
        assert torch.equal(vae.encode_mean(frames), mu)
        vae.to(memory_format=torch.channels_last)
        torch.testing.assert_close(vae.encode_mean(frames), mu, rtol=1e-5, atol=1e-6)


def test_checkpoint_reproduces_outputs_exactly(tmp_path):
    torch.manual_seed(1)
    model = ConvVAE(z_dim=16).eval()
    save_model(tmp_path / "v.safetensors", model, meta={"epoch": 3})
    loaded = load_model(tmp_path / "v.safetensors", expect={"z_dim": 16}).eval()
    frames = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(model.encode(frames)[0], loaded.encode(frames)[0])
        z = torch.randn(4, 16)
        assert torch.equal(model.decode(z), loaded.decode(z))


def test_checkpoint_of_other_config_is_refused(tmp_path):
    save_model(tmp_path / "v.safetensors", ConvVAE(z_dim=32))
    with pytest.raises(CheckpointError, match="z_dim=32.*z_dim=64"):
        load_model(tmp_path / "v.safetensors", expect={"z_dim": 64})
    # weights whose shapes disagree with the config in their header: the key is named
    from safetensors.torch import save_file

    header = {"kind": "ConvVAE", "config": {"z_dim": 8}, "meta": {}}
    tensors = {k: v.contiguous() for k, v in ConvVAE(z_dim=32).state_dict().items()}
    save_file(tensors, str(tmp_path / "w.safetensors"),
              metadata={"worldmodels": json.dumps(header)})
    with pytest.raises(CheckpointError, match=r"'fc_\w+\.weight' has shape"):
        load_model(tmp_path / "w.safetensors")
    # a truncated weights file is a clear error, not a crash
    (tmp_path / "v.safetensors").write_bytes((tmp_path / "v.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="v.safetensors"):
        load_model(tmp_path / "v.safetensors")


def test_pickled_training_state_is_refused(tmp_path, pickle_marker):
    path = tmp_path / "train_state.pt"
    torch.save({"epoch": 1, "evil": PicklePayload(pickle_marker)}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="train_state.pt"):
        load_state(path)


def test_train_vae_writes_checkpoint_grid_and_resumes(tiny_cfg):
    write_shards(run_of(tiny_cfg) / "rollouts", 4, T=40)
    report = train_vae(tiny_cfg, progress=False)
    files = RunDir(run_of(tiny_cfg)).vae
    assert report.epochs_done == 1 and np.isfinite(report.holdout_mse)
    assert files.model.exists() and files.grid.exists() and files.state.exists()
    first = load_model(files.model)
    # rerunning with the same epochs does no training
    again = train_vae(tiny_cfg, progress=False)
    assert again.epochs_done == 1
    assert torch.equal(load_model(files.model).fc_mu.weight, first.fc_mu.weight)
    # asking for more epochs continues from the checkpoint
    tiny_cfg.vae.epochs = 2
    train_vae(tiny_cfg, progress=False)
    metrics = json.loads(files.metrics.read_text())
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        assert set(m["objects_kept"]) == {"1-9", "10-39", "40-149", ">=150"}
        assert all(k is None or 0 <= k <= 1 for k in m["objects_kept"].values())
        assert any(k is not None for k in m["objects_kept"].values())
    sidecar = files.model.with_name("model.safetensors.json")
    assert json.loads(sidecar.read_text())["meta"]["epoch"] == 2
    # tools/score_vae.py --objects scores the same held-out frames to the same figures
    from tools.score_vae import main as score_vae

    table = score_vae(["--run", str(run_of(tiny_cfg)), "--objects", "--frames", "0"])
    row = next(line for line in table.splitlines()  # the first table's row
               if line.startswith(f"| {run_of(tiny_cfg)} |"))
    assert float(row.split("|")[2]) == pytest.approx(metrics[-1]["holdout_mse"], rel=1e-4)
    kept_row = table.splitlines()[-1].split("|")[2:-1]
    assert [c.strip() for c in kept_row] == [
        "-" if k is None else f"{k:.2f}" for k in metrics[-1]["objects_kept"].values()]


def test_a_pretrained_v_is_scored_here_and_becomes_the_runs_v(tiny_cfg, tmp_path):
    from worldmodels.checkpoint import file_digest
    from worldmodels.config import ConfigError
    from worldmodels.vae_training import score_holdout

    torch.manual_seed(3)
    source = tmp_path / "shipped"
    save_model(source / "vae" / "model.safetensors", ConvVAE(z_dim=tiny_cfg.vae.z_dim))
    write_shards(run_of(tiny_cfg) / "rollouts", 4, T=40)
    tiny_cfg.vae.pretrained = str(source)
    report = train_vae(tiny_cfg, progress=False)
    run = RunDir(run_of(tiny_cfg))
    files = run.vae
    own, theirs = load_model(files.model), load_model(source / "vae" / "model.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(own.state_dict().values(),
                                                 theirs.state_dict().values(), strict=True))
    meta = json.loads(files.model.with_name("model.safetensors.json").read_text())["meta"]
    assert meta["pretrained_sha256"] == file_digest(source / "vae" / "model.safetensors")
    # the score is the source V's on this run's held-out frames
    from worldmodels.vae_training import rollout_split

    holdout = rollout_split(tiny_cfg, run)[1]
    mean = np.load(files.mean, allow_pickle=False)
    assert report.holdout_mse == pytest.approx(
        score_holdout(theirs, holdout, mean, torch.device("cpu"), 0).mse)
    assert report.epochs_done == 0 and files.grid.exists() and not files.state.exists()
    before = files.model.read_bytes()
    again = train_vae(tiny_cfg, progress=False)  # a rerun: nothing to do
    assert files.model.read_bytes() == before and again.holdout_mse == report.holdout_mse
    save_model(source / "vae" / "model.safetensors", ConvVAE(z_dim=tiny_cfg.vae.z_dim))
    with pytest.raises(ConfigError, match="use a new run"):  # other weights now
        train_vae(tiny_cfg, progress=False)
    tiny_cfg.vae.z_dim = 8
    with pytest.raises(CheckpointError, match="z_dim"):
        train_vae(tiny_cfg, progress=False, run=RunDir(tmp_path / "other"))
    assert files.model.read_bytes() == before


@pytest.mark.slow
def test_sigkill_during_training_then_rerun_completes(tiny_cfg):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from worldmodels.config import save_config

    root = Path(__file__).resolve().parent.parent
    write_shards(run_of(tiny_cfg) / "rollouts", 6, T=60)
    save_config(tiny_cfg, run_of(tiny_cfg) / "config.yaml")
    args = [sys.executable, str(root / "train_vae.py"), "--config",
            str(run_of(tiny_cfg) / "config.yaml"), "vae.epochs=6"]
    files = RunDir(run_of(tiny_cfg)).vae
    proc = subprocess.Popen(args, cwd=root, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not files.state.exists() and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "train_vae.py ended before the kill"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = json.loads(files.metrics.read_text()) if files.metrics.exists() else []
    assert files.state.exists() and len(done_before) < 6  # killed mid-training
    rerun = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    metrics = json.loads(files.metrics.read_text())
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert load_model(files.model).z_dim == tiny_cfg.vae.z_dim
    assert not [p for p in files.dir.iterdir() if p.name.endswith(".partial")]


def test_object_tally_bins_frames_by_object_size_and_scores_what_v_keeps():
    mean = torch.full((3, 64, 64), 0.5)
    frames = torch.full((3, 3, 64, 64), 0.5)
    frames[0, :, 10, 10:15] = 1.0  # a 5-pixel object (a distant fireball)
    frames[1, :, 20:25, 20:30] = 0.0  # 50 pixels
    frames[2, 0, 30, 30] = 0.6  # off the mean by 0.1: not an object

    def tally(recon: torch.Tensor) -> list[dict]:
        t = ObjectTally()
        t.add(frames, recon, mean)
        return t.result()

    exact = tally(frames)
    assert [b["frames"] for b in exact] == [1, 0, 1, 0]
    assert [b["pixels"] for b in exact] == [5, 0, 50, 0]
    assert exact[0]["kept"] == 1.0 and exact[2]["kept"] == 1.0 and exact[1]["kept"] is None
    blurred = tally(mean.expand_as(frames))
    assert blurred[0]["kept"] == 0.0 and blurred[2]["kept"] == 0.0
    # a reconstruction nearer the mean frame than the frame is not kept; a quarter of
    # the way there is
    assert tally(frames + 0.6 * (mean - frames))[0]["kept"] == 0.0
    assert tally(frames + 0.25 * (mean - frames))[0]["kept"] == 1.0
