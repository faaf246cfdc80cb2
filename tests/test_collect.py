import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agents.collect import check_compatible, collect
from agents.policies import BrownianPolicy, LinearPolicy, make_policy
from tests.conftest import run_of
from worldmodels.config import ConfigError
from worldmodels.shards import RolloutShard, ShardError, list_shards

ROOT = Path(__file__).resolve().parent.parent


def _shards(directory):
    return [RolloutShard.load(p) for p in list_shards(directory)]


def test_collect_writes_valid_shards_and_resumes(tiny_cfg):
    report = collect(tiny_cfg, progress=False)
    out = run_of(tiny_cfg) / "rollouts"
    assert report.episodes_new == 2
    shards = _shards(out)
    assert len(shards) == 2
    for s in shards:
        assert s.obs.shape == (len(s) + 1, 64, 64, 3) and s.obs.dtype == np.uint8
        assert s.action.shape == (len(s), 3) and s.action.dtype == np.float32
        assert len(s) == 20 and s.truncated[-1]
        assert s.meta["env_id"] == "CarRacing-v3" and s.meta["policy"] == "brownian"
    # a rerun with more episodes collects only the missing ones
    first = (out / "ep_000000.npz").stat().st_mtime_ns
    tiny_cfg.collect.episodes = 3
    assert collect(tiny_cfg, progress=False).episodes_new == 1
    assert (out / "ep_000000.npz").stat().st_mtime_ns == first
    # shards of another seed or policy are not silently mixed in
    tiny_cfg.collect.episodes = 4
    tiny_cfg.seed = 7
    with pytest.raises(ShardError, match="seed=0.*seed=7"):
        collect(tiny_cfg, out_dir=out, progress=False)
    assert len(list_shards(out)) == 3


def test_same_seed_same_shards_whatever_the_engine(tiny_cfg, tmp_path):
    collect(tiny_cfg, out_dir=tmp_path / "serial", progress=False)
    tiny_cfg.collect.engine = "process"
    tiny_cfg.collect.workers = 2
    collect(tiny_cfg, out_dir=tmp_path / "procs", progress=False)
    a, b = _shards(tmp_path / "serial"), _shards(tmp_path / "procs")
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.obs, y.obs)
        np.testing.assert_array_equal(x.action, y.action)
        np.testing.assert_array_equal(x.reward, y.reward)
    # and a different seed gives a different episode
    tiny_cfg.seed = 1
    collect(tiny_cfg, out_dir=tmp_path / "other", progress=False)
    assert not np.array_equal(_shards(tmp_path / "other")[0].obs, a[0].obs)


def test_policies_respect_action_spaces():
    import gymnasium as gym

    rng = np.random.default_rng(0)
    box = gym.spaces.Box(np.array([-1, 0, 0], np.float32), np.ones(3, np.float32))
    frame = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for name in ("random", "held", "brownian", "linear"):
        policy = make_policy(name, box, rng)
        for _ in range(50):
            a = policy.act(frame)
            assert box.contains(np.asarray(a, np.float32))
    brownian = BrownianPolicy(box, rng, dt=0.02)
    steps = np.diff(np.stack([brownian.act(frame) for _ in range(200)]), axis=0)
    assert np.abs(steps).max() < 1.0  # smooth: no jump anywhere near the range
    disc = gym.spaces.Discrete(3)
    picked = {LinearPolicy(disc, np.random.default_rng(s), 1.0).act(frame) for s in range(30)}
    assert picked == {0, 1, 2}
    with pytest.raises(ConfigError, match="brownian needs a Box"):
        make_policy("brownian", disc, rng)


def test_held_policy_holds_each_random_action_for_up_to_hold_max_steps():
    import gymnasium as gym

    disc = gym.spaces.Discrete(3)
    # k ~ U{1..10}: a redraw every 5.5 steps on average, a new action at 2 of 3 redraws
    held = make_policy("held", disc, np.random.default_rng(0), hold_max=10)
    a = np.array([held.act(None) for _ in range(30_000)])
    # an action's share sums ~N / 5.5 independent holds of length L ~ U{1..10}, each the
    # action with p = 1/3: sd = sqrt(holds p (1 - p) E[L^2]) / N (E[L^2] = 38.5), 0.0072
    sd = np.sqrt(len(a) / 5.5 * (1 / 3) * (2 / 3) * 38.5) / len(a)
    assert np.bincount(a, minlength=3) / len(a) == pytest.approx([1 / 3] * 3, abs=4 * sd)
    assert np.mean(np.diff(a) != 0) == pytest.approx((2 / 3) / 5.5, abs=0.01)
    every = make_policy("held", disc, np.random.default_rng(0), hold_max=1)
    b = np.array([every.act(None) for _ in range(30_000)])
    assert np.mean(np.diff(b) != 0) == pytest.approx(2 / 3, abs=0.01)  # uniform each step
    box = gym.spaces.Box(-np.ones(2, np.float32), np.ones(2, np.float32))
    held_box = make_policy("held", box, np.random.default_rng(1), hold_max=10)
    c = np.stack([held_box.act(None) for _ in range(5_000)])
    assert np.all(np.abs(c) <= 1.0)
    redraws = np.mean(np.any(np.diff(c, axis=0) != 0, axis=1))
    assert redraws == pytest.approx(1 / 5.5, abs=0.02)
    again = make_policy("held", disc, np.random.default_rng(0), hold_max=10)
    assert [again.act(None) for _ in range(len(a))] == a.tolist()  # its generator alone
    with pytest.raises(ConfigError, match="hold_max"):
        make_policy("held", disc, np.random.default_rng(0), hold_max=0)


@pytest.mark.slow
def test_sigkill_mid_collection_leaves_no_partial_shard(tmp_path):
    """Kill the collector (and its workers) hard while shards are being written, rerun."""
    args = [sys.executable, str(ROOT / "collect.py"), "--preset", "quick", f"root={tmp_path}",
            "collect.episodes=6", "collect.workers=2", "env.max_episode_steps=150",
            "collect.compress_level=9"]
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy"}
    out = tmp_path / "CarRacing-v3" / "quick" / "rollouts"
    proc = subprocess.Popen(args, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list_shards(out)) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = list_shards(out)
    assert 2 <= len(done_before) < 6, "kill should land mid-run"
    for path in done_before:  # everything that is listed is complete
        RolloutShard.load(path)
    rerun = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(list_shards(out)) == 6
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]
    for path in list_shards(out):
        RolloutShard.load(path)


@pytest.mark.slow
def test_ray_engine_gives_the_same_shards(tiny_cfg, tmp_path, ray_cluster):
    collect(tiny_cfg, out_dir=tmp_path / "serial", progress=False)
    tiny_cfg.collect.engine = "ray"
    tiny_cfg.collect.workers = 2
    collect(tiny_cfg, out_dir=tmp_path / "ray", progress=False)
    a, b = _shards(tmp_path / "serial"), _shards(tmp_path / "ray")
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.obs, y.obs)
        np.testing.assert_array_equal(x.action, y.action)


def test_missing_ray_gives_install_hint(tiny_cfg, monkeypatch):
    import builtins

    from envs.factory import MissingPackageError

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    tiny_cfg.collect.engine = "ray"
    with pytest.raises(MissingPackageError, match=r"worldmodels\[ray\]"):
        collect(tiny_cfg, progress=False)


def test_a_policy_schedule_extends_a_collection_with_another_policy(tiny_cfg):
    from agents.collect import policy_for
    from worldmodels.config import ConfigError, load_config, policy_schedule

    assert [policy_for(policy_schedule("random:2,linear"), i) for i in range(4)] == [
        "random", "random", "linear", "linear"]
    assert policy_for(policy_schedule("random"), 99) == "random"
    out = run_of(tiny_cfg) / "rollouts"
    tiny_cfg.collect.policy = "random"
    collect(tiny_cfg, progress=False)  # episodes 0, 1
    tiny_cfg.collect.policy, tiny_cfg.collect.episodes = "random:2,linear", 3
    assert collect(tiny_cfg, progress=False).episodes_new == 1
    assert [s.meta["policy"] for s in _shards(out)] == ["random", "random", "linear"]
    tiny_cfg.collect.policy = "random:1,linear"  # episode 1 was random: refused
    with pytest.raises(ShardError, match="policy='random'.*policy='linear'"):
        collect(tiny_cfg, progress=False)
    with pytest.raises(ConfigError, match="collect.policy"):
        load_config("carracing", [], ["collect.policy=random,linear:5"])


def test_held_episodes_record_their_hold_and_refuse_another_on_resume(tiny_cfg):
    out = run_of(tiny_cfg) / "rollouts"
    tiny_cfg.collect.policy, tiny_cfg.collect.hold_max, tiny_cfg.collect.episodes = "held", 4, 1
    collect(tiny_cfg, progress=False)
    (shard,) = _shards(out)
    assert shard.meta["policy"] == "held" and shard.meta["hold_max"] == 4
    redraws = np.any(np.diff(shard.action, axis=0) != 0, axis=1)
    assert 0 < redraws.mean() < 0.5  # held: far fewer changes than one every step
    tiny_cfg.collect.hold_max, tiny_cfg.collect.episodes = 10, 2
    with pytest.raises(ShardError, match="hold_max=4.*hold_max=10"):
        collect(tiny_cfg, progress=False)


def test_brownian_and_linear_shards_record_their_setting_and_refuse_another(tiny_cfg):
    out = run_of(tiny_cfg) / "rollouts"
    c = tiny_cfg.collect
    c.policy, c.brownian_dt, c.linear_std, c.episodes = "brownian:1,linear", 0.05, 0.3, 2
    collect(tiny_cfg, progress=False)
    first, second = _shards(out)
    assert (first.meta["brownian_dt"], second.meta["linear_std"]) == (0.05, 0.3)
    assert "linear_std" not in first.meta and "brownian_dt" not in second.meta
    c.episodes = 3
    for key, value, match in (("brownian_dt", 0.02, "brownian_dt=0.05.*brownian_dt=0.02"),
                              ("linear_std", 0.5, "linear_std=0.3.*linear_std=0.5")):
        old = getattr(c, key)
        setattr(c, key, value)
        with pytest.raises(ShardError, match=match):
            collect(tiny_cfg, progress=False)
        setattr(c, key, old)
    assert len(list_shards(out)) == 2  # nothing written, nothing lost
    # a shard from before the settings were recorded resumes under any value
    second.meta.pop("linear_std")
    second.save(list_shards(out)[1])
    c.linear_std = 0.5
    assert collect(tiny_cfg, progress=False).episodes_new == 1


def test_shards_record_the_env_settings_and_refuse_others_on_resume(tiny_cfg):
    """A resume under another episode cap or crop would mix two kinds of episode."""
    out = run_of(tiny_cfg) / "rollouts"
    tiny_cfg.collect.episodes = 1
    collect(tiny_cfg, progress=False)
    (shard,) = _shards(out)
    assert shard.meta["env"]["max_episode_steps"] == tiny_cfg.env.max_episode_steps
    assert "fast_render" not in shard.meta["env"]  # its frames are Gymnasium's
    tiny_cfg.collect.episodes, cap = 2, tiny_cfg.env.max_episode_steps
    tiny_cfg.env.max_episode_steps = cap + 7
    with pytest.raises(ShardError, match=rf"env.max_episode_steps={cap}, .*={cap + 7}"):
        collect(tiny_cfg, progress=False)
    assert len(list_shards(out)) == 1  # nothing written, nothing lost
    tiny_cfg.env.fast_render = not tiny_cfg.env.fast_render  # pixel-identical: accepted
    tiny_cfg.env.max_episode_steps = cap
    assert collect(tiny_cfg, progress=False).episodes_new == 1
    # a shard from before the settings were recorded resumes under any
    shard.meta.pop("env")
    shard.save(list_shards(out)[0])
    tiny_cfg.collect.episodes, tiny_cfg.env.crop_bottom = 3, 5
    check_compatible(list_shards(out)[:1], tiny_cfg)


def test_fewer_episodes_than_on_disk_are_counted_and_said(tiny_cfg, tmp_path, capsys):
    """collect never deletes an episode: asked for fewer than the run holds, it reports
    the episodes there (what the later stages use) and says so."""
    collect(tiny_cfg, out_dir=tmp_path / "r", progress=False)  # 2 episodes
    tiny_cfg.collect.episodes = 1
    report = collect(tiny_cfg, out_dir=tmp_path / "r", progress=False)
    assert (report.episodes_total, report.episodes_new) == (2, 0)
    assert "holds 2 episodes, more than collect.episodes=1" in capsys.readouterr().err


@pytest.mark.parametrize("epsilon", [0.0, 1.0])
def test_the_controller_policy_steps_m_with_the_action_the_env_gets(tiny_run, epsilon):
    """With exploration, M's state must follow the random action played, not the one C
    chose and the env never saw; without it, C's own."""
    import gymnasium as gym
    import torch

    from agents.vmc import VMCAgent
    from worldmodels.run_dir import RunDir

    run = RunDir(run_of(tiny_run))
    space = gym.spaces.Box(np.array([-1.0, 0.0, 0.0], np.float32),
                           np.array([1.0, 1.0, 1.0], np.float32))
    agent = VMCAgent.from_run(run, tiny_run, space)
    policy = make_policy("controller", space, np.random.default_rng(0), agent=agent,
                         epsilon=epsilon)
    frames = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    chosen = agent.controller(agent.memory.features(
        agent.encode(torch.from_numpy(frames[:1])), agent.state, agent.controller.use_cell))
    played = policy.act(frames[0])
    assert np.allclose(played, chosen[0].detach().numpy()) == (epsilon == 0.0)
    with torch.no_grad():
        z = agent.encode(torch.from_numpy(frames[:1]))
        _, want = agent.memory.step(z, torch.as_tensor(np.asarray(played)[None]),
                                    agent.memory.initial_state(1, "cpu"))
    assert all(torch.allclose(a, b) for a, b in zip(agent.state, want, strict=True))
