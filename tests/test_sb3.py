"""The SB3 route: rl-zoo-style kwargs, reward normalisation, resumable training with
checkpoints, selection on fixed seeds, batched evaluation, the controller preset over a
run."""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from stable_baselines3 import PPO
from torch import nn

from agents.sb3 import (
    play_policy_batched,
    play_sb3,
    play_sb3_batched,
    sb3_controller,
    sb3_model_kwargs,
    train_sb3,
)
from tests.conftest import run_of, write_tiny_run
from worldmodels.checkpoint import CheckpointError, file_digest, load_state
from worldmodels.config import ConfigError, load_config, save_config, validate
from worldmodels.run_dir import RunDir

REAL_TRAIN = PPO.train
#: 2 envs x 16 steps: one PPO update every 32 env steps
TINY = {"n_steps": 16, "batch_size": 16, "n_epochs": 1, "learning_rate": "lin_1e-3",
        "policy_kwargs": {"activation_fn": "GELU", "net_arch": {"pi": [8], "vf": [8]}}}


def tiny_sb3(cfg, timesteps: int = 128, **controller):
    c = cfg.controller
    c.algo, c.sb3_timesteps, c.sb3_envs, c.sb3_kwargs = "ppo", timesteps, 2, dict(TINY)
    c.sb3_checkpoint_steps = 32
    for k, v in controller.items():
        setattr(c, k, v)
    return cfg


def test_rl_zoo_kwargs_become_schedules_and_torch_classes():
    built = sb3_model_kwargs({"learning_rate": "lin_1e-4", "clip_range": "lin_0.2",
                              "gamma": 0.99, "policy_kwargs": {
                                  "activation_fn": "nn.GELU", "log_std_init": -2,
                                  "net_arch": {"pi": [256], "vf": [256]}}})
    assert built["learning_rate"](1.0) == pytest.approx(1e-4)
    assert built["learning_rate"](0.25) == pytest.approx(2.5e-5)
    assert built["clip_range"](0.5) == pytest.approx(0.1)
    assert built["gamma"] == 0.99
    assert built["policy_kwargs"] == {"activation_fn": nn.GELU, "log_std_init": -2,
                                      "net_arch": {"pi": [256], "vf": [256]}}
    with pytest.raises(ConfigError, match="policy_kwargs.activation_fn"):
        sb3_model_kwargs({"policy_kwargs": {"activation_fn": "Swish"}})
    with pytest.raises(ConfigError, match="sb3_kwargs.learning_rate"):
        sb3_model_kwargs({"learning_rate": "cosine_1e-4"})
    with pytest.raises(ConfigError, match="sb3_kwargs.clip_range"):
        sb3_model_kwargs({"clip_range": "lin_x"})


def _spy_lr(monkeypatch, stop_after: int = 0) -> list[float]:
    """The learning rate of every PPO update; ``stop_after`` > 0 kills training in the
    update after that many (a crash after the checkpoint of the step before it)."""
    seen: list[float] = []

    def train(self):
        if stop_after and len(seen) == stop_after:
            raise KeyboardInterrupt("killed")
        REAL_TRAIN(self)
        seen.append(self.policy.optimizer.param_groups[0]["lr"])

    monkeypatch.setattr(PPO, "train", train)
    return seen


def test_steps_that_are_not_whole_rollouts_are_rounded_up_and_said(tiny_run, capsys):
    cfg = tiny_sb3(tiny_run, timesteps=40)  # rollouts of 16 steps x 2 envs
    _, info = train_sb3(RunDir(run_of(cfg)), cfg, progress=False)
    assert info["num_timesteps"] == 64
    assert ("ppo collects 16 x 2 = 32 steps per update, so it trains to 64 steps "
            "(controller.sb3_timesteps=40" in capsys.readouterr().out)


def test_killed_sb3_training_resumes_to_the_same_end_and_schedule(tiny_run, monkeypatch):
    cfg = tiny_sb3(tiny_run, timesteps=384)  # 12 updates; episodes of 80 steps
    run = RunDir(run_of(cfg))
    config_before = (run_of(cfg) / "config.yaml").read_text()
    one_go = _spy_lr(monkeypatch)
    _, info = train_sb3(run, cfg, progress=False)
    assert info["num_timesteps"] == 384 and len(one_go) == 12
    # lin_1e-3: 1e-3 x the progress remaining after each rollout of 32 steps
    assert one_go == pytest.approx([1e-3 * (1 - 32 * k / 384) for k in range(1, 13)])
    # the SB3 route leaves the run's config (its CMA-ES controller) as it was
    assert (run_of(cfg) / "config.yaml").read_text() == config_before

    checkpoint = run.controller.sb3_checkpoint("ppo")
    checkpoint.unlink()
    killed = _spy_lr(monkeypatch, stop_after=6)  # killed in the 7th update
    with pytest.raises(KeyboardInterrupt):
        train_sb3(run, cfg, progress=False)
    assert load_state(checkpoint)["num_timesteps"] == 192 and killed == one_go[:6]
    resumed = _spy_lr(monkeypatch)
    model, info = train_sb3(run, cfg, progress=False)
    assert model.num_timesteps == 384 and info["num_timesteps"] == 384
    assert resumed == pytest.approx(one_go[6:])  # the schedule continued, not restarted
    state = load_state(checkpoint)
    assert state["num_timesteps"] == 384 and len(state["episode_returns"]) >= 4
    assert run.controller.sb3_curve("ppo").read_bytes()[:4] == b"\x89PNG"
    logs = sorted(run.tensorboard().glob("sb3_ppo_real_*"))
    assert len(logs) == 2  # the killed-and-resumed training continued its log (_2)

    curve = run.controller.sb3_curve("ppo")
    curve.unlink()  # stopped between the last checkpoint and its curve: drawn again
    skipped, again = train_sb3(run, cfg, progress=False)  # finished: nothing to do
    assert skipped is None and again["skipped"] and again["num_timesteps"] == 384
    assert curve.read_bytes()[:4] == b"\x89PNG"
    # a policy older than the finished checkpoint (a kill between the two writes, when
    # the checkpoint came first) is shipped again from the checkpoint
    weights, meta_path = run.controller.sb3("ppo")
    final = {k: v.clone() for k, v in load_file(str(weights)).items()}  # (not the mmap)
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()),
                                     "num_timesteps": 352}))
    weights.write_bytes(b"an older policy")
    _, reshipped = train_sb3(run, cfg, progress=False)
    assert reshipped["skipped"] and reshipped["num_timesteps"] == 384
    assert json.loads(meta_path.read_text())["num_timesteps"] == 384
    again = load_file(str(weights))
    assert again.keys() == final.keys()
    assert all(torch.equal(again[k], final[k]) for k in final)

    cfg.controller.sb3_kwargs = {**TINY, "n_epochs": 2}
    with pytest.raises(ConfigError, match=r"other settings.*n_epochs"):
        train_sb3(run, cfg, progress=False)
    # an unreadable checkpoint: its error says that without it the policy is trained
    # anew and replaced (it said "restart the optimizer from the last weights", and the
    # policy was silently replaced), and nothing is written
    cfg.controller.sb3_kwargs = dict(TINY)
    checkpoint.write_bytes(b"junk")
    policy = weights.read_bytes()
    replaced = f"step 0, which replaces {re.escape(str(weights))}: move"
    with pytest.raises(CheckpointError, match=replaced):
        train_sb3(run, cfg, progress=False)
    assert weights.read_bytes() == policy


def test_a_kill_resumes_the_selection_schedule_and_never_leaves_an_older_policy(
        tiny_run, monkeypatch):
    import agents.sb3 as sb3

    cfg = tiny_sb3(tiny_run, timesteps=192, sb3_eval_steps=64, select_episodes=1)
    _spy_lr(monkeypatch)
    train_sb3(RunDir(run_of(cfg)), cfg, progress=False)
    straight = [e["step"] for e in load_state(
        RunDir(run_of(cfg)).controller.sb3_checkpoint("ppo"))["evals"]]
    assert straight == [64, 128, 192]
    cfg.name = "killed"
    write_tiny_run(cfg)
    run = RunDir(run_of(cfg))
    checkpoint = run.controller.sb3_checkpoint("ppo")
    _spy_lr(monkeypatch, stop_after=3)  # killed in the 4th update: checkpoint at 96
    with pytest.raises(KeyboardInterrupt):
        train_sb3(run, cfg, progress=False)
    assert load_state(checkpoint)["num_timesteps"] == 96
    _spy_lr(monkeypatch)
    real_save = sb3.save_state

    def killed_at_the_end(path, state):  # between the last policy and the checkpoint
        if state["num_timesteps"] == 192:
            raise KeyboardInterrupt("killed")
        real_save(path, state)

    monkeypatch.setattr(sb3, "save_state", killed_at_the_end)
    with pytest.raises(KeyboardInterrupt):
        train_sb3(run, cfg, progress=False)
    weights, meta_path = run.controller.sb3("ppo")
    assert json.loads(meta_path.read_text())["num_timesteps"] == 192  # the policy first
    assert load_state(checkpoint)["num_timesteps"] == 160
    monkeypatch.setattr(sb3, "save_state", real_save)
    _, info = train_sb3(run, cfg, progress=False)  # resumed, not skipped
    assert not info.get("skipped") and info["num_timesteps"] == 192
    assert [e["step"] for e in load_state(checkpoint)["evals"]] == straight


def test_reward_normalisation_keeps_return_statistics(tiny_run):
    cfg = tiny_sb3(tiny_run, timesteps=64, sb3_normalize_reward=True)
    run = RunDir(run_of(cfg))
    model, _ = train_sb3(run, cfg, progress=False)
    norm = model.get_env()
    assert not norm.norm_obs and norm.norm_reward
    state = load_state(run.controller.sb3_checkpoint("ppo"))
    assert state["ret_rms"]["count"] == pytest.approx(norm.ret_rms.count)
    assert float(state["ret_rms"]["var"]) == pytest.approx(float(norm.ret_rms.var))
    cfg.controller.sb3_timesteps = 96  # resumed: the statistics come back
    model, _ = train_sb3(run, cfg, progress=False)
    assert model.get_env().ret_rms.count > state["ret_rms"]["count"]


def test_selection_ships_the_best_policy_on_the_selection_seeds(tiny_run):
    cfg = tiny_sb3(tiny_run, timesteps=96, sb3_eval_steps=32, select_episodes=2)
    run = RunDir(run_of(cfg))
    train_sb3(run, cfg, progress=False)
    weights, meta_path = run.controller.sb3("ppo")
    meta = json.loads(meta_path.read_text())
    state = load_state(run.controller.sb3_checkpoint("ppo"))
    assert [e["step"] for e in state["evals"]] == [32, 64, 96]
    best = max(state["evals"], key=lambda e: e["mean"])
    assert meta["source"] == "selected" and meta["selected"]["mean"] == best["mean"]
    from safetensors.torch import load_file

    shipped = load_file(str(weights))
    for k, v in state["selected"]["policy"].items():
        torch.testing.assert_close(shipped[k], v)


def test_batched_sb3_evaluation_returns_the_serial_returns(tiny_run):
    cfg = tiny_sb3(tiny_run, timesteps=32)
    run = RunDir(run_of(cfg))
    train_sb3(run, cfg, progress=False)
    seeds = [3, 1, 4]
    serial = play_sb3(run, cfg, "ppo", seeds)
    batched = play_sb3_batched(run, cfg, "ppo", seeds, batch=2)
    assert [n for _, n in batched] == [n for _, n in serial]
    np.testing.assert_allclose([r for r, _ in batched], [r for r, _ in serial], rtol=1e-5,
                               atol=1e-4)


def test_sampled_play_is_repeatable_and_leaves_torch_s_generator_alone(tiny_run):
    cfg = tiny_sb3(tiny_run, timesteps=32)
    cfg.controller.sb3_kwargs = {**TINY, "use_sde": True, "sde_sample_freq": 2}
    run = RunDir(run_of(cfg))
    train_sb3(run, cfg, progress=False)
    seeds = [3, 1, 4]
    mean_action = play_sb3_batched(run, cfg, "ppo", seeds, batch=2)
    cfg.controller.sb3_deterministic = False
    controller = sb3_controller(run, cfg, "ppo")
    assert controller.noise_every == 2 and not controller.deterministic
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    sampled = play_policy_batched(run, cfg, controller, seeds, batch=2)
    assert torch.equal(torch.rand(1), before)  # the caller's generator as it was
    assert play_policy_batched(run, cfg, controller, seeds, batch=2) == sampled  # repeatable
    assert play_sb3_batched(run, cfg, "ppo", seeds, batch=2) == sampled
    assert sampled != mean_action  # the samples are not the mean action


def test_a_controller_preset_layers_over_a_run(tiny_run):
    from worldmodels.config import cli_parser, parse_cli
    from worldmodels.run_dir import run_from_args

    run = str(run_of(tiny_run))
    parser = cli_parser("test")
    cfg, _ = run_from_args(parse_cli(parser, ["--run", run, "--preset", "ppo",
                                              "controller.sb3_timesteps=5000"]))
    ppo = load_config("carracing", ["ppo"]).controller
    assert cfg.controller.algo == "ppo" and cfg.controller.sb3_kwargs == ppo.sb3_kwargs
    assert cfg.controller.sb3_timesteps == 5000  # the command line comes last
    assert cfg.vae.z_dim == 4  # the rest is the run's own
    with pytest.raises(ConfigError, match="preset 'quick'.*sets 'collect'"):
        run_from_args(parse_cli(parser, ["--run", run, "--preset", "quick"]))


def test_collect_plays_the_runs_sb3_policy(tiny_run):
    """``collect.controller_weights=sb3``: the data policy is the run's SB3 policy by its
    mean action through the run's V and M (the next round's data of Ha's loop)."""
    from agents.collect import collect, episode_seeds
    from agents.vmc import VMCAgent
    from envs.factory import make_env_from_config
    from worldmodels.checkpoint import file_digest
    from worldmodels.shards import read_meta, read_npz

    cfg = tiny_sb3(tiny_run, timesteps=32)
    data = copy.deepcopy(cfg)
    c = data.collect
    c.policy, c.episodes, c.engine, c.controller_epsilon = "random:1,controller", 2, "serial", 0
    c.controller_weights = "sb3"
    run = RunDir(run_of(cfg))
    with pytest.raises(ConfigError, match="sb3_ppo.safetensors.*--algo ppo"):
        collect(data, progress=False)  # no policy trained yet: nothing written
    assert not list((run.home / "rollouts").glob("*.npz"))
    train_sb3(run, cfg, progress=False)
    collect(data, progress=False)
    shards = sorted((run.home / "rollouts").glob("ep_*.npz"))
    meta = read_meta(shards[1])
    weights = run.controller.sb3("ppo")[0]
    assert meta["policy"] == "controller"
    assert meta["controller"] == {"weights": "sb3_ppo", "digest": file_digest(weights),
                                  "epsilon": 0}
    env = make_env_from_config(cfg.env)
    policy = sb3_controller(run, cfg, "ppo")
    agent = VMCAgent.from_run(run, cfg, env.action_space, controller=policy)
    agent.reset(1)
    shard = read_npz(shards[1])
    obs, _ = env.reset(seed=episode_seeds(cfg.seed, 1)[0])
    for t in range(len(shard["action"])):
        np.testing.assert_allclose(agent.act(obs[None])[0], shard["action"][t], rtol=1e-5)
        obs = env.step(shard["action"][t])[0]
    env.close()


def test_the_sb3_data_policy_needs_an_sb3_algorithm(tiny_run):
    tiny_run.collect.controller_weights = "sb3"  # controller.algo is cmaes
    validate(tiny_run)  # no episode of the controller policy: nothing to play
    tiny_run.collect.policy = "random:1,controller"
    with pytest.raises(ConfigError, match="collect.controller_weights.*controller.algo"):
        validate(tiny_run)


def test_m_on_policy_plays_the_policy_and_scores_both(tiny_run):
    """tools/m_on_policy.py: its policy episodes are the SB3 policy's own (the returns
    and lengths of play_sb3 on the same seeds), and its table is repeatable."""
    from tools.m_on_policy import episode_nll, main

    cfg = tiny_sb3(tiny_run, timesteps=32)
    run = RunDir(run_of(cfg))
    train_sb3(run, cfg, progress=False)
    save_config(cfg, run.home / "config.yaml")  # the run's policy is the SB3 one
    from agents.vmc import VMCAgent
    from envs.factory import make_env_from_config

    env = make_env_from_config(cfg.env)
    agent = VMCAgent.from_run(run, cfg, env.action_space,
                              controller=sb3_controller(run, cfg, "ppo"))
    played = [episode_nll(agent, env, s, None, cfg) for s in (3, 5)]
    env.close()
    serial = play_sb3(run, cfg, "ppo", [3, 5])
    for (nll, ret, steps), (ret_sb3, steps_sb3) in zip(played, serial, strict=True):
        assert steps == steps_sb3 and math.isfinite(nll)
        assert ret == pytest.approx(ret_sb3, rel=1e-5, abs=1e-4)
    args = [str(run.home), "--episodes", "2", "--first-seed", "3",
            f"env.max_episode_steps={cfg.env.max_episode_steps}"]
    def without_seconds(text: str) -> list[str]:
        return [line.rsplit("|", 2)[0] for line in text.splitlines()]

    first = main(args)
    assert without_seconds(first) == without_seconds(main(args))  # repeatable
    assert "| ppo |" in first and "| brownian |" in first and "difference" in first


def test_a_training_can_start_from_another_run_s_policy(tiny_run, monkeypatch):
    cfg = tiny_sb3(tiny_run, timesteps=64)
    source_run = RunDir(run_of(cfg))
    train_sb3(source_run, cfg, progress=False)
    source = source_run.controller.sb3("ppo")[0]
    start = {k: v.clone() for k, v in load_file(str(source)).items()}

    fine = copy.deepcopy(cfg)
    fine.name, fine.seed = "fine", cfg.seed + 1
    write_tiny_run(fine)
    fine.controller.sb3_init = str(run_of(cfg))  # a run directory names its real policy
    run = RunDir(run_of(fine))
    monkeypatch.setattr(PPO, "train", lambda self: None)  # no update: the start stays
    _, info = train_sb3(run, fine, progress=False)
    assert info["init"] == file_digest(source) and info["init_path"] == str(source.absolute())
    shipped = load_file(str(run.controller.sb3("ppo")[0]))
    assert shipped.keys() == start.keys()
    assert all(torch.equal(shipped[k], start[k]) for k in start)

    # resumed with the file as it was, from another working directory: accepted
    fine.controller.sb3_timesteps = 96
    monkeypatch.chdir(run_of(cfg))
    fine.controller.sb3_init = "."
    _, info = train_sb3(run, fine, progress=False)
    assert info["num_timesteps"] == 96
    # a resumed training whose initial policy file changed since is refused
    fine.controller.sb3_timesteps = 128
    changed = {k: v + 1 for k, v in start.items()}
    from safetensors.torch import save_file

    save_file(changed, str(source))
    with pytest.raises(ConfigError, match=r"other settings.*init"):
        train_sb3(run, fine, progress=False)

    fine.name = "nowhere"
    write_tiny_run(fine)
    fine.controller.sb3_init = str(run_of(cfg) / "missing.safetensors")
    with pytest.raises(ConfigError, match=r"controller\.sb3_init.*missing\.safetensors"):
        train_sb3(RunDir(run_of(fine)), fine, progress=False)

    fine.name = "other_net"  # a policy of another network: refused, naming its file
    write_tiny_run(fine)
    fine.controller.sb3_init = str(source)
    other_net = {**TINY, "policy_kwargs": {"net_arch": {"pi": [16], "vf": [16]}}}
    fine.controller.sb3_kwargs = other_net
    with pytest.raises(ConfigError, match=r"sb3_ppo\.safetensors is ppo with policy_kwargs"):
        train_sb3(RunDir(run_of(fine)), fine, progress=False)
    source.with_suffix(".json").unlink()  # without its sidecar, loading it tells
    with pytest.raises(CheckpointError, match=r"sb3_ppo\.safetensors: does not fit"):
        train_sb3(RunDir(run_of(fine)), fine, progress=False)

    fine.name, fine.controller.sb3_kwargs = "other_m", dict(TINY)  # another world model
    write_tiny_run(fine)
    from tests.builders import make_frmdn
    from tests.conftest import CAR_ACTIONS
    from worldmodels.checkpoint import save_model

    torch.manual_seed(1)
    save_model(run_of(fine) / "memory" / "model.safetensors",
               make_frmdn(z_dim=4, action_dim=3, hidden=8, mixtures=2),
               meta={"done_pos_weight": 1.0, "action_space": CAR_ACTIONS})
    fine.controller.sb3_init = str(run_of(cfg))
    with pytest.raises(ConfigError, match=r"V and M differ"):
        train_sb3(RunDir(run_of(fine)), fine, progress=False)

    fine.controller.algo = "cmaes"
    with pytest.raises(ConfigError, match=r"controller\.sb3_init"):
        validate(fine)


def test_an_ensemble_plays_the_mean_of_its_policies_actions(tiny_run):
    """tools/ensemble_eval.py: one policy alone plays its own episodes; two give the mean
    of their actions; runs on other V and M are refused before anything is played."""
    from agents.seeds import evaluation_seeds
    from tools.ensemble_eval import EnsembleController, main

    cfg = tiny_sb3(tiny_run, timesteps=32)
    run = RunDir(run_of(cfg))
    train_sb3(run, cfg, progress=False)
    other = copy.deepcopy(cfg)
    other.name, other.seed = "other", cfg.seed + 1  # the same V and M, another policy
    write_tiny_run(other)
    train_sb3(RunDir(run_of(other)), other, progress=False)
    one, two = sb3_controller(run, cfg, "ppo"), sb3_controller(RunDir(run_of(other)), other,
                                                               "ppo")
    x = torch.randn(5, run.load_memory().feature_size())
    assert not torch.allclose(one(x), two(x))
    torch.testing.assert_close(EnsembleController([one, two])(x), (one(x) + two(x)) / 2)

    alone = main([str(run_of(cfg)), "--episodes", "3", "--batch", "2"])
    seeds = evaluation_seeds(cfg.seed, 3)
    assert alone == [r for r, _ in play_policy_batched(run, cfg, one, seeds, 2)]
    both = main([str(run_of(cfg)), str(run_of(other)), "--episodes", "3", "--batch", "2"])
    assert both == [r for r, _ in play_policy_batched(
        run, cfg, EnsembleController([one, two]), seeds, 2)]

    run_of(other).joinpath("vae", "model.safetensors").write_bytes(b"another V")
    with pytest.raises(ConfigError, match="V and M differ"):
        main([str(run_of(cfg)), str(run_of(other)), "--episodes", "1"])


def test_a_policy_with_nan_weights_is_refused_naming_its_file(tiny_run):
    cfg = tiny_sb3(tiny_run, timesteps=32)
    run = RunDir(run_of(cfg))
    train_sb3(run, cfg, progress=False)
    path = run.controller.sb3("ppo")[0]
    tensors = load_file(str(path))
    key = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    tensors[key].view(-1)[0] = float("nan")
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=rf"{path.name}: '{re.escape(key)}' holds NaN"):
        sb3_controller(run, cfg, "ppo", cfg.controller.environment)


def test_a_resumed_sac_training_keeps_its_replay_buffer_and_entropy_coefficient(
        tiny_run, monkeypatch):
    """SB3's get_parameters leaves out the replay buffer, SAC's log_ent_coef and the
    update count; without them a resume trains on an empty buffer at ent_coef 1."""
    from stable_baselines3 import SAC

    c = tiny_run.controller
    c.algo, c.sb3_envs, c.sb3_checkpoint_steps, c.sb3_timesteps = "sac", 1, 0, 60
    c.sb3_kwargs = {"learning_starts": 20, "batch_size": 16, "buffer_size": 1000,
                    "policy_kwargs": {"net_arch": [8]}}
    run = RunDir(run_of(tiny_run))
    real_train = SAC.train
    seen: list[tuple[int, int, float, int]] = []

    def spy(self, gradient_steps, batch_size=64):
        seen.append((self.num_timesteps, self.replay_buffer.size(),
                     float(self.log_ent_coef), self._n_updates))
        real_train(self, gradient_steps, batch_size)

    monkeypatch.setattr(SAC, "train", spy)
    model, _ = train_sb3(run, tiny_run, progress=False)
    assert seen[-1][:2] == (60, 60)  # one env: a transition a step
    end = (float(model.log_ent_coef), model._n_updates)
    assert end[0] != 0.0  # trained away from ent_coef 1
    seen.clear()
    c.sb3_timesteps = 70
    train_sb3(run, tiny_run, progress=False)
    assert seen[0][:2] == (61, 61)  # the 60 saved transitions and the new one
    assert seen[0][2:] == end  # the coefficient and the update count go on

    checkpoint = run.controller.sb3_checkpoint("sac")  # one made without them: refused
    state = load_state(checkpoint)
    del state["off_policy"]
    from worldmodels.checkpoint import save_state

    save_state(checkpoint, state)
    c.sb3_timesteps = 80
    with pytest.raises(CheckpointError, match=r"sb3_sac.*without its replay buffer"):
        train_sb3(run, tiny_run, progress=False)


def test_a_use_cell_policy_plays_on_its_own_features_and_refuses_a_resume_without(
        tiny_run):
    cfg = tiny_sb3(tiny_run, timesteps=32, use_cell=True)
    run = RunDir(run_of(cfg))
    train_sb3(run, cfg, progress=False)
    cfg.controller.use_cell = False  # the run's CMA-ES setting: the policy reads [z, c, h]
    controller = sb3_controller(run, cfg, "ppo")
    assert controller.use_cell
    assert len(play_sb3(run, cfg, "ppo", [3])) == 1
    cfg.controller.sb3_timesteps = 64
    with pytest.raises(ConfigError, match=r"other settings.*use_cell: True -> False"):
        train_sb3(run, cfg, progress=False)


def test_an_initial_policy_file_from_another_world_model_is_refused(tiny_run):
    cfg = tiny_sb3(tiny_run, timesteps=32)
    source_run = RunDir(run_of(cfg))
    train_sb3(source_run, cfg, progress=False)
    weights, meta_path = source_run.controller.sb3("ppo")
    assert json.loads(meta_path.read_text())["world_model"] == \
        source_run.world_model_digests()
    from tests.builders import make_frmdn
    from tests.conftest import CAR_ACTIONS
    from worldmodels.checkpoint import save_model

    other = copy.deepcopy(cfg)
    other.name = "other_m"
    write_tiny_run(other)
    torch.manual_seed(1)
    save_model(run_of(other) / "memory" / "model.safetensors",
               make_frmdn(z_dim=4, action_dim=3, hidden=8, mixtures=2),
               meta={"done_pos_weight": 1.0, "action_space": CAR_ACTIONS})
    copied = run_of(other).parent / "elsewhere" / weights.name  # out of its run: the sidecar
    copied.parent.mkdir()
    copied.write_bytes(weights.read_bytes())
    copied.with_suffix(".json").write_text(meta_path.read_text())
    for source in (weights, copied):
        other.controller.sb3_init = str(source)
        with pytest.raises(ConfigError, match=r"V and M differ"):
            train_sb3(RunDir(run_of(other)), other, progress=False)


def test_a_selection_leaves_the_training_s_gsde_noise_as_it_was():
    from stable_baselines3.common.env_util import make_vec_env

    from agents.sb3 import SB3Controller, kept_exploration_noise

    model = PPO("MlpPolicy", make_vec_env("Pendulum-v1", 2), use_sde=True, n_steps=8,
                seed=0)
    model.policy.reset_noise(2)  # what a rollout starts with
    before = model.policy.action_dist.exploration_matrices.clone()
    with kept_exploration_noise(model.policy):
        SB3Controller(model.policy, deterministic=False)(torch.zeros(5, 3))
        assert model.policy.action_dist.exploration_matrices.shape[0] == 5  # redrawn
    assert torch.equal(model.policy.action_dist.exploration_matrices, before)


def test_a_real_env_training_refuses_a_resume_in_another_agent_precision(tiny_run):
    """V reads the real frames of an SB3 training in ``controller.agent_precision``: a
    checkpoint made in float32 does not train on in bfloat16 (its policy learnt other
    features), and a float32 checkpoint's settings are those written before the key was."""
    cfg = tiny_sb3(tiny_run, timesteps=32)
    run = RunDir(run_of(cfg))
    train_sb3(run, cfg, progress=False)
    assert "agent_precision" not in load_state(run.controller.sb3_checkpoint("ppo"))["settings"]
    cfg.controller.sb3_timesteps = 64
    cfg.controller.agent_precision = "bfloat16"
    with pytest.raises(ConfigError, match=r"agent_precision: None -> 'bfloat16'"):
        train_sb3(run, cfg, progress=False)
