"""The second selection stage (controller.final_candidates / final_episodes): finalists
rebuilt by replaying CMA-ES, scored on more selection episodes, and the run's C the best
over all of them."""

import json

import numpy as np
import pytest
import torch

from agents.cmaes import ProcessEvaluator, replay_parameters, train_cmaes
from agents.finalists import pooled, ranked_checkpoints
from agents.searches import search_seed, train_searches
from agents.seeds import check_report_seeds, selection_of, selection_seeds
from tests.conftest import run_of, write_tiny_run
from tests.test_cmaes import quadratic
from worldmodels.checkpoint import file_digest, load_weights, read_header
from worldmodels.config import ConfigError, validate
from worldmodels.run_dir import RunDir


def flat_weights(cfg, run, path):
    controller = run.new_controller(cfg, run.action_space(), run.load_memory())
    load_weights(path, controller)
    return controller.get_flat()


def finals_run(cfg, name, restarts, candidates=0, episodes=0):
    """``restarts`` searches of 4 generations on the fake fitness, scored every 2 on 2
    real (tiny) selection episodes; a second stage of ``candidates`` x ``episodes``."""
    cfg.name = name
    if not run_of(cfg).exists():
        write_tiny_run(cfg)
    c = cfg.controller
    c.generations, c.eval_every, c.eval_episodes, c.select_episodes = 4, 2, 5, 2
    c.restarts, c.final_candidates, c.final_episodes = restarts, candidates, episodes
    validate(cfg)
    return train_searches(cfg, RunDir(run_of(cfg)), progress=False, evaluator=quadratic)


def test_replaying_a_search_rebuilds_the_controllers_it_saved(tiny_run):
    cfg = tiny_run
    cfg.controller.generations, cfg.controller.eval_every = 5, 2
    cfg.controller.select_episodes = 2
    run = RunDir(run_of(cfg))
    train_cmaes(cfg, run, quadratic, progress=False)
    files = run.controller
    best = read_header(files.best)["meta"]["generation"]
    selected = read_header(files.selected)["meta"]
    dim = flat_weights(cfg, run, files.mean).numel()
    wanted = [("mean", 5), ("best", best), (selected["source"], selected["generation"])]
    found = replay_parameters(cfg, files, dim, cfg.seed, wanted)
    for (source, generation), path in zip(wanted, (files.mean, files.best, files.selected),
                                          strict=True):
        rebuilt = torch.as_tensor(found[source, generation], dtype=torch.float32)
        assert torch.equal(rebuilt, flat_weights(cfg, run, path))
    # a mean of another generation is another controller
    other = replay_parameters(cfg, files, dim, cfg.seed, [("mean", 4)])["mean", 4]
    assert not np.allclose(other, found["mean", 5])
    with pytest.raises(ConfigError, match="has 5 generations"):
        replay_parameters(cfg, files, dim, cfg.seed, [("mean", 6)])


def test_the_finalist_with_the_best_mean_over_all_episodes_becomes_the_runs_c(
        tiny_run, monkeypatch):
    cfg = tiny_run
    report = finals_run(cfg, "final", 2, candidates=3, episodes=3)
    run = RunDir(run_of(cfg))
    files = run.controller
    meta = read_header(files.selected)["meta"]
    assert report.selected == meta
    assert meta["selection_episodes"] == 5 and meta["selection_seed"] == cfg.seed
    finalists = meta["final"]["finalists"]
    first_seeds = selection_seeds(cfg.seed, 2)
    ranked = ranked_checkpoints(run, 2, first_seeds)
    assert len(finalists) == 3
    assert [f["first_stage"]["mean"] for f in finalists] == [p.mean for p in ranked[:3]]
    # the first stage's pick is the top of the ranking: the winning search's own selected
    stage1 = meta["final"]["stage1"]
    summary = json.loads(files.searches.read_text())
    own = read_header(files.search(summary["first_stage_winner"]).selected)["meta"]
    assert stage1 == own
    winner = max(finalists, key=lambda f: f["overall"]["mean"])
    assert (meta["search"], meta["source"], meta["generation"]) == \
        (winner["search"], winner["source"], winner["generation"])
    assert summary["winner"] == meta["search"] == report.search
    assert meta["selection_mean"] == pytest.approx(winner["overall"]["mean"])
    # replayed on all 5 selection seeds (the first stage's 2, then the next 3), the saved
    # weights give the recorded mean: the stages are one seed stream
    weights = flat_weights(cfg, run, files.selected)
    evaluator = ProcessEvaluator(run, "serial")
    returns = evaluator.returns([weights.numpy()], selection_seeds(cfg.seed, 5),
                                whole_episodes=True)[0][0]
    evaluator.close()
    assert returns.mean() == pytest.approx(meta["selection_mean"], abs=1e-6)
    assert returns[:2].mean() == pytest.approx(winner["first_stage"]["mean"], abs=1e-6)
    # the winner's weights are its search's checkpoint, rebuilt
    rebuilt = replay_parameters(cfg, files.search(meta["search"]), weights.numel(),
                                search_seed(cfg.seed, meta["search"]),
                                [(meta["source"], meta["generation"])])
    assert torch.equal(torch.as_tensor(rebuilt[meta["source"], meta["generation"]],
                                       dtype=torch.float32), weights)
    # every episode that chose it is kept from a report
    with pytest.raises(ConfigError, match="among them"):
        check_report_seeds(selection_seeds(cfg.seed, 5)[4:], selection_of(meta), "C")
    # a rerun plays nothing again and writes the same files
    before = {p: file_digest(p) for p in files.dir.rglob("*") if p.is_file()
              and p.suffix in (".safetensors", ".json")}

    def refuse(*args, **kwargs):
        raise AssertionError("a finished final stage played again")

    monkeypatch.setattr(ProcessEvaluator, "returns", refuse)
    finals_run(cfg, "final", 2, candidates=3, episodes=3)
    assert {p: file_digest(p) for p in before} == before


def test_one_search_takes_the_stage_and_resumes_from_its_first_stage(tiny_run):
    cfg = tiny_run
    finals_run(cfg, "one", 1, candidates=2, episodes=2)
    files = RunDir(run_of(cfg)).controller
    meta = read_header(files.selected)["meta"]
    assert meta["selection_episodes"] == 4 and "final" in meta
    assert {f["search"] for f in meta["final"]["finalists"]} == {0}
    digest = file_digest(files.selected)
    finals_run(cfg, "one", 1, candidates=2, episodes=2)  # finished: the same winner
    assert file_digest(files.selected) == digest
    # more generations: the first stage goes on against its own pick, then a new final
    cfg.controller.generations = 6
    c = cfg.controller
    c.eval_every, c.select_episodes = 2, 2
    train_searches(cfg, RunDir(run_of(cfg)), progress=False, evaluator=quadratic)
    meta = read_header(files.selected)["meta"]
    assert meta["selection_episodes"] == 4
    log = json.loads(files.log.read_text())
    assert log[-1]["selected"]["selection_episodes"] == 2  # the first stage's figure


def test_pooled_mean_and_spread_are_those_of_all_the_episodes():
    a, b = np.array([1.0, 5.0, 9.0]), np.array([2.0, 4.0])
    got = pooled({"mean": a.mean(), "std": a.std()}, 3,
                 {"mean": b.mean(), "std": b.std(), "episodes": 2})
    both = np.concatenate([a, b])
    assert got["mean"] == pytest.approx(both.mean())
    assert got["std"] == pytest.approx(both.std())


def test_the_stage_needs_both_keys_and_a_selection(tiny_run):
    c = tiny_run.controller
    c.generations, c.eval_every = 4, 2
    c.final_candidates = 2
    with pytest.raises(ConfigError, match="controller.final_candidates' and"):
        validate(tiny_run)
    c.final_episodes = 10
    validate(tiny_run)
    c.eval_every = 0
    with pytest.raises(ConfigError, match="controller.final_candidates' above 0 needs"):
        validate(tiny_run)
