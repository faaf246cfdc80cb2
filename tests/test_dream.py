"""Dreams: the batched dream, the Gymnasium dream env, and C trained inside a dream."""

import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.cmaes import train_cmaes
from agents.dreams import DreamEvaluator
from envs.dream_env import load_dream, make_dream_env
from tests.builders import lstm_features, make_controller, make_frmdn
from tests.conftest import run_of, write_tiny_run
from worldmodels.checkpoint import file_digest, save_model
from worldmodels.config import ConfigError
from worldmodels.controller import Controller
from worldmodels.dream import Dream, dream_returns
from worldmodels.frmdn import FRMDN
from worldmodels.frmdn_training import latent_split
from worldmodels.run_dir import RunDir
from worldmodels.shards import shard_name, write_npz_atomic

Z, H = 4, 8


def write_latents(cfg, episodes: int = 6, T: int = 12) -> None:
    """Latent shards made by the run's V (random mu), with CarRacing's action space."""
    out = run_of(cfg) / "latents"
    out.mkdir(parents=True, exist_ok=True)
    digest = file_digest(RunDir(run_of(cfg)).vae.model)
    space = {"type": "box", "shape": [3], "low": [-1.0, 0.0, 0.0], "high": [1.0, 1.0, 1.0]}
    for i in range(episodes):
        rng = np.random.default_rng(i)
        write_npz_atomic(out / shard_name(i), {
            "mu": rng.normal(size=(T + 1, Z)).astype(np.float32),
            "logvar": np.full((T + 1, Z), -4.0, np.float32),
            "action": rng.uniform(0, 1, (T, 3)).astype(np.float32),
            "reward": np.ones(T, np.float32),
            "terminated": np.eye(1, T, T - 1, dtype=bool)[0],
            "truncated": np.zeros(T, bool),
            "meta": np.array(json.dumps({"action_space": space, "vae_digest": digest})),
        })


@pytest.fixture
def dream_run(tiny_cfg):
    return write_dream_run(tiny_cfg, population=4, rollouts=2, generations=2)


def write_dream_run(cfg, population: int, rollouts: int, generations: int):
    """A run with small random V and M, latents, and C set to train in the dream
    (CarRacing's actions, episodes capped at 40 steps)."""
    cfg.vae.z_dim, cfg.memory.hidden = Z, H
    cfg.env.max_episode_steps = 40
    c = cfg.controller
    c.population, c.rollouts, c.generations = population, rollouts, generations
    c.eval_every, c.engine, c.environment = 0, "serial", "dream"
    write_tiny_run(cfg)
    write_latents(cfg)
    return cfg


def memory_with_heads(reward: float, done_logit: float, use_done: bool = True,
                      discrete: bool = False) -> FRMDN:
    """An M whose reward and done heads are constants (weights zero); 3 actions, a Box
    or (``discrete``) Discrete(3)."""
    torch.manual_seed(0)
    m = make_frmdn(z_dim=Z, action_dim=3, hidden=H, mixtures=2, done_head=use_done,
              discrete_actions=discrete)
    with torch.no_grad():
        m.reward_head.weight.zero_()
        m.reward_head.bias.fill_(reward)
        if use_done:
            m.done_head.weight.zero_()
            m.done_head.bias.fill_(done_logit)
    return m.eval()


def box_controller(hidden: int = 0, use_cell: bool = False) -> Controller:
    return make_controller(Z, H, 3, low=[-1, 0, 0], high=[1, 1, 1], hidden=hidden,
                           use_cell=use_cell)


@pytest.mark.parametrize("hidden", [0, 5])
@pytest.mark.parametrize("discrete", [False, True])
def test_batched_controller_equals_each_candidate_alone(hidden, discrete):
    torch.manual_seed(0)
    if discrete:
        ctrl = make_controller(Z, H, 3, discrete=True, hidden=hidden, use_cell=True)
    else:
        ctrl = box_controller(hidden, use_cell=True)
    params = torch.randn(5, ctrl.num_parameters())
    z, h, c = torch.randn(5, Z), torch.randn(5, H), torch.randn(5, H)
    x = lstm_features(z, h, c)
    batched = ctrl.batched(params, x)
    for i in range(5):
        ctrl.set_flat(params[i])
        with torch.no_grad():
            alone = ctrl(x[i : i + 1])[0]
        torch.testing.assert_close(batched[i], alone)


@pytest.mark.parametrize("hidden", [0, 5])
@pytest.mark.parametrize("discrete", [False, True])
def test_grouped_controller_equals_row_by_row(hidden, discrete):
    # dream_returns' grouped path: R rows per candidate read its weights once
    torch.manual_seed(0)
    if discrete:
        ctrl = make_controller(Z, H, 3, discrete=True, hidden=hidden, use_cell=True)
    else:
        ctrl = box_controller(hidden, use_cell=True)
    params = torch.randn(4, ctrl.num_parameters())
    x = lstm_features(torch.randn(12, Z), torch.randn(12, H), torch.randn(12, H))
    rows = ctrl.batched(params.repeat_interleave(3, dim=0), x)
    grouped = ctrl.batched(params, x.view(4, 3, -1))
    assert grouped.shape[:2] == (4, 3)
    torch.testing.assert_close(grouped.flatten(0, 1), rows)


def test_dreams_without_done_run_to_the_cap_and_sum_the_reward_head():
    memory = memory_with_heads(reward=0.5, done_logit=-50.0)
    dream = Dream(memory, torch.zeros(3, Z), torch.zeros(3, Z), max_steps=17)
    ctrl = box_controller()
    params = torch.randn(4, ctrl.num_parameters())
    returns, steps = dream_returns(dream, ctrl, params, torch.arange(3))
    assert returns.shape == steps.shape == (4, 3)
    assert (steps == 17).all()
    np.testing.assert_allclose(returns, 0.5 * 17, rtol=1e-6)


@pytest.mark.parametrize("pos_weight", [1.0, 10.0])
def test_sampled_done_follows_the_calibrated_probability(pos_weight):
    """P(done) = 0.1 per step after taking off log(pos_weight): mean length 1 / 0.1."""
    logit = math.log(0.1 / 0.9) + math.log(pos_weight)
    dream = Dream(memory_with_heads(1.0, logit), torch.zeros(1, Z), torch.zeros(1, Z),
                  done_pos_weight=pos_weight, max_steps=10_000,
                  generator=torch.Generator().manual_seed(1))
    ctrl = box_controller()
    _, steps = dream_returns(dream, ctrl, torch.zeros(1, ctrl.num_parameters()),
                             torch.zeros(4000, dtype=torch.long))
    # geometric with p = 0.1: mean 10, std of the mean sqrt(90 / 4000) = 0.15
    assert abs(steps.mean() - 10.0) < 0.6


@pytest.mark.parametrize(("p", "expected"), [(0.6, 1), (0.4, 25), (0.5, 25)])
def test_threshold_done_ends_exactly_when_p_crosses_it(p, expected):
    """P(done) above the threshold ends the dream; at it exactly (logit 0: 0.5, the
    default threshold) it does not, as Ha's rule is a strict inequality."""
    dream = Dream(memory_with_heads(1.0, math.log(p / (1 - p))), torch.zeros(1, Z),
                  torch.zeros(1, Z), done_mode="threshold", max_steps=25)
    ctrl = box_controller()
    _, steps = dream_returns(dream, ctrl, torch.zeros(2, ctrl.num_parameters()),
                             torch.zeros(3, dtype=torch.long))
    assert (steps == expected).all()


def test_dream_env_passes_gymnasium_and_sb3_checkers(dream_run):
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    env = make_dream_env(run_of(dream_run), render_mode="rgb_array")
    gym_check(env, skip_render_check=False)
    sb3_check(env)
    obs, _ = env.reset(seed=3)
    assert obs.shape == (Z + H,) and obs.dtype == np.float32
    assert np.all(obs[Z:] == 0)  # M starts from zeros, as in the real env
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    obs2, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert np.any(obs2[Z:] != 0) and isinstance(reward, float)
    again, _ = env.reset(seed=3)
    np.testing.assert_array_equal(obs, again)


def test_dream_env_is_registered_with_gymnasium(dream_run):
    import envs  # noqa: F401  (registers worldmodels/Dream-v0)

    env = gym.make("worldmodels/Dream-v0", run_dir=str(run_of(dream_run)))
    obs, _ = env.reset(seed=0)
    total = 0
    for _ in range(100):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        total += 1
        if terminated or truncated:
            break
    assert total <= 40  # the env's cap (env.max_episode_steps) also caps dreams
    count = len(env.unwrapped.dream.mu0)
    first, _ = env.reset(seed=0, options={"start": count - 1})  # the last start latent
    assert first.shape == obs.shape
    for start in (count, -1, 1.5):  # (was: wrapped modulo N, another start played)
        with pytest.raises(ValueError, match=rf"'start' is {start}.* 0 to {count - 1}"):
            env.reset(seed=0, options={"start": start})


def test_unseeded_dream_envs_dream_apart_and_a_seed_repeats(dream_run):
    """As Gymnasium's envs: dreams made side by side without a seed (``gym.make_vec``,
    SB3's ``make_vec_env``) draw their own noise; a seed given to the env or to
    ``reset`` repeats its dream; an action of another shape is refused by name."""
    import envs  # noqa: F401  (registers worldmodels/Dream-v0)

    run = str(run_of(dream_run))
    still = np.zeros(3, np.float32)  # CarRacing's Box(3)

    def dream(env, steps=15):
        obs = [env.reset()[0]]
        return np.stack(obs + [env.step(still)[0] for _ in range(steps)])

    apart = [dream(gym.make("worldmodels/Dream-v0", run_dir=run)) for _ in range(2)]
    assert not np.array_equal(*apart)
    read = [gym.make("worldmodels/Dream-v0", run_dir=run) for _ in range(2)]
    for env in read:  # np_random read (or set) before the first reset: apart all the same
        env.unwrapped.np_random.random()
    assert not np.array_equal(*[dream(env) for env in read])
    vec = gym.make_vec("worldmodels/Dream-v0", num_envs=2, vectorization_mode="sync",
                       run_dir=run)
    obs = [vec.reset()[0]] + [vec.step(np.stack([still, still]))[0] for _ in range(5)]
    vec.close()
    assert not np.array_equal(np.stack(obs)[:, 0], np.stack(obs)[:, 1])
    np.testing.assert_array_equal(*[dream(make_dream_env(run, seed=5)) for _ in range(2)])
    env = make_dream_env(run)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(still)
    np.testing.assert_array_equal(env.reset(seed=9)[0], env.reset(seed=9)[0])
    with pytest.raises(RuntimeError, match="render_mode='rgb_array'"):
        env.unwrapped.decode()
    with pytest.raises(RuntimeError, match=r"reset\(\) before render"):
        make_dream_env(run, render_mode="rgb_array").render()
    with pytest.raises(ValueError, match="finite and > 0"):  # (was: NaN observations)
        make_dream_env(run, temperature=float("inf"))
    with pytest.raises(ValueError, match="not in the dream's action space"):
        env.step(np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="not one string"):
        make_dream_env(run, overrides="dream.max_steps=20")


def test_dream_evaluator_is_reproducible_and_candidates_differ(dream_run):
    evaluator = DreamEvaluator(RunDir(run_of(dream_run)))
    dim = evaluator.controller.num_parameters()
    candidates = np.random.default_rng(0).normal(size=(3, dim))
    seeds = [11, 12]
    first = evaluator.returns(candidates, seeds)
    second = evaluator.returns(candidates, seeds)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[0].shape == (3, 2)
    assert (first[1] <= 40).all() and (first[1] >= 1).all()
    # each row is its own candidate's: alone it scores the same (common random numbers),
    # and the candidates' rows differ
    for i in range(3):
        alone = evaluator.returns(candidates[i:i + 1], seeds)[0][0]
        np.testing.assert_allclose(alone, first[0][i], rtol=1e-5, atol=1e-5)
    assert len({tuple(row) for row in first[0].round(4)}) == 3


def test_cmaes_in_the_dream_resumes_and_evaluates_in_the_real_env(dream_run):
    cfg = dream_run
    cfg.controller.eval_every, cfg.controller.eval_episodes = 2, 2
    report = train_cmaes(cfg, progress=False)
    files = RunDir(run_of(cfg)).controller
    log = json.loads(files.log.read_text())
    assert report.generations == 2 and files.best.exists()
    assert log[-1]["eval"]["episodes"] == 2  # real episodes
    assert files.selected.exists() and log[-1]["selected"]["selection_episodes"] == 2
    cfg.controller.generations = 3
    resumed = train_cmaes(cfg, progress=False)
    assert resumed.generations == 3
    # the history records where it was trained: a real-env run cannot replay it
    cfg.controller.environment = "real"
    with pytest.raises(ConfigError, match="environment"):
        train_cmaes(cfg, progress=False)


def test_sb3_trains_in_the_dream_and_plays_the_real_env(dream_run):
    from agents.evaluation import evaluate
    from agents.sb3 import train_sb3

    cfg, run = dream_run, RunDir(run_of(dream_run))
    cfg.controller.algo, cfg.controller.sb3_timesteps = "ppo", 64
    cfg.controller.sb3_normalize_reward = True  # VecNormalize over the dream VecEnv too
    model, info = train_sb3(run, cfg, kwargs={"n_steps": 32, "batch_size": 16})
    assert model.get_env().ret_rms.count > 1
    assert info["environment"] == "dream"
    assert info["weights"].endswith("sb3_ppo_dream.safetensors")  # beside a real-env one
    summary = evaluate(run, episodes=1, policy="ppo", progress=False, sb3_environment="dream")
    assert summary["episodes"] == 1 and summary["policy"] == "ppo_dream"
    # the dream it trained in is recorded with the policy, and a resume in another dream
    # is refused (was: none recorded, and a config changed by another command since
    # resumed the checkpoint in it without a word); its first rollouts (32 steps x 8
    # dreams) took it to 256 steps
    import copy

    from worldmodels.checkpoint import load_state, save_state

    assert info["dream"]["temperature"] == cfg.dream.temperature
    tiny = {"n_steps": 32, "batch_size": 16}
    hotter = copy.deepcopy(cfg)
    hotter.dream.temperature, hotter.controller.sb3_timesteps = 2.5, 512
    refused = rf"other settings \(dream\.temperature: {cfg.dream.temperature} -> 2\.5\)"
    with pytest.raises(ConfigError, match=refused):
        train_sb3(run, hotter, kwargs=tiny)
    # a finished training reruns as done in any dream (nothing trains), as CMA-ES's do
    hotter.controller.sb3_timesteps = 96
    assert train_sb3(run, hotter, kwargs=tiny)[1]["skipped"]
    # how many threads dream is how to run it, not the dream (was: refused, as every
    # dream.* key was, naming the run's V and M)
    cfg.dream.threads, cfg.controller.sb3_timesteps = 1, 96
    assert train_sb3(run, cfg, kwargs=tiny)[1]["skipped"]
    # a checkpoint from before the dream was recorded was made in the run's own dream:
    # it is not taken to another one
    checkpoint = run.controller.sb3_checkpoint("ppo", "dream")
    state = load_state(checkpoint)
    del state["settings"]["dream"], state["settings"]["env"]
    save_state(checkpoint, state)
    hotter.controller.sb3_timesteps = 512
    with pytest.raises(ConfigError, match=refused):
        train_sb3(run, hotter, kwargs=tiny)
    # one from 3958d76, which kept the env as play.env: read as the env, and done
    state = load_state(checkpoint)
    state["settings"]["play"] = {"env": info["env"], "agent_precision": "float32"}
    save_state(checkpoint, state)
    assert train_sb3(run, cfg, kwargs=tiny)[1]["skipped"]


def test_load_dream_refuses_a_run_without_memory(dream_run):
    from worldmodels.checkpoint import CheckpointError

    (run_of(dream_run) / "memory" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no trained M"):
        load_dream(RunDir(run_of(dream_run)))


def test_a_nan_start_latent_is_refused_naming_its_shard(dream_run):
    """Dreams start at each training shard's first latent; a NaN there made every dream
    from it NaN (evaluate.py --in-dream wrote 'mean return nan', CMA-ES blamed M or the
    env), so it is refused by the shard's name."""
    from worldmodels.shards import ShardError, read_npz

    run = RunDir(run_of(dream_run))
    train = latent_split(dream_run, run)[0]
    data = read_npz(train[1])
    data["mu"][0, 1] = np.nan
    write_npz_atomic(train[1], data)
    with pytest.raises(ShardError, match=f"{train[1]}: its first latent"):
        load_dream(run)


def test_save_model_keeps_done_pos_weight_for_dreams(dream_run):
    cfg = dream_run
    save_model(run_of(cfg) / "memory" / "model.safetensors",
               memory_with_heads(1.0, 0.0), meta={"done_pos_weight": 10.0})
    dream, _ = load_dream(RunDir(run_of(cfg)))
    assert dream.done_pos_weight == 10.0


def test_dream_entry_point_writes_a_gif_beside_the_real_env(dream_run):
    import imageio.v3 as iio

    import dream as dream_script

    result = dream_script.main(["--config", str(run_of(dream_run) / "config.yaml"),
                                "--policy", "random", "--seed", "2", "--steps", "15"])
    frames = iio.imread(result["gif"])
    assert 1 <= result["dream_steps"] <= 15 and 1 <= result["real_steps"] <= 15
    # one frame per step plus the start, dream over real, enlarged 3x
    assert len(frames) == max(result["dream_steps"], result["real_steps"]) + 1
    assert frames.shape[1] == 2 * 64 * 3 + 3 * 2
    args = ["--config", str(run_of(dream_run) / "config.yaml"), "--policy", "random",
            "--dream-only", "--steps", "31"]
    with pytest.raises(ConfigError, match=r"--steps 31 is beyond .* dream.max_steps=31"):
        dream_script.main([*args, "dream.max_steps=30"])
    assert dream_script.main([*args, "dream.max_steps=31"])["dream_steps"] <= 31
    # every seed a run may have dreams (a review's reproducer: seed=2**31 was refused as
    # a --seed that was not given); beyond them, the option given is named
    from worldmodels.config import SEED_MAX

    assert dream_script.main([*args, f"seed={SEED_MAX}"])["dream_steps"] >= 1
    with pytest.raises(ConfigError, match=f"--seed: {SEED_MAX + 1} is outside"):
        dream_script.main([*args, "--seed", str(SEED_MAX + 1)])


def test_dream_entry_point_without_a_trained_controller_says_so(dream_run):
    import dream as dream_script
    from worldmodels.checkpoint import CheckpointError

    with pytest.raises((CheckpointError, FileNotFoundError), match="best.safetensors"):
        dream_script.main(["--config", str(run_of(dream_run) / "config.yaml"), "--dream-only"])


def test_identical_candidates_share_their_luck_common_random_numbers():
    """Rollout j of every candidate has the same start and noise: identical candidates
    score identically, rollout by rollout; different rollouts differ."""
    dream = Dream(memory_with_heads(1.0, math.log(0.05 / 0.95)), torch.randn(5, Z),
                  torch.zeros(5, Z) - 2, max_steps=200, generator=torch.Generator().manual_seed(3))
    ctrl = box_controller()
    one = torch.randn(1, ctrl.num_parameters())
    returns, steps = dream_returns(dream, ctrl, one.repeat(3, 1), torch.arange(4))
    np.testing.assert_array_equal(steps[0], steps[1])
    np.testing.assert_array_equal(steps[0], steps[2])
    assert len(set(steps[0].tolist())) > 1


def test_virtual_score_is_written_and_reproducible(dream_run):
    from agents.dreams import dream_score

    report = train_cmaes(dream_run, progress=False)
    assert report.generations == 2
    run = RunDir(run_of(dream_run))
    cfg = run.load_config(("dream.temperature=1.3",))
    first = dream_score(run, cfg, episodes=5)
    again = dream_score(run, cfg, episodes=5)
    assert first == again and first["episodes"] == 5 and first["temperature"] == 1.3
    path = run_of(dream_run) / "eval" / "controller_dream_tau1.3.json"
    assert json.loads(path.read_text())["seed"] == cfg.seed == 0
    other = dream_score(run, run.load_config(("dream.temperature=1.3", "dream.max_steps=7")),
                        episodes=5, seed=1)  # its own file: the first stays
    assert other["mean_steps"] <= 7 and json.loads(path.read_text()) == first
    assert (path.parent / "controller_dream_tau1.3_max_steps-7_seed1.json").exists()
    # the env's step cap caps the dream when dream.max_steps is 0: its own file too (it
    # took the run's standard name), and the record says the cap played
    assert cfg.dream.max_steps == 0
    capped = dream_score(run, run.load_config(("dream.temperature=1.3",
                                               "env.max_episode_steps=3")), episodes=5)
    assert capped["mean_steps"] <= 3 and capped["dream"]["max_steps"] == 3
    assert (path.parent / "controller_dream_tau1.3_max_steps-3.json").exists()
    assert json.loads(path.read_text()) == first
    # fewer dreams under the same name: the earlier score is kept aside, not overwritten
    fewer = dream_score(run, cfg, episodes=3)
    assert json.loads(path.read_text()) == fewer
    assert json.loads((path.parent / "replaced" / "controller_dream_tau1.3.5ep.json")
                      .read_text()) == first


def test_a_virtual_score_with_a_non_finite_return_is_refused_and_not_written(dream_run,
                                                                            monkeypatch):
    from agents.dreams import DreamEvaluator, dream_score
    from worldmodels.errors import InputError

    run = RunDir(run_of(dream_run))
    train_cmaes(dream_run, progress=False)
    real = DreamEvaluator.returns

    def nan_returns(self, candidates, seeds):  # (as a dream at an overflowing tau gave)
        returns, steps = real(self, candidates, seeds)
        returns[0, 1] = np.nan
        return returns, steps

    monkeypatch.setattr(DreamEvaluator, "returns", nan_returns)
    before = sorted(run.eval_dir.glob("*.json")) if run.eval_dir.exists() else []
    with pytest.raises(InputError, match="a non-finite return in the dream"):
        dream_score(run, episodes=3, seed=5)
    assert (sorted(run.eval_dir.glob("*.json")) if run.eval_dir.exists() else []) == before
    with pytest.raises(ConfigError, match="dream.temperature"):
        run.load_config(("dream.temperature=1e100",))


def test_a_virtual_score_of_more_dreams_than_a_report_takes_is_refused(dream_run):
    """Every dream of a virtual score runs in one batch: more than REPORT_EPISODES_MAX
    would end in a MemoryError, so it is refused first, like a real report."""
    from agents.dreams import dream_score
    from agents.seeds import REPORT_EPISODES_MAX

    with pytest.raises(ConfigError, match=f"at most {REPORT_EPISODES_MAX}"):
        dream_score(RunDir(run_of(dream_run)), episodes=REPORT_EPISODES_MAX + 1)
