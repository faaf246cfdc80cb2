"""A shipped agent (tools/export_pretrained.py): the run's V, M and chosen C in a new
directory that evaluate.py and dream.py play from anywhere without writing into it, and
that training entry points refuse."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import collect as collect_script
import dream as dream_script
import evaluate as evaluate_script
import run as run_script
import train_controller as controller_script
import train_vae as vae_script
from agents.evaluation import evaluate
from agents.vmc import VMCAgent
from envs.factory import make_env_from_config
from tests.builders import v_trained_again
from tests.test_run import tiny_job_args
from tools.export_pretrained import PARTIAL_MARK, export
from tools.export_pretrained import main as export_main
from worldmodels.checkpoint import (
    CheckpointError,
    file_digest,
    load_model,
    read_header,
    save_model,
)
from worldmodels.config import ConfigError
from worldmodels.errors import InputError, run_cli
from worldmodels.run_dir import RunDir
from worldmodels.shards import ShardError


def tree_hash(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (names included) and the hash of its bytes."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CarRacing run through every stage whose CMA-ES selected a controller."""
    root = tmp_path_factory.mktemp("source")
    run_script.main(tiny_job_args(root, "real") + [
        "controller.generations=2", "controller.eval_every=1", "controller.select_episodes=1"])
    run = RunDir(root / "runs" / "CarRacing-v3" / "tiny")
    assert run.controller.selected.exists()
    return run


def test_a_shipped_agent_plays_from_anywhere_and_is_never_written(trained, tmp_path,
                                                                   monkeypatch, capsys):
    own = evaluate(trained, episodes=2, weights="selected", engine="serial", progress=False)
    dest = tmp_path / "ship" / "car"
    info = export(trained.path, dest)
    assert info["weights"] == "selected" and not info["fp16"]
    assert sorted(info["files"]) == sorted(
        ["config.yaml", "controller/selected.safetensors",
         "controller/selected.safetensors.json", "dream_starts.npz", "memory/model.safetensors",
         "memory/model.safetensors.json", "vae/model.safetensors", "vae/model.safetensors.json"])
    shipped = json.loads((dest / "shipped.json").read_text())
    for name, f in shipped["files"].items():
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == f["sha256"]
        assert (dest / name).stat().st_size == f["bytes"]
    before = tree_hash(dest)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    summary = evaluate_script.main(["--run", str(dest), "--episodes", "2",
                                    "controller.engine=serial"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"mean return -?\d+\.\d ± \d+\.\d over 2 episodes", last), last
    assert summary["mean"] == own["mean"]  # the same agent on the same episodes
    # the same weights (tiny runs' means tie across agents): C and V byte for byte, M's
    # tensors (its file's header gains the export's meta)
    assert {k: summary["digests"][k] for k in ("weights", "vae")} == \
        {k: own["digests"][k] for k in ("weights", "vae")}
    shipped_m, own_m = RunDir(dest).load_memory(), trained.load_memory()
    for (name, a), b in zip(shipped_m.state_dict().items(), own_m.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    out = elsewhere / "runs" / "pretrained" / "car"
    assert (out / "eval" / "controller_selected.json").exists()
    dreamt = dream_script.main(["--run", str(dest), "--dream-only", "--steps", "4"])
    assert Path(dreamt["gif"]).parent == out / "dreams"
    evaluate_script.main(["--run", str(dest), "--in-dream", "--episodes", "2"])
    evaluate_script.main(["--run", str(dest), "--episodes", "1", "--policy", "random",
                          "controller.engine=serial", "--out", str(tmp_path / "o")])
    assert (tmp_path / "o" / "random.json").exists()
    for script, args in ((evaluate_script, ["--episodes", "1"]),
                         (dream_script, ["--dream-only", "--steps", "2"])):
        with pytest.raises(ConfigError, match="inside the shipped agent"):
            script.main(["--run", str(dest), *args, "--out", str(dest / "controller")])
    monkeypatch.chdir(dest)  # run from inside it: its default outputs would go inside
    with pytest.raises(ConfigError, match=r"shipped agent, only read.*inside it"):
        evaluate_script.main(["--run", ".", "--episodes", "1", "--policy", "random",
                              "controller.engine=serial"])
    assert tree_hash(dest) == before
    with pytest.raises(InputError, match="not an empty directory"):
        export(trained.path, dest)


@pytest.mark.parametrize("script, args", [
    (controller_script, ["controller.generations=3"]),
    (run_script, []),
    (vae_script, []),
    (collect_script, []),
])
def test_training_entry_points_refuse_a_shipped_agent(trained, tmp_path, script, args):
    dest = tmp_path / "ship"
    export(trained.path, dest, weights="best")
    before = tree_hash(dest)
    with pytest.raises(ConfigError, match="is a shipped agent"):
        script.main(["--run", str(dest), *args])
    with pytest.raises(ConfigError, match="is a shipped agent"):
        script.main(["--config", str(dest / "config.yaml"), *args])
    # a new run inside it is refused too, made by any entry point (a review's reproducer:
    # `collect.py root=<agent>` wrote its rollouts there)
    with pytest.raises(ConfigError, match=f"inside the shipped agent {dest}"):
        script.main(["--preset", "quick", f"root={dest}", "name=x", *args])
    assert tree_hash(dest) == before


def test_a_run_on_a_shipped_agents_world_model_is_not_made_inside_it(trained, tmp_path):
    dest = tmp_path / "ship"
    export(trained.path, dest, weights="best")
    before = tree_hash(dest)
    with pytest.raises(ConfigError, match=f"inside the shipped agent {dest}"):
        controller_script.main(["--world-model", str(dest), "--run", str(dest / "new"),
                                "controller.generations=1"])
    assert tree_hash(dest) == before and not (dest / "new").exists()


def test_fp16_agent_loads_as_fp32_and_acts_like_the_fp32_one(trained, tmp_path):
    fp32 = export(trained.path, tmp_path / "fp32")
    fp16 = export(trained.path, tmp_path / "fp16", fp16=True)
    assert fp16["fp16"] and fp16["bytes"] < fp32["bytes"]
    half = RunDir(tmp_path / "fp16")
    # V's file is new (its tensors in fp16): M records it as the V it was trained on
    assert read_header(half.memory.model)["meta"]["vae_digest"] == file_digest(half.vae.model)
    assert file_digest(half.vae.model) != file_digest(trained.vae.model)
    for model in (half.load_vae(), half.load_memory()):
        assert {str(p.dtype) for p in model.parameters()} == {"torch.float32"}
    # an fp16 agent exported by an earlier version, whose M kept the source V's digest,
    # still loads: a shipped agent's V and M were checked together at its export
    meta = read_header(half.memory.model)["meta"]
    save_model(half.memory.model, load_model(half.memory.model),
               meta={**meta, "vae_digest": file_digest(trained.vae.model)})
    half.load_memory()
    cfg = half.load_config()
    env = make_env_from_config(cfg.env)
    agents = [VMCAgent.from_run(RunDir(tmp_path / d), cfg, env.action_space, "selected")
              for d in ("fp32", "fp16")]
    for agent in agents:
        agent.reset(1)
    obs, _ = env.reset(seed=3)
    worst = 0.0
    for _ in range(20):  # both see the frames the fp32 agent's actions lead to
        a32, a16 = (agent.act(obs[None])[0] for agent in agents)
        worst = max(worst, float(np.abs(a32 - a16).max()))
        obs = env.step(a32)[0]
    env.close()
    assert 0 < worst < 2e-2, worst  # rounding V and M to fp16 moves actions a little


def test_play_overrides_change_the_shipped_config_and_fixed_keys_are_refused(trained,
                                                                             tmp_path):
    source = RunDir(trained.path).load_config()
    flip = f"env.direct_render={str(not source.env.direct_render).lower()}"
    dest = tmp_path / "played"
    info = export(trained.path, dest, overrides=[flip])
    assert info["config_overrides"] == [flip]
    assert RunDir(dest).load_config().env.direct_render is not source.env.direct_render
    assert RunDir(dest).load_config().vae == source.vae  # the rest as the run has it
    by_cli = tmp_path / "cli"  # the overrides may follow the flags
    assert export_main([str(trained.path), str(by_cli), "--fp16", flip])["fp16"]
    assert RunDir(by_cli).load_config().env == RunDir(dest).load_config().env
    refused = tmp_path / "refused"
    with pytest.raises(ConfigError, match="vae.z_dim"):
        export(trained.path, refused, overrides=["vae.z_dim=7"])
    assert not refused.exists() and not refused.with_name("refused.partial").exists()


def test_a_refused_export_names_the_source_file_and_leaves_nothing(trained, tmp_path, capsys):
    """A corrupt controller of the run stops the export, naming the run's file (not the
    copy being written), and no half-written agent is left behind; a run without latents
    ships an agent that plays the real env only, and says so when asked to dream."""
    copy = tmp_path / "run"
    shutil.copytree(trained.path, copy)
    dest = tmp_path / "ship"
    selected = copy / "controller" / "selected.safetensors"
    kept = selected.read_bytes()
    selected.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=re.escape(str(selected))):
        export(copy, dest)
    assert not dest.exists() and not (tmp_path / "ship.partial").exists()
    selected.write_bytes(kept)
    # V trained again after M and C: they belong to the old V, and do not ship with the new
    v_path = copy / "vae" / "model.safetensors"
    v_kept = v_path.read_bytes()
    v_trained_again(copy)
    with pytest.raises(CheckpointError, match=re.escape(str(copy / "memory" / "best.safetensors"))
                       + ": M was trained on latents of V weights"):
        export(copy, dest)
    assert not dest.exists() and not (tmp_path / "ship.partial").exists()
    v_path.write_bytes(v_kept)
    # a DEST.partial an export did not make is left as it is; a killed export's goes
    foreign = tmp_path / "ship.partial"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="ship.partial: exists and is not an export's"):
        export(copy, dest)
    assert (foreign / "notes.txt").read_text() == "mine" and not dest.exists()
    (foreign / PARTIAL_MARK).touch()
    for shard in (copy / "latents").glob("*.npz"):
        shard.unlink()  # no latents at all: the agent ships to play the real env only
    info = export(copy, dest)
    assert not foreign.exists() and not (dest / "notes.txt").exists()
    assert PARTIAL_MARK not in info["files"] and not (dest / PARTIAL_MARK).exists()
    assert "dream_starts.npz" not in info["files"]
    with pytest.raises(ShardError, match="dream_starts.npz: missing; this shipped agent"):
        evaluate_script.main(["--run", str(dest), "--in-dream", "--episodes", "1"])
    # C in the dream of that agent's V and M: the same error (it was "<agent>/latents: 0
    # usable latent shard(s); run encode.py first"), and the new run's directory is left
    # free for another world model (its config.yaml, written first, is taken back)
    borrowed = tmp_path / "borrowed"
    for _ in range(2):
        with pytest.raises(SystemExit):
            run_cli(controller_script.main, ["--world-model", str(dest), "--run", str(borrowed),
                                             "controller.environment=dream"])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"error: {dest / 'dream_starts.npz'}: missing"), err
        assert not (borrowed / "config.yaml").exists()
    with pytest.raises(CheckpointError, match=r"no such controller \(it ships selected\)"):
        evaluate_script.main(["--run", str(dest), "--episodes", "1", "--weights", "mean"])
    shipped = json.loads((dest / "shipped.json").read_text())
    (dest / "shipped.json").write_text(json.dumps({**shipped, "policy": "dqn"}))
    with pytest.raises(ConfigError, match="policy 'dqn' is not one this version plays"):
        evaluate_script.main(["--run", str(dest), "--episodes", "1"])


def test_the_default_export_ships_what_evaluate_plays(trained, tmp_path):
    """A run without a selected controller (CMA-ES with eval_every=0) ships its best by
    default, the controller evaluate.py plays (the export refused it)."""
    copy = tmp_path / "run"
    shutil.copytree(trained.path, copy)
    for file in (copy / "controller").glob("selected.safetensors*"):
        file.unlink()
    info = export(copy, tmp_path / "ship")
    assert info["weights"] == "best" == RunDir(copy).controller.default_weights()
    assert (tmp_path / "ship" / "controller" / "best.safetensors").is_file()
