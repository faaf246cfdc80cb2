"""controller.restarts: several CMA-ES searches, the best on the run's selection seeds."""

import json

import numpy as np
import pytest

from agents.searches import search_seed, train_searches
from tests.conftest import run_of, write_tiny_run
from tests.test_cmaes import quadratic
from worldmodels.checkpoint import file_digest, read_header
from worldmodels.config import ConfigError, validate
from worldmodels.run_dir import RunDir
from worldmodels.shards import read_npz, write_npz_atomic


def searches_run(cfg, name, restarts):
    """``restarts`` searches of 2 generations on the fake fitness, each selected once on
    2 real (tiny) episodes."""
    cfg.name = name
    if not run_of(cfg).exists():
        write_tiny_run(cfg)
    c = cfg.controller
    c.generations, c.eval_every, c.eval_episodes, c.select_episodes = 2, 2, 5, 2
    c.restarts = restarts
    return train_searches(cfg, RunDir(run_of(cfg)), progress=False, evaluator=quadratic)


def test_search_seeds_start_at_the_runs_seed_and_differ():
    assert search_seed(7, 0) == 7
    seeds = [search_seed(7, k) for k in range(20)]
    assert len(set(seeds)) == 20 and all(0 <= s < 2**31 - 1 for s in seeds)
    assert search_seed(8, 1) != search_seed(7, 1)


def test_the_winner_is_the_best_on_the_runs_selection_seeds_and_survives_a_kill(tiny_run):
    report = searches_run(tiny_run, "multi", 2)
    files = RunDir(run_of(tiny_run)).controller
    settings = [json.loads(str(read_npz(files.search(k).history)["settings"]))
                for k in range(2)]
    assert [s["seed"] for s in settings] == [tiny_run.seed, search_seed(tiny_run.seed, 1)]
    metas = [read_header(files.search(k).selected)["meta"] for k in range(2)]
    assert {m["selection_seed"] for m in metas} == {tiny_run.seed}  # the run's seeds
    summary = json.loads(files.searches.read_text())
    means = [m["selection_mean"] for m in metas]
    assert [r["selection_mean"] for r in summary["searches"]] == means
    assert summary["winner"] == report.search == int(np.argmax(means))
    digests = {name: file_digest(files.weights(name)) for name in ("selected", "best", "mean")}
    for name, digest in digests.items():
        assert digest == file_digest(files.search(report.search).weights(name))
    assert report.selected == read_header(files.selected)["meta"] == metas[report.search]
    assert [r["seed"] for r in report.searches] == [s["seed"] for s in settings]
    assert (files.dir / "searches.png").read_bytes()[:4] == b"\x89PNG"
    # killed in search 1's last generation (its history not yet written), before the
    # summary: the rerun redoes that generation and keeps the same winner
    files.searches.unlink()
    files.selected.unlink()
    history = read_npz(files.search(1).history)
    write_npz_atomic(files.search(1).history, {"fitness": history["fitness"][:1],
                                               "settings": history["settings"]},
                     compress_level=0)
    searches_run(tiny_run, "multi", 2)
    assert {name: file_digest(files.weights(name)) for name in digests} == digests
    assert json.loads(files.searches.read_text()) == summary


def test_the_number_of_searches_of_a_run_is_fixed_once_it_has_files(tiny_run):
    """Going from one search to several, or back, or to fewer, would mix two searches'
    files in controller/: refused, with nothing moved; adding a search is fine."""
    searches_run(tiny_run, "one", 1)
    files = RunDir(run_of(tiny_run)).controller
    before = {p: p.read_bytes() for p in files.dir.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="trained one CMA-ES search"):
        searches_run(tiny_run, "one", 2)
    assert {p: p.read_bytes() for p in files.dir.rglob("*") if p.is_file()} == before
    searches_run(tiny_run, "two", 2)
    files = RunDir(run_of(tiny_run)).controller
    with pytest.raises(ConfigError, match=r"controller.restarts to their number \(at least 2"):
        searches_run(tiny_run, "two", 1)
    report = searches_run(tiny_run, "two", 3)  # one more search
    assert len(report.searches) == 3 and files.search(2).selected.exists()
    with pytest.raises(ConfigError, match=r"searches/2: a search beyond"):
        searches_run(tiny_run, "two", 2)
    # a later search's corrupt history is refused before an earlier search trains on
    # (it was found only when its turn came, search 0 having trained meanwhile)
    history = files.search(2).history
    kept = history.read_bytes()
    history.write_bytes(kept[:100])
    before = {p: p.read_bytes() for p in files.dir.rglob("*") if p.is_file()}
    tiny_run.controller.generations, tiny_run.controller.restarts = 3, 3
    with pytest.raises(ConfigError, match=r"searches/2/cmaes_history.npz: unreadable"):
        train_searches(tiny_run, RunDir(run_of(tiny_run)), progress=False, evaluator=quadratic)
    assert {p: p.read_bytes() for p in files.dir.rglob("*") if p.is_file()} == before
    history.write_bytes(kept)
    # a search that lost its selection cannot be compared
    files.search(1).selected.unlink()
    with pytest.raises(ConfigError, match=r"searches/1: this search has no controller"):
        searches_run(tiny_run, "two", 3)


def test_restarts_need_cmaes_and_a_selection(tiny_run):
    c = tiny_run.controller
    c.restarts, c.eval_every = 2, 0
    with pytest.raises(ConfigError, match="controller.restarts"):
        validate(tiny_run)
    c.eval_every, c.generations = 5, 4  # no selection before the end
    with pytest.raises(ConfigError, match="controller.restarts"):
        validate(tiny_run)
    c.eval_every, c.algo = 2, "ppo"
    with pytest.raises(ConfigError, match="controller.restarts"):
        validate(tiny_run)
    c.algo = "cmaes"
    validate(tiny_run)
