"""M on real episodes: teacher forcing matches M stepped by hand, and the dream rule's
length is what the rule does."""

import numpy as np
import pytest
import torch

from tests.builders import make_frmdn
from worldmodels.memory import done_probability
from worldmodels.teacher_forcing import (
    branch_points,
    dream_rule_early,
    dream_rule_length,
    teacher_forced,
)


@pytest.mark.parametrize("kind,discrete", [("frmdn", True), ("frmdn", False),
                                           ("mdn_rnn", True), ("gru_mdn", False)])
def test_teacher_forcing_equals_m_stepped_by_hand(kind, discrete):
    torch.manual_seed(0)
    memory = make_frmdn(z_dim=3, action_dim=2, discrete_actions=discrete, hidden=8,
                        mixtures=2, kind=kind).eval()
    rng = np.random.default_rng(0)
    z = rng.standard_normal((7, 3)).astype(np.float32)
    actions = rng.integers(0, 2, 7) if discrete else rng.uniform(-1, 1, (7, 2)).astype(
        np.float32)
    forced = teacher_forced(memory, z, actions, done_pos_weight=10.0)
    assert forced.nll.shape == (6,) and forced.p_done is not None
    assert forced.p_done.shape == (7,)
    state = memory.initial_state(1)
    with torch.no_grad():
        for t in range(7):
            a = torch.as_tensor(actions[t:t + 1])
            h, state = memory.step(torch.as_tensor(z[t:t + 1]), a, state)
            p = float(done_probability(memory.done_logit(h), 10.0)[0])
            assert forced.p_done[t] == pytest.approx(p, abs=1e-5)
            if t < 6:
                nll = -float(memory.log_prob(torch.as_tensor(z[t + 1:t + 2]), h)[0]) / 3
                assert forced.nll[t] == pytest.approx(nll, rel=1e-4, abs=1e-4)
    with pytest.raises(ValueError, match="one episode"):
        teacher_forced(memory, z, actions[:5])
    with pytest.raises(ValueError, match="eval"):
        teacher_forced(memory.train(), z, actions)


def test_dream_rule_length_is_the_rules_episode_length():
    p = np.array([0.01, 0.2, 0.01, 0.5])
    assert dream_rule_length(p, "threshold", 0.1) == 2  # up to and with the first above
    assert dream_rule_length(p, "threshold", 0.6) == 4  # never above: the real length
    assert dream_rule_length(np.zeros(5), "sample", 0.5) == 5
    assert dream_rule_length(np.ones(5), "sample", 0.5) == 1  # it always plays step 0
    assert dream_rule_length(np.array([0.5, 0.5, 0.5]), "sample", 0.5) == pytest.approx(1.75)
    # the expected length of sampled ends, checked by drawing them
    rng = np.random.default_rng(0)
    q = rng.uniform(0, 0.2, 30)
    ends = [int(np.argmax(np.append(rng.random(30) < q, True))) + 1 for _ in range(20_000)]
    assert dream_rule_length(q, "sample", 0.5) == pytest.approx(
        np.mean(np.minimum(ends, 30)), rel=0.02)
    with pytest.raises(ValueError, match="threshold or sample"):
        dream_rule_length(p, "other", 0.5)


def test_dream_rule_early_is_the_chance_of_an_end_before_the_last_step():
    p = np.array([0.01, 0.2, 0.01, 0.5])
    assert dream_rule_early(p, "threshold", 0.1) == 1.0
    assert dream_rule_early(p, "threshold", 0.3) == 0.0  # only the last step is above
    assert dream_rule_early(p, "sample", 0.5) == pytest.approx(1 - 0.99 * 0.8 * 0.99)
    # a small hazard over a long episode: likely, not certain, though the expected
    # length falls short of the real one
    q = np.full(1000, 0.001)
    assert dream_rule_early(q, "sample", 0.5) == pytest.approx(1 - 0.999 ** 999)
    assert dream_rule_length(q, "sample", 0.5) < 999
    with pytest.raises(ValueError, match="threshold or sample"):
        dream_rule_early(p, "other", 0.5)


@pytest.mark.parametrize("kind", ["frmdn", "gru_mdn"])  # an (h, c) state and an (h,) one
def test_branch_points_hold_ms_state_after_the_real_steps_before_each(kind):
    torch.manual_seed(1)
    memory = make_frmdn(z_dim=3, action_dim=2, discrete_actions=True, hidden=8,
                        mixtures=2, kind=kind).eval()
    rng = np.random.default_rng(1)
    episodes = [(rng.standard_normal((T, 3)).astype(np.float32), rng.integers(0, 2, T))
                for T in (9, 4, 12)]
    z, state = branch_points(memory, episodes, every=4)
    # steps 4 and 8 of the first, none of the second (t > 0 and t < T), 4 and 8 of the third
    where = [(0, 4), (0, 8), (2, 4), (2, 8)]
    assert z.shape == (4, 3) and len(state) == len(memory.initial_state(1))
    assert all(s.shape == (1, 4, 8) for s in state)
    for row, (e, t) in enumerate(where):
        latents, actions = episodes[e]
        np.testing.assert_array_equal(z[row].numpy(), latents[t])
        by_hand = memory.initial_state(1)
        with torch.no_grad():
            for k in range(t):
                _, by_hand = memory.step(torch.as_tensor(latents[k:k + 1]),
                                         torch.as_tensor(actions[k:k + 1]), by_hand)
        for s, h in zip(state, by_hand, strict=True):
            torch.testing.assert_close(s[:, row], h[:, 0])
    with pytest.raises(ValueError, match="longer than every"):
        branch_points(memory, episodes, every=20)


@pytest.mark.parametrize("kind", ["frmdn", "gru_mdn"])
def test_branch_points_and_the_zero_state_follow_ms_device_and_dtype(kind):
    """On M's device (the meta device stands in for a GPU) and in M's dtype: a float64 M
    steps from its zero state with autograd on."""
    memory = make_frmdn(z_dim=3, action_dim=2, discrete_actions=True, hidden=8,
                        mixtures=2, kind=kind)
    episodes = [(np.zeros((9, 3), np.float32), np.zeros(9, np.int64))]
    z, state = branch_points(memory.to("meta"), episodes, every=4)
    assert z.device.type == "meta" and all(s.device.type == "meta" for s in state)
    double = make_frmdn(z_dim=3, action_dim=2, hidden=8, mixtures=2, kind=kind).double()
    assert all(s.dtype == torch.float64 for s in double.initial_state(2))
    h, _ = double.step(torch.zeros(2, 3, dtype=torch.float64),
                       torch.zeros(2, 2, dtype=torch.float64), double.initial_state(2))
    h.sum().backward()


def test_a_dream_branches_from_the_given_state_and_refuses_one_of_another_size():
    from worldmodels.dream import Dream

    torch.manual_seed(2)
    memory = make_frmdn(z_dim=3, action_dim=2, discrete_actions=True, hidden=8,
                        mixtures=2).eval()
    dream = Dream(memory, torch.zeros(1, 3), torch.zeros(1, 3), max_steps=5)
    state = tuple(torch.randn(1, 2, 8) for _ in range(2))
    z0 = torch.randn(2, 3)
    z = dream.reset(2, z0=z0, state=state)
    assert torch.equal(z, z0) and all(torch.equal(a, b) for a, b in zip(dream.state, state,
                                                                         strict=True))
    assert dream.state[0] is not state[0]  # a copy: stepping the dream leaves it alone
    with pytest.raises(ValueError, match="start state for 3 dreams"):
        dream.reset(3, z0=torch.randn(3, 3), state=state)
