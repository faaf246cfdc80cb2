"""A run on another run's world model (``train_controller.py --world-model``): C trains
on a shipped agent's V and M with nothing copied and nothing written into the agent; the
run evaluates, dreams and ships its SB3 policy, which a shipped agent then plays by
default. Also: dotted overrides into a mapping key change only that key."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

import dream as dream_script
import evaluate as evaluate_script
import train_controller as controller_script
import train_frmdn as frmdn_script
import train_vae as vae_script
from tests.test_export import trained, tree_hash  # noqa: F401 - a fixture
from tools.export_pretrained import export
from worldmodels.checkpoint import CheckpointError
from worldmodels.config import ConfigError, holdout_base, load_config
from worldmodels.datasets import split_episodes
from worldmodels.errors import InputError
from worldmodels.frmdn_training import latent_split
from worldmodels.run_dir import (
    SHIPPED_FILE,
    WORLD_MODEL_FILE,
    RunDir,
    borrow_world_model,
    sb3_search_settings_off,
)
from worldmodels.shards import list_shards

#: a PPO that updates every 32 steps of 2 envs
TINY_PPO = ["--algo", "ppo", "controller.sb3_timesteps=64", "controller.sb3_envs=2",
            "controller.sb3_checkpoint_steps=32", "controller.sb3_eval_steps=0",
            "controller.sb3_kwargs={n_steps: 16, batch_size: 16, n_epochs: 1}",
            "controller.batch_envs=2"]


@pytest.fixture(scope="module")
def shipped(trained, tmp_path_factory):  # noqa: F811 - the fixture imported above
    dest = tmp_path_factory.mktemp("ship") / "car"
    export(trained.path, dest, fp16=True)
    return dest


def last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_ppo_on_a_shipped_world_model_ships_and_plays_by_default(shipped, tmp_path, capsys,
                                                                 monkeypatch):
    before = tree_hash(shipped)
    home = tmp_path / "ppo"
    controller_script.main(["--world-model", str(shipped), "--run", str(home), *TINY_PPO])
    run = RunDir(home)
    assert run.borrows_world_model and run.path == shipped and run.home == home
    marker = json.loads((home / WORLD_MODEL_FILE).read_text())
    assert marker["source"] == str(shipped)
    assert not (home / "vae").exists() and not (home / "memory").exists()  # nothing copied
    assert (home / "controller" / "sb3_ppo.safetensors").exists()
    # a rerun resumes (here: is done) instead of starting anew
    capsys.readouterr()
    controller_script.main(["--world-model", str(shipped), "--run", str(home), *TINY_PPO])
    assert "already" in capsys.readouterr().out
    # evaluate's default policy is the run's only one, PPO
    summary = evaluate_script.main(["--run", str(home), "--episodes", "2", "--video", "1",
                                    "--video-stride", "3"])
    assert re.fullmatch(r"mean return -?\d+\.\d ± \d+\.\d over 2 episodes", last_line(capsys))
    assert summary["policy"] == "ppo" and (home / "eval" / "ppo_episode0.gif").exists()
    dreamt = dream_script.main(["--run", str(home), "--steps", "4"])
    assert Path(dreamt["gif"]).name.startswith("ppo_seed0_tau")
    # shipped with its PPO, the agent plays PPO by default, with the same returns
    ship = tmp_path / "ship_ppo"
    info = export(home, ship, policy="ppo", overrides=["env.max_episode_steps=30"])
    assert info["policy"] == "ppo" and info["world_model"] == str(shipped)
    with pytest.raises(CheckpointError, match=r"it ships no CMA-ES controller but an SB3 "
                                              r"policy, ppo: evaluate.py --policy ppo"):
        RunDir(ship).trained_controller()
    assert "controller/sb3_ppo.safetensors" in info["files"]
    assert not any(name.startswith("controller/selected") for name in info["files"])
    monkeypatch.chdir(tmp_path)
    again = evaluate_script.main(["--run", str(ship), "--episodes", "2"])
    assert again["policy"] == "ppo" and again["mean"] == summary["mean"]
    dream_script.main(["--run", str(ship), "--dream-only", "--steps", "4"])
    virtual = evaluate_script.main(["--run", str(ship), "--in-dream", "--episodes", "3"])
    assert virtual["policy"] == "ppo in the dream" and virtual["episodes"] == 3
    assert list((tmp_path / "runs" / "pretrained" / "ship_ppo" / "eval").glob("ppo_dream_tau*"))
    assert tree_hash(shipped) == before  # the world model's agent was only read


def test_a_borrowed_world_model_is_guarded(shipped, trained, tmp_path):  # noqa: F811
    home = tmp_path / "c"
    with pytest.raises(ConfigError, match="needs --run"):
        controller_script.main(["--world-model", str(shipped)])
    with pytest.raises(ConfigError, match="'vae.z_dim' is fixed"):
        controller_script.main(["--world-model", str(shipped), "--run", str(home),
                                "vae.z_dim=8"])
    assert not home.exists()  # refused before anything was written
    # a first command refused after the marker (a missing engine, say) leaves the
    # directory free: a retry on another world model takes it
    borrow_world_model(trained.path, home)
    assert not RunDir(home).has_config()
    controller_script.main(["--world-model", str(shipped), "--run", str(home), *TINY_PPO])
    assert json.loads((home / WORLD_MODEL_FILE).read_text())["source"] == str(shipped)
    for script in (vae_script, frmdn_script):  # stages that would write into the source
        with pytest.raises(ConfigError, match="trains controllers on the V and M"):
            script.main(["--run", str(home)])
    with pytest.raises(ConfigError, match="uses the world model of"):
        controller_script.main(["--world-model", str(trained.path), "--run", str(home)])
    with pytest.raises(ConfigError, match="already a run"):
        controller_script.main(["--world-model", str(shipped), "--run", str(trained.path)])
    marker = home / WORLD_MODEL_FILE
    data = json.loads(marker.read_text())
    data["files"]["vae/model.safetensors"] = "0" * 16  # as if V had been replaced since
    marker.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="changed since"):
        controller_script.main(["--world-model", str(shipped), "--run", str(home)])
    # nor is its C played with that V: evaluate.py names the file, and writes nothing
    evals = sorted((home / "eval").rglob("*")) if (home / "eval").exists() else []
    with pytest.raises(CheckpointError, match="vae/model.safetensors: not the weights"):
        evaluate_script.main(["--run", str(home), "--episodes", "1"])
    assert (sorted((home / "eval").rglob("*")) if (home / "eval").exists() else []) == evals
    marker.write_text(json.dumps({"source": str(tmp_path / "gone")}))
    with pytest.raises(ConfigError, match="holds no trained V and M"):
        RunDir(home)
    with pytest.raises(ConfigError, match="holds no trained V and M"):  # a started run
        borrow_world_model(shipped, home)
    # a marker alone (no C started) whose source has gone: a retry on another source
    # takes the directory and names the new source
    alone = tmp_path / "alone"
    borrow_world_model(trained.path, alone)
    (alone / WORLD_MODEL_FILE).write_text(json.dumps({"source": str(tmp_path / "moved")}))
    borrow_world_model(shipped, alone)
    assert RunDir(alone).path == shipped
    with pytest.raises(InputError, match="no ppo policy"):
        export(trained.path, tmp_path / "none", policy="ppo")


def test_an_sb3_c_on_a_world_model_trained_with_searches_turns_them_off(trained, tmp_path,  # noqa: F811
                                                                         capsys):
    """A source whose C ran 3 CMA-ES searches and a second selection stage (the shipped
    TakeCover agent) lends its V and M to an SB3 C: the command sets only
    controller.algo, and the search settings, which SB3 refuses, are turned off and said."""
    import yaml

    source = tmp_path / "searched"
    shutil.copytree(trained.path, source)
    data = yaml.safe_load((source / "config.yaml").read_text())
    data["controller"].update(restarts=3, final_candidates=2, final_episodes=2)
    (source / "config.yaml").write_text(yaml.safe_dump(data))
    assert load_config(str(source / "config.yaml")).controller.restarts == 3  # valid CMA-ES
    capsys.readouterr()
    cfg, _ = borrow_world_model(source, tmp_path / "ppo", ["controller.algo=ppo"])
    c = cfg.controller
    assert (c.algo, c.restarts, c.final_candidates, c.final_episodes) == ("ppo", 1, 0, 0)
    assert ("this run takes controller.restarts=1 controller.final_candidates=0 "
            "controller.final_episodes=0") in capsys.readouterr().err
    # CMA-ES keeps the source's searches, and says nothing
    cfg, _ = borrow_world_model(source, tmp_path / "cmaes", [])
    assert (cfg.controller.restarts, cfg.controller.final_candidates) == (3, 2)
    assert capsys.readouterr().err == ""
    # the switch given as a whole section counts as the dotted key does
    off, said = sb3_search_settings_off(RunDir(source), ['controller={"algo": "ppo"}'])
    assert off == ["controller.restarts=1", "controller.final_candidates=0",
                   "controller.final_episodes=0"] and "controller.algo=ppo" in said
    off, _ = sb3_search_settings_off(RunDir(source), [
        'controller={"algo": "sac", "restarts": 2}', "controller.final_episodes=2"])
    assert off == ["controller.final_candidates=0"]  # the command's own are kept
    assert sb3_search_settings_off(RunDir(source), ["controller.algo=ppo",
                                                    "controller.algo=cmaes"]) == ([], "")
    # a search setting the command gives itself is kept, and SB3 refuses it by name
    with pytest.raises(ConfigError, match="'controller.restarts' above 1 needs"):
        borrow_world_model(source, tmp_path / "own", ["controller.algo=sac",
                                                      "controller.restarts=2"])
    # so on the run itself: PPO beside its CMA-ES C, its config.yaml left as it was
    before = (source / "config.yaml").read_bytes()
    capsys.readouterr()
    controller_script.main(["--run", str(source), *TINY_PPO])
    assert "this run takes controller.restarts=1" in capsys.readouterr().err
    assert (source / "controller" / "sb3_ppo.safetensors").exists()
    assert (source / "config.yaml").read_bytes() == before


def test_cmaes_on_a_borrowed_world_model_plays_the_runs_own_controller(shipped, tmp_path):
    home = tmp_path / "cmaes"
    args = ["--world-model", str(shipped), "--run", str(home)]
    # a C of another shape than the shipped one: the workers must read this run's config
    summary = controller_script.main(args + [
        "controller.hidden=4", "controller.clip_dims=[2]", "controller.generations=1",
        "controller.population=3", "controller.rollouts=1", "controller.engine=serial",
        "controller.eval_every=1", "controller.select_episodes=1"])
    assert summary["generations"] == 1
    run = RunDir(home)
    assert run.load_config().controller.hidden == 4
    # a rerun with no options continues the run's own config (nothing left to do)
    again = controller_script.main(args)
    assert again["generations"] == 1 and run.load_config().controller.hidden == 4
    result = evaluate_script.main(["--run", str(home), "--episodes", "1",
                                   "controller.engine=serial"])
    assert result["policy"] == "controller_selected"


def test_a_dotted_override_into_a_mapping_changes_only_that_key():
    base = load_config("carracing", ["solve", "ppo"])
    cfg = load_config("carracing", ["solve", "ppo"], [
        "controller.sb3_kwargs.gamma=0.995",
        "controller.sb3_kwargs.policy_kwargs.log_std_init=-1"])
    want = {**base.controller.sb3_kwargs, "gamma": 0.995,
            "policy_kwargs": {**base.controller.sb3_kwargs["policy_kwargs"],
                              "log_std_init": -1}}
    assert cfg.controller.sb3_kwargs == want
    assert base.controller.sb3_kwargs["gamma"] == 0.99
    # a whole mapping replaces the preset's
    whole = load_config("carracing", ["solve", "ppo"], ["controller.sb3_kwargs={gamma: 0.9}"])
    assert whole.controller.sb3_kwargs == {"gamma": 0.9}
    with pytest.raises(ConfigError, match="unknown key"):
        load_config("carracing", [], ["controller.nope.gamma=1"])


def test_shipping_a_shipped_agent_again_keeps_v_and_m_byte_identical(shipped, tmp_path):
    again = tmp_path / "again"
    export(shipped, again, fp16=True)
    for name in ("vae/model.safetensors", "vae/model.safetensors.json",
                 "memory/model.safetensors", "memory/model.safetensors.json",
                 "dream_starts.npz"):
        assert (again / name).read_bytes() == (shipped / name).read_bytes(), name


def test_a_borrowed_run_dreams_from_its_sources_training_episodes(trained, tmp_path):  # noqa: F811
    """``seed=N`` on a run on another run's world model changes C's training, not the
    data split: its dream starts are the source's training episodes."""
    source_cfg = trained.load_config()
    own_train, own_held, _ = latent_split(source_cfg, trained)
    # a seed that would hold out other episodes, were the split to follow it
    d = source_cfg.data
    other_seed = next(s for s in range(1, 50) if split_episodes(
        list_shards(trained.latents), d.holdout_fraction, s, d.holdout_min_episodes,
        holdout_base(source_cfg))[1] != own_held)
    # the source's own split no longer follows seed=N either, once its V is trained
    assert latent_split(replace(source_cfg, seed=other_seed), trained)[1] == own_held
    cfg, run = borrow_world_model(trained.path, tmp_path / "c", [f"seed={other_seed}"])
    assert cfg.seed == other_seed and run.data_seed(cfg) == source_cfg.seed
    assert latent_split(cfg, run)[:2] == (own_train, own_held)


def test_ppo_trains_on_the_world_model_of_cmaes_rounds(shipped, tmp_path):
    """CMA-ES rounds of Ha's loop made V and M (``run.iterations`` 2, data played by
    CMA-ES): a PPO run on that world model plays no rounds, so it is not refused for
    their data policy, and the shipped PPO agent loads; the run with the rounds itself
    still refuses PPO, since its next round would collect with CMA-ES's weights."""
    rounds = tmp_path / "rounds"
    shutil.copytree(shipped, rounds)
    (rounds / SHIPPED_FILE).unlink()  # a run of its own, no longer a shipped agent
    text = (rounds / "config.yaml").read_text()
    (rounds / "config.yaml").write_text(re.sub(r"(?m)^  iterations: 1$", "  iterations: 2", text))
    with pytest.raises(ConfigError, match="run.iterations"):
        RunDir(rounds).load_config(["controller.algo=ppo"], trained=False)
    home = tmp_path / "ppo"
    controller_script.main(["--world-model", str(rounds), "--run", str(home), *TINY_PPO])
    cfg = RunDir(home).load_config()
    assert (cfg.run.iterations, cfg.controller.algo) == (2, "ppo")
    ship = tmp_path / "ship"
    export(home, ship, policy="ppo")
    assert RunDir(ship).load_config().run.iterations == 2
    summary = evaluate_script.main(["--run", str(ship), "--episodes", "1",
                                    "--out", str(tmp_path / "eval")])
    assert summary["policy"] == "ppo"


def test_a_preset_on_a_shipped_takecover_world_model_is_the_doom_files(tmp_path):
    """``--world-model pretrained/takecover --preset ppo`` without ``--config`` looks for
    the preset in doom_takecover.yaml (which has none), not CarRacing's PPO; nothing is
    written."""
    source = Path(__file__).parent.parent / "pretrained" / "takecover"
    new = tmp_path / "c"
    with pytest.raises(ConfigError, match="doom_takecover.yaml: no preset 'ppo'.*--config"):
        controller_script.main(["--world-model", str(source), "--run", str(new),
                                "--preset", "ppo"])
    assert not new.exists()
