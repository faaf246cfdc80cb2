"""A vote of controllers: majority, ties to the best ranked member, and the same play
through the batched actor and the process evaluator as its members'."""

import numpy as np
import pytest
import torch

from agents.cmaes import ProcessEvaluator
from agents.parallel import TaskError
from tests.conftest import run_of
from worldmodels.controller import Controller
from worldmodels.controller_vote import VoteController
from worldmodels.run_dir import RunDir


def discrete(features=5, actions=3):
    return Controller(features=features, action_dim=actions, discrete=True, hidden=0,
                      use_cell=False, order=None, clip_dims=[])


def fixed(actions: list[int], features=5, n=3) -> Controller:
    """A controller that plays ``actions[b]`` for row b of x = one_hot rows (B, features)."""
    c = discrete(features, n)
    w = torch.zeros(n, features)
    for b, a in enumerate(actions):
        w[a, b] = 1.0
    c.net.weight.data.copy_(w)
    c.net.bias.data.zero_()
    return c


def vote_of(members: list[Controller]) -> VoteController:
    v = VoteController(members[0], len(members))
    v.set_flat(torch.cat([m.get_flat() for m in members]))
    return v


X = torch.eye(5)  # row b picks column b of each member's weights


def test_the_majority_wins_and_a_tie_goes_to_the_best_ranked_member():
    a = fixed([0, 0, 1, 2, 2])
    b = fixed([1, 1, 1, 0, 2])
    c = fixed([1, 2, 0, 1, 2])
    # row 0: 0,1,1 -> 1 (majority against the first member); row 1: 0,1,2 -> 0 (three-way
    # tie: the first member); row 2: 1,1,0 -> 1; row 3: 2,0,1 -> 2; row 4: all 2
    assert vote_of([a, b, c])(X).tolist() == [1, 0, 1, 2, 2]
    # two members that disagree: the first one's action; swapped, the other's
    assert vote_of([a, b])(X).tolist() == [0, 0, 1, 2, 2]
    assert vote_of([b, a])(X).tolist() == [1, 1, 1, 0, 2]
    # four members: 2-2 ties (rows 0 and 2) go to the pair holding the best ranked
    # member; rows 1, 3 and 4 have a majority
    d = fixed([0, 2, 0, 0, 0])
    assert vote_of([b, a, c, d])(X).tolist() == [1, 2, 1, 0, 2]
    assert vote_of([a, b, c, d])(X).tolist() == [0, 2, 1, 0, 2]


def test_one_member_and_identical_members_play_as_the_member():
    torch.manual_seed(0)
    c = discrete()
    x = torch.randn(64, 5)
    assert torch.equal(vote_of([c])(x), c(x))
    assert torch.equal(vote_of([c, c, c, c])(x), c(x))


def test_batched_votes_give_what_each_vote_gives():
    torch.manual_seed(1)
    members = [[discrete() for _ in range(3)] for _ in range(4)]
    votes = [vote_of(m) for m in members]
    x = torch.randn(4, 5)
    params = torch.stack([v.get_flat() for v in votes])
    got = votes[0].batched(params, x)
    want = torch.stack([v(x[i:i + 1])[0] for i, v in enumerate(votes)])
    assert torch.equal(got, want)
    grouped = votes[0].batched(params, x.unsqueeze(1).expand(4, 2, 5))
    assert torch.equal(grouped, want.unsqueeze(1).expand(4, 2))
    with pytest.raises(ValueError, match="3 members"):
        votes[0].batched(params[:, :-1], x)


def test_box_members_vote_by_their_mean_action():
    torch.manual_seed(2)
    box = [Controller(features=5, action_dim=2, hidden=0, use_cell=False, order=None,
                      low=[-1.0, 0.0], high=[1.0, 1.0], clip_dims=[]) for _ in range(3)]
    x = torch.randn(6, 5)
    want = torch.stack([m(x) for m in box]).mean(dim=0)
    torch.testing.assert_close(vote_of(box)(x), want)


def test_a_vote_plays_as_its_members_in_the_process_evaluator(tiny_run):
    """A vote of one member returns what the member returns on the same seeds, and a
    vote of the same member twice too (batched); a vector of the wrong size is refused."""
    run = RunDir(run_of(tiny_run))
    n = (4 + 8) * 3 + 3
    params = np.random.default_rng(3).normal(0, 0.5, size=(2, n))
    alone, steps = ProcessEvaluator(run, "serial", max_steps=30).returns([params[0]], [5, 6])
    one, one_steps = ProcessEvaluator(run, "serial", max_steps=30, vote=1).returns(
        [params[0]], [5, 6])
    twice, _ = ProcessEvaluator(run, "serial", max_steps=30, vote=2, batch=2).returns(
        [np.concatenate([params[0], params[0]])], [5, 6])
    np.testing.assert_array_equal(one_steps, steps)
    np.testing.assert_allclose(one, alone, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(twice, alone, rtol=1e-4, atol=1e-3)
    wrong = r"39 parameters, but the controller \(VoteController\) takes 78"
    with pytest.raises(TaskError, match=wrong):
        ProcessEvaluator(run, "serial", max_steps=30, vote=2).returns([params[0]], [5])
