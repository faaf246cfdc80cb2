"""Batched acting: N episodes stepped together give the returns batch-1 play gives."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from agents.batched import BatchedActor, Episode
from agents.cmaes import ProcessEvaluator
from agents.rollouts import RolloutWorker
from envs.factory import make_env_from_config
from tests.conftest import run_of
from worldmodels.run_dir import RunDir

N_PARAMS = (4 + 8) * 3 + 3


def test_batched_play_equals_batch_1_play(tiny_run):
    worker = RolloutWorker(RunDir(run_of(tiny_run)))
    rng = np.random.default_rng(0)
    params = rng.normal(0, 0.5, size=(3, N_PARAMS)).astype(np.float32)
    # mixed: three controllers, random play, caps and stalls; more episodes than slots
    episodes = [Episode(3, p, max_steps=cap) for p in params for cap in (0, 25)]
    episodes += [Episode(7, None), Episode(8, params[0], stall_steps=10)]
    one = [worker.play_one(e.params, e.seed, e.max_steps, e.stall_steps) for e in episodes]
    actor = BatchedActor(worker.agent, lambda: _env(tiny_run), 4)
    many = actor.play(episodes)
    assert [r.steps for r in many] == [r.steps for r in one]
    np.testing.assert_allclose([r.ret for r in many], [r.ret for r in one], rtol=1e-4, atol=1e-3)
    assert any(r.steps == 25 for r in many) and any(r.steps == 80 for r in many)
    actor.close()


def test_a_traced_episode_keeps_each_steps_latent_and_action(tiny_run):
    import torch

    worker = RolloutWorker(RunDir(run_of(tiny_run)))
    params = np.random.default_rng(2).normal(0, 0.5, size=N_PARAMS).astype(np.float32)
    # beside an untraced episode and random play (a slot V and M skip)
    traced, plain, _ = BatchedActor(worker.agent, lambda: _env(tiny_run), 3).play(
        [Episode(4, params, record=True, trace=True), Episode(4, params, max_steps=30),
         Episode(6, None, max_steps=20)])
    assert plain.latents == [] and plain.actions == []
    assert len(traced.latents) == len(traced.actions) == traced.steps
    frames = torch.from_numpy(np.stack(traced.frames[:-1]))  # the frame before each step
    with torch.no_grad():
        z = worker.agent.encode(frames).numpy()
    np.testing.assert_allclose(np.stack(traced.latents), z, atol=1e-5)
    # the actions C took: replayed in a fresh env they give the same return
    env = _env(tiny_run)
    env.reset(seed=4)
    ret = sum(float(env.step(a)[1]) for a in traced.actions)
    assert ret == pytest.approx(traced.ret, abs=1e-6)


def _env(cfg):
    from envs.factory import make_env_from_config

    return make_env_from_config(cfg.env)


def test_the_evaluator_gives_the_same_fitness_at_any_batch(tiny_run):
    params = np.random.default_rng(1).normal(0, 0.5, size=(3, N_PARAMS))
    run = RunDir(run_of(tiny_run))
    base, base_steps = ProcessEvaluator(run, "serial", max_steps=30).returns(list(params), [5, 6])
    got, steps = ProcessEvaluator(run, "serial", max_steps=30, batch=4).returns(
        list(params), [5, 6])
    np.testing.assert_array_equal(steps, base_steps)
    np.testing.assert_allclose(got, base, rtol=1e-4, atol=1e-3)


def test_a_batch_must_hold_an_episode(tiny_run):
    worker = RolloutWorker(RunDir(run_of(tiny_run)))
    with pytest.raises(ValueError, match="batch"):
        BatchedActor(worker.agent, lambda: worker.env, 0)


def test_latent_vec_env_gives_each_env_what_the_single_wrapper_gives(tiny_run):
    from agents.sb3 import latent_vec_env, make_latent_env

    run = RunDir(run_of(tiny_run))
    tiny_run.env.max_episode_steps = 12  # an episode ends within the test: auto-reset
    venv = latent_vec_env(run, tiny_run, 3)
    singles = [make_latent_env(run, overrides=("env.max_episode_steps=12",)) for _ in range(3)]
    venv.seed(5)
    obs = venv.reset()
    expected = np.stack([env.reset(seed=5 + i)[0] for i, env in enumerate(singles)])
    np.testing.assert_allclose(obs, expected, atol=1e-5)
    rng, ended = np.random.default_rng(0), 0
    for _ in range(14):
        actions = rng.uniform([-1, 0, 0], [1, 1, 1], size=(3, 3)).astype(np.float32)
        obs, rewards, dones, infos = venv.step(actions)
        for i, env in enumerate(singles):
            o, r, terminated, truncated, _ = env.step(actions[i])
            assert dones[i] == (terminated or truncated) and abs(rewards[i] - r) < 1e-4
            if dones[i]:
                ended += 1
                np.testing.assert_allclose(infos[i]["terminal_observation"], o, atol=1e-5)
                o, _ = env.reset()
                assert np.all(obs[i, 4:] == 0)  # M starts again from zeros
            np.testing.assert_allclose(obs[i], o, atol=1e-4)
    assert ended == 3 and venv.observation_space.shape == (12,)


def test_dream_vec_env_restarts_ended_dreams_and_is_reproducible(tiny_cfg):
    from envs.dream_env import dream_vec_env
    from tests.test_dream import write_dream_run

    cfg = write_dream_run(tiny_cfg, population=3, rollouts=1, generations=1)
    run = RunDir(run_of(cfg))
    venv = dream_vec_env(run, cfg, 16)
    venv.seed(3)
    first = venv.reset()
    assert first.shape == (16, 12) and np.all(first[:, 4:] == 0)
    actions = np.random.default_rng(0).uniform([-1, 0, 0], [1, 1, 1], (60, 16, 3))
    ended, trace = 0, []
    for a in actions:
        obs, rewards, dones, infos = venv.step(a.astype(np.float32))
        trace.append(obs)
        for i in np.flatnonzero(dones):
            ended += 1
            assert infos[i]["terminal_observation"].shape == (12,)
            assert np.all(obs[i, 4:] == 0)  # a new dream, M from zeros
    assert ended >= 16  # dreams are capped at 40 steps: all ended once, and went on
    venv.seed(3)
    np.testing.assert_array_equal(venv.reset(), first)
    np.testing.assert_array_equal(venv.step(actions[0].astype(np.float32))[0], trace[0])
    # SB3's set_options: the next reset starts the dreams asked for from those start
    # latents, the others as without options (was: accepted and ignored)
    starts = [{"start": 0}] + [{}] * 14 + [{"start": 0}]
    venv.seed(3)
    venv.set_options(starts)
    asked = venv.reset()
    np.testing.assert_array_equal(asked[1:15], first[1:15])
    z0 = venv.dream.mu0[0].numpy()
    assert np.abs(asked[[0, 15], :4] - z0).max() < np.abs(first[[0, 15], :4] - z0).max()
    venv.seed(3)
    np.testing.assert_array_equal(venv.reset(), first)  # options hold for one reset
    venv.set_options({"start": len(venv.dream.mu0)})
    with pytest.raises(ValueError, match="'start' is"):
        venv.reset()
    import torch

    before = torch.get_num_threads()
    try:  # dream.threads holds for SB3's dreams as for CMA-ES's (runs side by side)
        torch.set_num_threads(2)
        dream_vec_env(run, replace(cfg, dream=replace(cfg.dream, threads=1)), 2)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_bfloat16_agent_encodes_close_to_float32_and_plays(tiny_run):
    import dataclasses

    import torch

    from agents.vmc import VMCAgent

    run = RunDir(run_of(tiny_run))
    env = _env(tiny_run)
    frames, (obs, _) = [], env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(60):  # real frames, from the zoom-in to the track
        frames.append(obs)
        obs = env.step(env.action_space.sample())[0]
    x = torch.from_numpy(np.stack(frames))
    half_cfg = dataclasses.replace(tiny_run, controller=dataclasses.replace(
        tiny_run.controller, agent_precision="bfloat16"))
    full = VMCAgent.from_run(run, tiny_run, env.action_space)
    half = VMCAgent.from_run(run, half_cfg, env.action_space)
    assert (full.precision, half.precision) == ("float32", "bfloat16")
    with torch.no_grad():
        z, z_half = full.encode(x), half.encode(x)
    assert z_half.dtype == torch.float32 and z_half.shape == z.shape
    torch.testing.assert_close(z, full.vae.encode_mean(x))  # float32: V itself
    # bfloat16 keeps 8 significant bits: errors of a fraction of a percent of the
    # latents' size (this V is untrained, so its latents barely vary across frames; a
    # trained V's errors against their spread are in docs/performance.md)
    error = (z_half - z).norm(dim=1) / z.norm(dim=1)
    assert 0 < error.mean() < 0.01 and error.max() < 0.03, error
    params = np.random.default_rng(0).normal(0, 0.5, size=(2, N_PARAMS)).astype(np.float32)
    results = BatchedActor(half, lambda: _env(tiny_run), 2).play(
        [Episode(3, p, max_steps=20) for p in params])
    assert [r.steps for r in results] == [20, 20]
    # an evaluation of a trained run may play in bfloat16 (a runtime key)
    fitness, _ = ProcessEvaluator(run, "serial", max_steps=10, batch=2, overrides=(
        "controller.agent_precision=bfloat16",)).returns(list(params), [5])
    assert np.isfinite(fitness).all()


def test_agent_precision_is_checked():
    from agents.vmc import VMCAgent
    from worldmodels.config import ConfigError, load_config

    cfg = load_config("carracing", [], ["controller.agent_precision=bfloat16"])
    assert cfg.controller.agent_precision == "bfloat16"
    assert load_config("carracing").controller.agent_precision == "float32"
    with pytest.raises(ConfigError, match="controller.agent_precision"):
        load_config("carracing", [], ["controller.agent_precision=float16"])
    with pytest.raises(ConfigError, match="controller.agent_precision"):
        VMCAgent(None, None, None, precision="fp16")  # type: ignore[arg-type]


def test_sb3_real_envs_read_frames_in_the_agent_precision(tiny_run):
    """``controller.agent_precision`` is the same in SB3's [z, h] envs as where the policy
    plays (the V-M-C agent): a policy trains on the features it acts on."""
    from agents.sb3 import latent_vec_env, make_latent_env
    from agents.vmc import VMCAgent

    run = RunDir(run_of(tiny_run))
    read = {}
    for precision in ("float32", "bfloat16"):
        tiny_run.controller.agent_precision = precision
        venv = latent_vec_env(run, tiny_run, 2)
        venv.seed(5)
        obs = venv.reset()
        single = make_latent_env(run, overrides=(f"controller.agent_precision={precision}",))
        np.testing.assert_allclose(single.reset(seed=5)[0], obs[0], rtol=1e-5, atol=1e-7)
        frames = np.stack([make_env_from_config(tiny_run.env).reset(seed=5 + i)[0]
                           for i in range(2)])
        agent = VMCAgent.from_run(run, tiny_run, venv.action_space)
        with torch.no_grad():
            z = agent.encode(torch.from_numpy(frames)).numpy()
        np.testing.assert_allclose(obs[:, : z.shape[1]], z, rtol=1e-5, atol=1e-7)
        read[precision] = z
    gap = np.abs(read["float32"] - read["bfloat16"]) / np.abs(read["float32"])
    assert gap.max() > 1e-3  # the two precisions read differently (past the tolerance)
