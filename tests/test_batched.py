"""Batched acting: N episodes stepped together give the returns batch-1 play gives."""

import numpy as np
import pytest

from agents.batched import BatchedActor, Episode
from agents.cmaes import ProcessEvaluator
from agents.rollouts import RolloutWorker
from tests.conftest import run_of
from tests.test_cmaes import tiny_run  # noqa: F401  (fixture)
from worldmodels.run_dir import RunDir

N_PARAMS = (4 + 8) * 3 + 3


def test_batched_play_equals_batch_1_play(tiny_run):  # noqa: F811
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


def _env(cfg):
    from envs.factory import make_env_from_config

    return make_env_from_config(cfg.env)


def test_the_evaluator_gives_the_same_fitness_at_any_batch(tiny_run):  # noqa: F811
    params = np.random.default_rng(1).normal(0, 0.5, size=(3, N_PARAMS))
    run = RunDir(run_of(tiny_run))
    base, base_steps = ProcessEvaluator(run, "serial", max_steps=30).returns(list(params), [5, 6])
    got, steps = ProcessEvaluator(run, "serial", max_steps=30, batch=4).returns(
        list(params), [5, 6])
    np.testing.assert_array_equal(steps, base_steps)
    np.testing.assert_allclose(got, base, rtol=1e-4, atol=1e-3)


def test_a_batch_must_hold_an_episode(tiny_run):  # noqa: F811
    worker = RolloutWorker(RunDir(run_of(tiny_run)))
    with pytest.raises(ValueError, match="batch"):
        BatchedActor(worker.agent, lambda: worker.env, 0)
