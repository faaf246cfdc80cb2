"""A pessimistic ensemble of Ms dreaming one dream (worldmodels/dream_ensemble.py)."""

import copy
import json
import math
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.dreams import DreamEvaluator
from envs.dream_env import load_dream
from tests.builders import make_controller, make_frmdn
from tests.conftest import run_of
from tests.test_dream import Z, write_dream_run
from worldmodels.checkpoint import save_model
from worldmodels.config import ConfigError
from worldmodels.dream import Dream, dream_returns
from worldmodels.dream_ensemble import MemoryEnsemble
from worldmodels.mdn_rnn import MDNRNN
from worldmodels.memory import done_probability
from worldmodels.run_dir import RunDir


def frmdn(seed: int, hidden: int = 8, done_bias: float | None = None):
    torch.manual_seed(seed)
    m = make_frmdn(z_dim=Z, action_dim=3, hidden=hidden, mixtures=2)
    if done_bias is not None:
        with torch.no_grad():
            m.done_head.bias.fill_(done_bias)
    return m.eval()


def dream_of(memory, seed: int = 5, max_steps: int = 60) -> Dream:
    return Dream(memory, torch.randn(6, Z, generator=torch.Generator().manual_seed(1)),
                 torch.full((6, Z), -2.0), max_steps=max_steps,
                 generator=torch.Generator().manual_seed(seed))


def play(dream: Dream, hidden: int = 8, candidates: int = 3, rollouts: int = 8):
    ctrl = make_controller(Z, hidden, 3, low=[-1, 0, 0], high=[1, 1, 1])
    params = torch.randn(candidates, ctrl.num_parameters(),
                         generator=torch.Generator().manual_seed(2))
    return dream_returns(dream, ctrl, params, torch.arange(rollouts))


def test_an_ensemble_of_one_m_twice_dreams_exactly_its_dream():
    """z from the first M, and its copy's P(done) equal to its own: the same returns,
    dream by dream, as the M alone (same start and noise)."""
    m = frmdn(0, done_bias=-3.0)
    alone = play(dream_of(m))
    both = play(dream_of(MemoryEnsemble([m, copy.deepcopy(m)], [1.0, 1.0], "first")))
    np.testing.assert_allclose(both[0], alone[0], rtol=1e-5)
    np.testing.assert_array_equal(both[1], alone[1])


def test_a_second_m_only_shortens_dreams_where_it_fears_death():
    """With z from the first M, each dream of the ensemble follows the first M's dream
    step by step and ends at or before it (max of P(done)); a second M that fears death
    more cuts some short."""
    first, second = frmdn(0, done_bias=-4.0), frmdn(1, hidden=12, done_bias=-2.5)
    alone = play(dream_of(first))[1]
    both = play(dream_of(MemoryEnsemble([first, second], [1.0, 1.0], "first")))[1]
    assert (both <= alone).all()
    assert (both < alone).sum() > 5


def test_done_is_the_highest_calibrated_probability_of_any_member():
    first, second = frmdn(0), frmdn(1, hidden=12)
    ens = MemoryEnsemble([first, second], [10.0, 3.0])
    z, a = torch.randn(7, Z), torch.rand(7, 3)
    h, state = ens.step(z, a, ens.initial_state(7))
    h1, _ = first.step(z, a, first.initial_state(7))
    h2, _ = second.step(z, a, second.initial_state(7))
    assert h.shape == (7, 8 + 12)
    expected = torch.maximum(done_probability(first.done_logit(h1), 10.0),
                             done_probability(second.done_logit(h2), 3.0))
    torch.testing.assert_close(done_probability(ens.done_logit(h), 10.0), expected)
    torch.testing.assert_close(ens.reward(h), first.reward(h1))
    # C reads the first member's features
    torch.testing.assert_close(ens.features(z, state), first.features(z, (h1[None], state[1])))
    assert ens.feature_size() == first.feature_size() == Z + 8


def test_random_z_takes_each_rows_sample_from_the_member_its_uniform_picks():
    """Member j's rows get member j's sample with the uniform rescaled to [0, 1); the
    members are drawn about equally often."""
    first, second = frmdn(0), frmdn(1, hidden=12)
    ens = MemoryEnsemble([first, second], [1.0, 1.0], "random")
    n = 4000
    z, a = torch.randn(n, Z), torch.rand(n, 3)
    h, _ = ens.step(z, a, ens.initial_state(n))
    h1, h2 = h.split([8, 12], dim=-1)
    u, eps = torch.rand(n), torch.randn(n, Z)
    out = ens.sample(h, 1.15, noise=(u, eps))
    take_second = u >= 0.5
    torch.testing.assert_close(
        out[~take_second], first.sample(h1[~take_second], 1.15,
                                        noise=(2 * u[~take_second], eps[~take_second])))
    torch.testing.assert_close(
        out[take_second], second.sample(h2[take_second], 1.15,
                                        noise=(2 * u[take_second] - 1, eps[take_second])))
    assert 0.45 < take_second.float().mean() < 0.55
    # without given noise: the generator's draws, reproducible
    drawn = [ens.sample(h, 1.15, torch.Generator().manual_seed(4)) for _ in range(2)]
    torch.testing.assert_close(drawn[0], drawn[1])
    assert drawn[0].shape == (n, Z) and bool(torch.isfinite(drawn[0]).all())


def test_random_z_is_reproducible_and_differs_from_the_first_ms_dream():
    first, second = frmdn(0, done_bias=-3.0), frmdn(1, hidden=12, done_bias=-3.0)
    ens = MemoryEnsemble([first, second], [1.0, 1.0], "random")
    a = play(dream_of(ens))
    b = play(dream_of(ens))
    np.testing.assert_array_equal(a[0], b[0])
    first_only = play(dream_of(MemoryEnsemble([first, second], [1.0, 1.0], "first")))
    assert not np.array_equal(a[0], first_only[0])


def test_members_must_read_the_same_latents_and_noise():
    with pytest.raises(ValueError, match="z_dim"):
        torch.manual_seed(0)
        MemoryEnsemble([frmdn(0), make_frmdn(z_dim=Z + 1, action_dim=3, hidden=8)],
                       [1.0, 1.0])
    mdn = MDNRNN(z_dim=Z, action_dim=3, discrete_actions=False, hidden=8, mixtures=2,
                 reward_head=True, done_head=True)
    with pytest.raises(ValueError, match="one kind"):
        MemoryEnsemble([frmdn(0), mdn], [1.0, 1.0])
    with pytest.raises(ValueError, match="at least 2"):
        MemoryEnsemble([frmdn(0)], [1.0])


def test_mdn_rnn_members_with_per_dimension_component_noise():
    """MDN-RNNs draw a component per dimension: the member draw reads the first
    dimension's uniform and the dream still runs reproducibly."""
    torch.manual_seed(0)
    members = [MDNRNN(z_dim=Z, action_dim=3, discrete_actions=False, hidden=8, mixtures=2,
                      reward_head=True, done_head=True).eval() for _ in range(2)]
    ens = MemoryEnsemble(members, [1.0, 1.0], "random")
    a, b = play(dream_of(ens)), play(dream_of(ens))
    np.testing.assert_array_equal(a[0], b[0])
    # the second member's rows read their first uniform rescaled, the others as given
    n = 500
    with torch.no_grad():
        h, _ = ens.step(torch.randn(n, Z), torch.rand(n, 3), ens.initial_state(n))
        u, eps = torch.rand(n, Z), torch.randn(n, Z)
        out = ens.sample(h, 1.0, noise=(u, eps))
        rows = u[:, 0] >= 0.5
        rescaled = torch.cat([2 * u[rows, :1] - 1, u[rows, 1:]], dim=1)
        torch.testing.assert_close(out[rows], members[1].sample(
            h[rows, 8:], 1.0, noise=(rescaled, eps[rows])))


@pytest.fixture
def two_runs(tiny_cfg, tmp_path):
    """Two dream runs on the same V, the second with its own M (another seed)."""
    cfg = write_dream_run(tiny_cfg, population=4, rollouts=2, generations=2)
    other = tmp_path / "other"
    shutil.copytree(run_of(cfg), other)
    torch.manual_seed(7)
    memory = RunDir(other).load_memory()
    with torch.no_grad():
        for p in memory.parameters():
            p.add_(0.3 * torch.randn_like(p))
    save_model(RunDir(other).memory.model, memory, meta=dict(RunDir(other).memory_meta()))
    return cfg, other


def test_a_run_dreams_with_another_runs_m_by_config(two_runs):
    cfg, other = two_runs
    run = RunDir(run_of(cfg))
    single = DreamEvaluator(run, run.load_config())
    both = DreamEvaluator(run, run.load_config([f"dream.ensemble={other}"]))
    assert isinstance(both.dream.memory, MemoryEnsemble)
    assert both.controller.num_parameters() == single.controller.num_parameters()
    candidates = np.random.default_rng(0).normal(size=(3, single.controller.num_parameters()))
    r1, s1 = single.returns(candidates, [11, 12])
    r2, s2 = both.returns(candidates, [11, 12])
    np.testing.assert_array_equal(both.returns(candidates, [11, 12])[0], r2)
    assert not np.array_equal(r1, r2)


def test_an_ensemble_member_on_another_v_or_without_m_is_refused(two_runs):
    cfg, other = two_runs
    run = RunDir(run_of(cfg))
    # one M twice (by any path) would dream with double weight under ensemble_z=random
    for twice in (f"{run.path}", f"{other},{other}/."):
        with pytest.raises(ConfigError, match="dream.ensemble.*names the M of .* again"):
            load_dream(run, run.load_config([f"dream.ensemble={twice}"]))
    vae = RunDir(other).load_vae()
    with torch.no_grad():
        next(vae.parameters()).add_(1.0)
    save_model(RunDir(other).vae.model, vae)
    with pytest.raises(ConfigError, match="dream.ensemble.*other V weights"):
        load_dream(run, run.load_config([f"dream.ensemble={other}"]))
    missing = other.parent / "nothing"
    missing.mkdir()
    with pytest.raises(ConfigError, match="dream.ensemble.*no trained M"):
        load_dream(run, run.load_config([f"dream.ensemble={missing}"]))


def test_pos_weight_calibration_uses_each_members_own_weight():
    """Two copies of one M, the first trained with a 10x done weight: the same logit
    means 10x less certain death for it, so the ensemble's P(done) is the second's
    (uncalibrated) one, given back in the first's calibration."""
    m = frmdn(0, done_bias=0.0)
    ens = MemoryEnsemble([m, copy.deepcopy(m)], [10.0, 1.0])
    with torch.no_grad():
        h, _ = ens.step(torch.zeros(2, Z), torch.zeros(2, 3), ens.initial_state(2))
        p = done_probability(ens.done_logit(h), 10.0)
        torch.testing.assert_close(p, torch.sigmoid(m.done_logit(h[:, :8])))
        assert bool((p > done_probability(m.done_logit(h[:, :8]), 10.0) * 2).all())


def test_cmaes_history_in_an_ensemble_dream_refuses_a_resume_without_it(two_runs):
    """The history records the other Ms' digests: resuming with M alone, or with
    another M beside it, would put the old fitness on other candidates."""
    from agents.cmaes import train_cmaes

    cfg, other = two_runs
    assert train_cmaes(cfg, progress=False).generations == 2  # M alone
    cfg.controller.generations = 3
    cfg.dream.ensemble = str(other)
    with pytest.raises(ConfigError, match="dream_ensemble"):
        train_cmaes(cfg, progress=False)
    shutil.rmtree(RunDir(run_of(cfg)).controller.dir)
    cfg.controller.generations = 2
    assert train_cmaes(cfg, progress=False).generations == 2
    cfg.controller.generations = 3
    cfg.dream.ensemble = ""
    with pytest.raises(ConfigError, match="dream_ensemble"):
        train_cmaes(cfg, progress=False)
    cfg.dream.ensemble, cfg.dream.ensemble_z = str(other), "first"
    with pytest.raises(ConfigError, match="dream_ensemble"):
        train_cmaes(cfg, progress=False)
    cfg.dream.ensemble_z = "random"
    assert train_cmaes(cfg, progress=False).generations == 3


def test_a_virtual_score_in_an_ensemble_dream_has_its_own_file(two_runs):
    from agents.cmaes import train_cmaes
    from agents.dreams import dream_score

    cfg, other = two_runs
    train_cmaes(cfg, progress=False)
    run = RunDir(run_of(cfg))
    alone = dream_score(run, episodes=4)
    both = dream_score(run, run.load_config([f"dream.ensemble={other}"]), episodes=4)
    assert both["dream"]["ensemble"]["z_from"] == "random"
    files = sorted(p.name for p in run.eval_dir.glob("controller_dream_*.json"))
    assert len(files) == 2 and any("_ensemble-" in f for f in files)
    assert json.loads((run.eval_dir / "controller_dream_tau1.15.json").read_text()) == alone


def test_identical_candidates_share_their_luck_in_an_ensemble_dream():
    """Common random numbers with z from either M: identical candidates score the same,
    rollout by rollout, so CMA-ES compares candidates on the same luck."""
    first, second = frmdn(0, done_bias=-3.0), frmdn(1, hidden=12, done_bias=-3.0)
    dream = dream_of(MemoryEnsemble([first, second], [1.0, 1.0], "random"))
    ctrl = make_controller(Z, 8, 3, low=[-1, 0, 0], high=[1, 1, 1])
    one = torch.randn(1, ctrl.num_parameters(), generator=torch.Generator().manual_seed(2))
    returns, steps = dream_returns(dream, ctrl, one.repeat(3, 1), torch.arange(6))
    np.testing.assert_array_equal(steps[0], steps[1])
    np.testing.assert_array_equal(steps[0], steps[2])
    np.testing.assert_allclose(returns[0], returns[2], rtol=1e-6)  # (float rounding by row)
    assert len(set(steps[0].tolist())) > 1


def test_threshold_done_ends_when_any_member_passes_it():
    """Ha's rule on an ensemble: P(done) of 0.05 and 0.2 against a threshold of 0.1
    ends every dream at its first step, either member alone only with the second."""
    logit = [math.log(0.05 / 0.95), math.log(0.2 / 0.8)]
    members = [frmdn(0), frmdn(1)]
    for m, b in zip(members, logit, strict=True):
        with torch.no_grad():
            m.done_head.weight.zero_()
            m.done_head.bias.fill_(b)

    def ends(memory) -> bool:
        dream = Dream(memory, torch.zeros(2, Z), torch.zeros(2, Z), done_mode="threshold",
                      done_threshold=0.1, max_steps=5)
        z = dream.reset(2)
        return bool(dream.step(z, torch.zeros(2, 3)).done.all())

    assert not ends(members[0]) and ends(members[1])
    assert ends(MemoryEnsemble(members, [1.0, 1.0], "first"))


def test_an_ensemble_dream_vec_env_restarts_every_members_state():
    """SB3's dream VecEnv on an ensemble: an ended dream starts anew with every M's
    state zeroed, the others keep theirs."""
    from envs.dream_env import DreamVecEnv

    ens = MemoryEnsemble([frmdn(0, done_bias=-1.0), frmdn(1, hidden=12, done_bias=-1.0)],
                         [1.0, 1.0])
    env = DreamVecEnv(dream_of(ens, max_steps=400), gym.spaces.Box(-1, 1, (3,)), 8)
    env.seed(0)
    env.reset()
    for _ in range(20):
        _, _, dones, _ = env.step(np.zeros((8, 3), np.float32))
        if dones.any():
            break
    assert dones.any() and not dones.all()
    state = env.dream.state
    assert len(state) == 4 and [s.shape[-1] for s in state] == [8, 8, 12, 12]
    for s in state:
        assert bool((s[:, torch.as_tensor(dones)] == 0).all())
        assert bool((s[:, ~torch.as_tensor(dones)] != 0).any())


def test_gru_members_and_branch_points_of_an_ensemble():
    """A GRU M (one state tensor) beside an LSTM M; the ensemble's branch points carry
    both Ms' states, and dreams branched from them run."""
    from worldmodels.gru_mdn import GRUMDN
    from worldmodels.teacher_forcing import branch_points

    torch.manual_seed(0)
    gru = GRUMDN(z_dim=Z, action_dim=3, discrete_actions=False, hidden=6, mixtures=2,
                 reward_head=True, done_head=True).eval()
    ens = MemoryEnsemble([frmdn(0, done_bias=-3.0), gru], [1.0, 1.0])
    rng = np.random.default_rng(0)
    episodes = [(rng.normal(size=(30, Z)).astype(np.float32),
                 rng.uniform(size=(30, 3)).astype(np.float32)) for _ in range(2)]
    with torch.no_grad():
        z0, state = branch_points(ens, episodes, every=10)
    assert z0.shape == (4, Z) and len(state) == 3 and state[2].shape[1:] == (4, 6)
    dream = dream_of(ens)
    ctrl = make_controller(Z, 8, 3, low=[-1, 0, 0], high=[1, 1, 1])
    params = torch.randn(2, ctrl.num_parameters(), generator=torch.Generator().manual_seed(2))
    returns, steps = dream_returns(dream, ctrl, params, torch.arange(4), branches=(z0, state))
    assert returns.shape == (2, 4) and (steps >= 1).all()


def test_ensemble_paths_on_the_command_line_become_absolute(tmp_path, monkeypatch):
    """A run's config keeps the Ms it dreams with wherever it is resumed from."""
    from worldmodels.config import parse_override

    monkeypatch.chdir(tmp_path)
    got = parse_override("dream.ensemble=runs/a, ~/b")["dream"]["ensemble"]
    assert got.split(",") == [str(tmp_path / "runs" / "a"), str(Path.home() / "b")]


def test_an_exported_agent_dreams_with_its_own_m_alone(two_runs, tmp_path):
    """The other Ms are not shipped: the shipped config must not name directories that a
    fresh clone lacks (shipped.json records them), and the agent still dreams."""
    from agents.cmaes import train_cmaes
    from tools.export_pretrained import export

    cfg, other = two_runs
    cfg.dream.ensemble = str(other)
    train_cmaes(cfg, progress=False)
    run = RunDir(run_of(cfg))
    assert run.load_config().dream.ensemble == str(other)
    info = export(run.path, tmp_path / "shipped", weights="best")
    shutil.rmtree(other)
    shipped = RunDir(tmp_path / "shipped")
    assert shipped.load_config().dream.ensemble == ""
    assert info["dream_ensemble"] == str(other)
    dream, _ = load_dream(shipped, shipped.load_config())
    assert not isinstance(dream.memory, MemoryEnsemble)
