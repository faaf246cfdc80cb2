"""A run is its directory: a trained run moved anywhere works through every entry point
from any working directory, and a refused command changes no file of the run."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import gymnasium as gym
import pytest

import dream as dream_script
import encode as encode_script
import evaluate as evaluate_script
import run as run_script
import train_controller as controller_script
import train_frmdn as frmdn_script
import train_vae as vae_script
from tests.test_run import tiny_job_args
from worldmodels.config import ConfigError
from worldmodels.errors import run_cli
from worldmodels.run_dir import RunDir

ENVS = {"CarRacing-v3": [],
        "VizdoomTakeCover-v1": ["--config", "doom_takecover", "controller.use_cell=true"]}


def trained_run(root: Path, env_id: str) -> Path:
    """A tiny run through every stage (C trained in the dream), at its default place."""
    args = tiny_job_args(root, "dream") + ENVS[env_id]
    if env_id != "CarRacing-v3":
        pytest.importorskip("vizdoom")
        args = [a for a in args if not a.startswith("env.max_episode_steps")] + [
            "env.max_episode_steps=40", "dream.check_episodes=1"]
    run_script.main(args)
    return root / "runs" / env_id / "tiny"


@pytest.fixture(scope="module", params=list(ENVS))
def moved_run(request, tmp_path_factory):
    """(the run moved to another directory, its results before the move). A decoy with
    the original's relative path holds no data, so any stage that rebuilt the path from
    the config's relative root would fail or read nothing."""
    base = tmp_path_factory.mktemp("original")
    original = trained_run(base, request.param)
    before = {"eval": evaluate_script.main(["--run", str(original), "--episodes", "2",
                                            "controller.engine=serial"]),
              "dream": dream_script.main(["--run", str(original), "--dream-only",
                                          "--steps", "6", "--seed", "1"])}
    moved = tmp_path_factory.mktemp("elsewhere") / "copied-run"
    shutil.move(original, moved)
    return moved, before


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Another working directory, holding a decoy run tree with no data in it."""
    for env_id in ENVS:
        (tmp_path / "runs" / env_id / "tiny" / "latents").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_moved_run_works_through_every_entry_point(moved_run, elsewhere):
    moved, before = moved_run
    again = evaluate_script.main(["--run", str(moved), "--episodes", "2",
                                  "controller.engine=serial"])
    assert again["mean"] == before["eval"]["mean"]
    assert again["digests"] == before["eval"]["digests"]  # tiny runs' means tie across agents
    assert (moved / "eval" / "controller.json").exists()
    # --config DIR/config.yaml is the run at DIR
    by_config = evaluate_script.main(["--config", str(moved / "config.yaml"), "--episodes",
                                      "2", "--policy", "random", "controller.engine=serial"])
    assert by_config["episodes"] == 2 and (moved / "eval" / "random.json").exists()
    dreamt = dream_script.main(["--run", str(moved), "--dream-only", "--steps", "6",
                                "--seed", "1"])
    assert {k: dreamt[k] for k in ("dream_steps", "dream_return")} == \
        {k: before["dream"][k] for k in ("dream_steps", "dream_return")}
    assert Path(dreamt["gif"]).is_relative_to(moved)
    # seed=1 is the same dream as --seed 1; both, disagreeing, are refused
    by_key = dream_script.main(["--run", str(moved), "--dream-only", "--steps", "6", "seed=1"])
    assert by_key["dream_return"] == dreamt["dream_return"] and by_key["gif"] == dreamt["gif"]
    with pytest.raises(ConfigError, match="give one of them"):
        dream_script.main(["--run", str(moved), "--dream-only", "--seed", "2", "seed=1"])
    virtual = evaluate_script.main(["--run", str(moved), "--in-dream", "--episodes", "3"])
    assert virtual["episodes"] == 3
    gens = json.loads((moved / "controller" / "generations.json").read_text())
    more = controller_script.main(["--run", str(moved), f"controller.generations={len(gens) + 1}"])
    assert more["generations"] == len(gens) + 1
    summary = run_script.main(["--run", str(moved)])
    assert summary["collect"]["episodes_new"] == 0 and summary["evaluate"]["episodes"] == 1
    assert not any((elsewhere / "runs").rglob("*.*"))  # nothing read or written there


def test_gymnasium_and_sb3_entry_points_locate_a_moved_run(moved_run, elsewhere):
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    import envs  # noqa: F401  (registers worldmodels/Dream-v0)
    from agents.sb3 import make_latent_env

    moved, _ = moved_run
    dream_env = gym.make("worldmodels/Dream-v0", run_dir=str(moved))
    gym_check(dream_env.unwrapped)
    sb3_check(dream_env.unwrapped)
    latent_env = make_latent_env(moved)
    sb3_check(latent_env)
    obs, _ = latent_env.reset(seed=0)
    assert obs.shape == latent_env.observation_space.shape


def run_files(run: Path) -> dict[str, str]:
    """Every file of the run and the hash of its contents."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def car_run(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("refused"), "CarRacing-v3")


@pytest.mark.parametrize("script, args, message", [
    (encode_script, ["vae.z_dim=16"], "z_dim"),
    (vae_script, ["vae.z_dim=16"], "z_dim"),
    (frmdn_script, ["memory.hidden=16"], "hidden"),
    (frmdn_script, ["vae.z_dim=16"], "z_dim"),
    (controller_script, ["controller.population=5"], "population"),
    (controller_script, ["vae.z_dim=16"], "z_dim"),
    (evaluate_script, ["vae.z_dim=16"], "fixed by its files"),
    (evaluate_script, ["--policy", "ppo"], "no ppo policy"),
    (dream_script, ["memory.hidden=16"], "fixed by its files"),
])
def test_a_refused_command_changes_no_file_of_the_run(car_run, capsys, script, args, message):
    evaluate_script.main(["--run", str(car_run), "--episodes", "1", "controller.engine=serial"])
    before = run_files(car_run)
    with pytest.raises(SystemExit) as stop:
        run_cli(script.main, ["--run", str(car_run), *args])
    assert stop.value.code == 2
    # a tiny run's warning (fewer than data.holdout_min_episodes held out) may come first
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines()
                    if not line.startswith("warning: only"))
    assert len(err.splitlines()) == 1 and message in err
    assert run_files(car_run) == before
    # the run still works as it did
    again = evaluate_script.main(["--run", str(car_run), "--episodes", "1",
                                  "controller.engine=serial"])
    assert again["episodes"] == 1


def test_two_refused_commands_keep_config_and_prev(car_run):
    (car_run / "config.prev.yaml").write_text("previous: kept\n")
    config = (car_run / "config.yaml").read_text()
    for _ in range(2):
        with pytest.raises(SystemExit):
            run_cli(encode_script.main, ["--run", str(car_run), "vae.z_dim=16"])
    assert (car_run / "config.yaml").read_text() == config
    assert (car_run / "config.prev.yaml").read_text() == "previous: kept\n"


def test_an_accepted_change_keeps_the_previous_config(car_run, capsys):
    config = (car_run / "config.yaml").read_text()
    run = RunDir(car_run)
    cfg = run.load_config(["controller.eval_episodes=1"], trained=False)
    controller_script.main(["--run", str(car_run),
                            f"controller.generations={cfg.controller.generations}",
                            "controller.eval_every=7"])
    assert "controller.eval_every: 0 -> 7" in capsys.readouterr().err
    assert (car_run / "config.prev.yaml").read_text() == config
    assert run.load_config().controller.eval_every == 7


def test_run_and_config_options_are_exclusive(car_run):
    with pytest.raises(ConfigError, match="not both"):
        evaluate_script.main(["--run", str(car_run), "--config", "carracing"])
    with pytest.raises(ConfigError, match="--preset"):
        evaluate_script.main(["--run", str(car_run), "--preset", "quick"])
    with pytest.raises(ConfigError, match="no such file"):
        evaluate_script.main(["--run", str(car_run / "nowhere")])


def test_dream_overrides_reach_the_dream(car_run):
    """dream.* on the command line changes the dream that evaluate --in-dream and
    dream.py play (they used to re-read the run's saved config and drop them)."""
    capped = evaluate_script.main(["--run", str(car_run), "--in-dream", "--episodes", "4",
                                   "dream.max_steps=2", "dream.temperature=1.3"])
    assert capped["mean_steps"] <= 2 and capped["temperature"] == 1.3
    shown = dream_script.main(["--run", str(car_run), "--dream-only", "dream.max_steps=3"])
    assert shown["dream_steps"] <= 3 and shown["gif"].endswith("tau1.15_dream-only.gif")


def test_cmaes_in_the_dream_leaves_torch_threads_alone(car_run):
    """dream.threads=0 means torch's default: training C in the dream used to build a
    real-env worker in this process, which set one thread for the whole process."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gens = json.loads((car_run / "controller" / "generations.json").read_text())
        controller_script.main(["--run", str(car_run), "dream.threads=0",
                                f"controller.generations={len(gens) + 1}"])
        assert torch.get_num_threads() == 2
        # a serial real-env evaluation runs its episode on one thread, then restores it
        evaluate_script.main(["--run", str(car_run), "--episodes", "1",
                              "controller.engine=serial"])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_main_job_trains_the_sb3_algorithm_it_is_given(tmp_path, monkeypatch):
    import agents.evaluation

    seen = {}
    real_evaluate = agents.evaluation.evaluate

    def spy(*args, **kwargs):
        seen.setdefault("ray_address", kwargs["ray_address"])
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(run_script, "evaluate", spy)
    args = tiny_job_args(tmp_path, "dream") + [
        "controller.algo=ppo", "controller.sb3_timesteps=64", "dream.check_episodes=0",
        "controller.sb3_kwargs={n_steps: 16, batch_size: 16}", "controller.sb3_envs=4",
        "controller.ray_address=localhost:1"]
    summary = run_script.main(args)
    assert summary["controller"]["algo"] == "ppo"
    assert summary["evaluate"]["policy"] == "ppo_dream"
    assert seen["ray_address"] == "localhost:1"  # passed through to the evaluator
    assert not (tmp_path / "runs" / "CarRacing-v3" / "tiny" / "controller"
                / "best.safetensors").exists()  # no CMA-ES ran


def test_only_a_file_named_config_yaml_stands_for_its_run(tmp_path):
    """A whole-config YAML of another name is a config file, even beside a run's
    config.yaml; a typo next to ``include:`` is named, not taken for a run."""
    from worldmodels.config import ConfigError, cli_parser, load_config, parse_cli, save_config
    from worldmodels.run_dir import is_run_config, run_from_args

    exp = tmp_path / "exp"
    exp.mkdir()
    save_config(load_config("carracing", ["quick"]), exp / "config.yaml")
    (exp / "small.yaml").write_text(f"vae: {{z_dim: 16}}\nroot: {tmp_path / 'runs'}\n")
    (exp / "typo.yaml").write_text("include: ../x\ndefault: {}\n")
    assert is_run_config(str(exp / "config.yaml"))
    assert not is_run_config(str(exp / "small.yaml"))
    parser = cli_parser("test")
    cfg, run = run_from_args(parse_cli(parser, ["--config", str(exp / "small.yaml")]))
    assert cfg.vae.z_dim == 16 and run.home.parent.parent == tmp_path / "runs"
    cfg, run = run_from_args(parse_cli(parser, ["--config", str(exp / "config.yaml")]))
    assert run.home == exp and cfg.vae.z_dim == load_config("carracing", ["quick"]).vae.z_dim
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown top-level key\(s\) \['default'\]"):
        run_from_args(parse_cli(parser, ["--config", str(exp / "typo.yaml")]))


def test_world_model_digests_name_a_missing_file(tmp_path):
    """A directory without V or M (an empty one given as a run, say) is named, not a
    FileNotFoundError of the first file hashed."""
    from worldmodels.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=r"vae/model.safetensors: no such file; is .*"
                                              r"a trained run\?"):
        RunDir(tmp_path).world_model_digests()
