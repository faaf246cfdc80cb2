"""The population experiment (compare_controllers.py, agents/population.py): CMA-ES runs
in the dreams of two Ms at two populations on a tiny CarRacing run, resumed and cached."""

from __future__ import annotations

import fcntl
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

import agents.population as population
import compare_controllers
from agents.dreams import DreamEvaluator
from agents.population import Plan, check_open_keys, generations_for, population_experiment
from tests.conftest import run_of
from tests.test_dream import write_dream_run
from worldmodels.config import ConfigError, load_config
from worldmodels.memory_compare import compare
from worldmodels.run_dir import RunDir, RunView
from worldmodels.shards import read_npz

VARIANTS = ("rmdn_diag", "frmdn_square_conditional")
OPEN = ["controller.eval_every=2", "controller.select_episodes=1"]
#: selection every 2 generations on 1 real episode, C scored on 2 real episodes
CLI = ["--memories", ",".join(VARIANTS), "--populations", "4,8", "--seeds", "0,1",
       "--dream-episodes", "16", "--report-episodes", "2",
       *OPEN]
FIELDS = {"variant", "population", "seed", "rollouts", "generations", "dream_episodes",
          "eval_every", "select_episodes", "selections", "selection_real_episodes",
          "selected_source", "selection_mean", "report_mean", "report_std", "report_min",
          "report_max", "report_episodes", "report_seed", "cmaes_seconds",
          "report_seconds", "wall_seconds", "memory_dir", "dir"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny dream run (CarRacing's actions, 40-step episodes, 1 rollout a candidate)
    whose memory_compare holds both Ms (seed 0, one epoch); tests copy it."""
    root = tmp_path_factory.mktemp("population")
    cfg = load_config("carracing", ["quick"], [
        f"root={root / 'runs'}", "env.max_episode_steps=20", "memory.epochs=1"])
    write_dream_run(cfg, population=4, rollouts=1, generations=1)
    run = RunDir(run_of(cfg))
    compare(run.load_config(), run, list(VARIANTS), [0], progress=False)
    return run


@pytest.fixture
def run(trained, tmp_path):
    shutil.copytree(trained.path, tmp_path / "run")
    return RunDir(tmp_path / "run")


def counting_dreams(monkeypatch, fail_at: int = 0) -> list[int]:
    """Count CMA-ES generations played in a dream; the ``fail_at``-th call is killed."""
    calls: list[int] = []
    original = DreamEvaluator.__call__

    def call(self, candidates, seeds):
        calls.append(len(candidates))
        if fail_at and len(calls) == fail_at:
            raise KeyboardInterrupt
        return original(self, candidates, seeds)

    monkeypatch.setattr(DreamEvaluator, "__call__", call)
    return calls


def test_population_experiment_end_to_end_and_a_rerun_skips_everything(run, monkeypatch):
    base_config = run.config_file.read_text()
    text = compare_controllers.main(["--run", str(run.path), *CLI])
    files = run.controller_compare
    rows = json.loads(files.results.read_text())
    assert len(rows) == 2 * 2 * 2 and files.plot.stat().st_size > 0
    assert files.transfer.read_bytes()[:4] == b"\x89PNG"
    assert set(rows[0]) >= FIELDS and "| rmdn_diag | 4 | 4 | 2 |" in text
    for row in rows:  # the same budget for every run: generations = budget / (P x R)
        assert row["generations"] == 16 // (row["population"] * 1)
        assert row["dream_episodes"] == 16 and row["report_episodes"] == 2
        home = files.run_home(row["variant"], row["population"], row["seed"])
        assert row["dir"] == str(home) and (home / "controller" / "selected.safetensors").exists()
        history = read_npz(home / "controller" / "cmaes_history.npz")["fitness"]
        assert history.shape == (row["generations"], row["population"])
        assert row["memory_dir"] == str(run.memory_variant(row["variant"], 0))
    # the base run is only read: its config stays, it gets no controller
    assert run.config_file.read_text() == base_config and not run.controller.dir.exists()

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(population, "train_cmaes", refuse)
    monkeypatch.setattr(population, "evaluate", refuse)
    assert compare_controllers.main(["--run", str(run.path), *CLI]) == text
    # without the rows kept per run: the histories are complete and the report cached
    monkeypatch.undo()
    calls = counting_dreams(monkeypatch)
    monkeypatch.setattr(population, "evaluate", refuse)
    for row in rows:
        (files.run_home(row["variant"], row["population"], row["seed"])
         / "result.json").unlink()
    again = json.loads(json.dumps(population_experiment(
        run.load_config(OPEN, trained=False), run,
        Plan(VARIANTS, (4, 8), (0, 1), 16, report_episodes=2), progress=False)))
    assert calls == [] and [r["report_mean"] for r in again] == [r["report_mean"] for r in rows]


def test_a_run_killed_mid_way_resumes_where_it_stopped(run, tmp_path, monkeypatch):
    plan = Plan(("rmdn_diag",), (4,), (0,), dream_episodes=16, report_episodes=2)
    cfg = run.load_config(OPEN, trained=False)
    counting_dreams(monkeypatch, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        population_experiment(cfg, run, plan, progress=False)
    history = run.controller_compare.run_home("rmdn_diag", 4, 0) / "controller" \
        / "cmaes_history.npz"
    assert read_npz(history)["fitness"].shape == (2, 4)
    # a history is never continued under other settings (here sigma0; likewise another M)
    with pytest.raises(ConfigError, match="sigma0"):
        population_experiment(run.load_config([*OPEN, "controller.sigma0=0.3"], trained=False),
                              run, plan, progress=False)
    assert read_npz(history)["fitness"].shape == (2, 4)
    monkeypatch.undo()
    calls = counting_dreams(monkeypatch)
    [row] = population_experiment(cfg, run, plan, progress=False)
    assert len(calls) == 2 and row["generations"] == 4  # only the generations left
    # the same as a run never stopped
    shutil.copytree(run.path, tmp_path / "fresh", ignore=shutil.ignore_patterns(
        "controller_compare"))
    fresh = RunDir(tmp_path / "fresh")
    population_experiment(cfg, fresh, plan, progress=False)
    np.testing.assert_array_equal(
        read_npz(history)["fitness"],
        read_npz(fresh.controller_compare.run_home("rmdn_diag", 4, 0) / "controller"
                 / "cmaes_history.npz")["fitness"])


def test_the_budget_must_divide_and_only_controller_keys_may_change(run):
    assert generations_for(64, 4, 2) == 8
    with pytest.raises(ConfigError, match="multiple"):
        generations_for(100, 8, 4)
    with pytest.raises(ConfigError, match="memory.epochs"):
        check_open_keys(run, run.load_config(["memory.epochs=3"], trained=False))
    check_open_keys(run, run.load_config(["controller.rollouts=4", "dream.temperature=1.1"],
                                       trained=False))
    with pytest.raises(ConfigError, match="never select"):  # eval_every 25 > 4 generations
        population_experiment(run.load_config(["controller.eval_every=25"], trained=False), run,
                              Plan(VARIANTS, (4,), (0,), 16), progress=False)
    with pytest.raises(ConfigError, match="multiple"):
        compare_controllers.main(["--run", str(run.path), "--populations", "4,8",
                                  "--dream-episodes", "12"])
    with pytest.raises(ConfigError, match="one CMA-ES search per"):  # not silently ignored
        population_experiment(run.load_config([*OPEN, "controller.generations=4",
                                               "controller.restarts=2"], trained=False),
                              run, Plan(VARIANTS, (4,), (0,), 16), progress=False)


def test_a_run_view_reads_the_base_run_and_writes_in_its_home(run, tmp_path):
    view = RunView(run, tmp_path / "home", run.memory_variant("rmdn_diag", 0))
    assert view.vae == run.vae and view.latents == run.latents
    assert view.memory.dir == run.memory_variant("rmdn_diag", 0)
    assert view.config_file == tmp_path / "home" / "config.yaml"
    assert view.controller.dir == tmp_path / "home" / "controller"
    assert view.eval_dir == tmp_path / "home" / "eval"
    assert view.tensorboard("controller") == tmp_path / "home" / "tensorboard" / "controller"
    assert view != run and view == RunView(run.path, tmp_path / "home",
                                           run.memory_variant("rmdn_diag", 0))


def test_shards_share_the_plan_and_each_one_reports_every_finished_run(run, monkeypatch):
    cfg = run.load_config(OPEN, trained=False)
    plan = Plan(VARIANTS, (4,), (0, 1), dream_episodes=8, report_episodes=2)
    jobs = population.jobs_of(plan)  # seed-major, the Ms side by side at each step
    assert jobs == [("rmdn_diag", 4, 0), ("frmdn_square_conditional", 4, 0),
                    ("rmdn_diag", 4, 1), ("frmdn_square_conditional", 4, 1)]
    calls = counting_dreams(monkeypatch)
    second = population_experiment(cfg, run, replace(plan, shard=1, shards=2), progress=False)
    assert [(r["variant"], r["population"], r["seed"]) for r in second] == jobs[1::2]
    assert len(calls) == 2 * 2  # two runs of 2 generations
    first = population_experiment(cfg, run, replace(plan, shard=0, shards=2), progress=False)
    assert len(calls) == 4 * 2  # only its own runs ran
    assert [(r["variant"], r["population"], r["seed"]) for r in first] == jobs
    assert first[1::2] == second
    for bad in (replace(plan, shard=2, shards=2), replace(plan, shards=5)):
        with pytest.raises(ConfigError, match="shard"):
            population_experiment(cfg, run, bad, progress=False)
    with pytest.raises(ConfigError, match="K/N"):
        compare_controllers.main(["--run", str(run.path), *CLI, "--shard", "1"])


def test_processes_of_one_shard_share_its_runs_through_locks(run, monkeypatch):
    """A run whose lock another process holds is left to it; the others go on, and once
    the lock is free the run is taken (so N processes of one command share the plan)."""
    cfg = run.load_config(OPEN, trained=False)
    plan = Plan(VARIANTS[:1], (4,), (5, 6), dream_episodes=8, report_episodes=2)
    jobs = population.jobs_of(plan)
    calls = counting_dreams(monkeypatch)
    lock = population.job_lock(run, *jobs[0])
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as other:  # another process is running the first run
        fcntl.flock(other, fcntl.LOCK_EX)
        rows = population_experiment(cfg, run, plan, progress=False)
        fcntl.flock(other, fcntl.LOCK_UN)
    assert [(r["variant"], r["population"], r["seed"]) for r in rows] == jobs[1:]
    assert len(calls) == 2  # only the second run's 2 generations
    rows = population_experiment(cfg, run, plan, progress=False)
    assert [(r["variant"], r["population"], r["seed"]) for r in rows] == jobs
    assert len(calls) == 4


def test_an_m_killed_mid_training_is_finished_before_any_dream(run, monkeypatch):
    # the base run asks 2 epochs of M; its rmdn M stopped after 1 (as if killed)
    run.config_file.write_text(run.config_file.read_text().replace(
        "epochs: 1\n  patience", "epochs: 2\n  patience"))
    assert run.load_config().memory.epochs == 2
    metrics = run.memory_variant("rmdn_diag", 0) / "metrics.json"
    assert len(json.loads(metrics.read_text())) == 1
    plan = Plan(("rmdn_diag",), (4,), (0,), dream_episodes=8, report_episodes=1)
    [row] = population_experiment(run.load_config(OPEN, trained=False), run, plan,
                                  progress=False)
    assert [x["epoch"] for x in json.loads(metrics.read_text())] == [1, 2]
    assert row["key"]["memory_digest"] == population.file_digest(
        RunView(run, run.path, run.memory_variant("rmdn_diag", 0)).memory.weights())


def test_report_only_gathers_the_finished_runs_and_runs_nothing(run, monkeypatch):
    """--report-only while the experiment runs elsewhere: the finished runs' table and
    plot, no CMA-ES, no evaluation, no M trained."""
    cfg = run.load_config(OPEN, trained=False)
    plan = Plan(VARIANTS[:1], (4,), (0, 1), dream_episodes=8, report_episodes=2)
    [done] = population_experiment(cfg, run, replace(plan, seeds=(0,)), progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("--report-only ran something")

    for name in ("train_cmaes", "evaluate", "compare"):
        monkeypatch.setattr(population, name, refuse)
    shutil.rmtree(run.memory_variant(VARIANTS[1], 0))  # an M not trained yet
    args = ["--run", str(run.path), "--memories", ",".join(VARIANTS), "--populations", "4",
            "--seeds", "0,1", "--dream-episodes", "8", "--report-episodes", "2", *OPEN]
    text = compare_controllers.main([*args, "--report-only"])
    rows = json.loads(run.controller_compare.results.read_text())
    assert rows == [json.loads(json.dumps(done))] and "| rmdn_diag | 4 |" in text
    assert run.controller_compare.plot.stat().st_size > 0
    assert not run.controller_compare.run_home(VARIANTS[0], 4, 1).exists()
    shutil.rmtree(run.controller_compare.dir)
    with pytest.raises(ConfigError, match="no run of this plan has finished"):
        compare_controllers.main([*args, "--report-only"])


def test_another_controller_on_the_command_line_does_not_reuse_finished_rows(run):
    plan = Plan(VARIANTS, (4,), (0,), 16)

    def key(extra: list[str]) -> dict:
        cfg = run.load_config([*OPEN, *extra], trained=False)
        return population._prepare(run, cfg, plan, VARIANTS[0], 4, 0)[2]

    assert "controller" not in key([])  # the base run's C: keys written before stay valid
    assert key(["controller.hidden=4"])["controller"] == {"hidden": 4}
    assert key(["controller.clip_dims=[0]"])["controller"] == {"clip_dims": [0]}
    assert key(["controller.hidden=4"]) != key([])


def test_selections_that_do_not_divide_the_generations_are_refused(run):
    """16 dream episodes at population 4 x 1 rollout: 4 generations; 3 selections would
    select every 1st generation, 4 times."""
    cfg = run.load_config(OPEN, trained=False)
    with pytest.raises(ConfigError, match="--selections 3 does not divide a run's 4"):
        population_experiment(cfg, run, Plan(VARIANTS, (4,), (0,), 16, selections=3),
                              progress=False)


def test_a_finished_row_is_reused_only_while_its_run_trained_with_these_settings(run):
    """The key records the controller only where it differs from the base run's (which a
    later command may change) and no env.*: a run whose own config.yaml says otherwise
    is not finished for these settings."""
    plan = Plan(VARIANTS[:1], (4,), (0,), 16, report_episodes=2)
    cfg = run.load_config(OPEN, trained=False)
    population_experiment(cfg, run, plan, progress=False)
    row = population.finished_row(run, cfg, plan, VARIANTS[0], 4, 0)
    assert row is not None
    home = run.controller_compare.run_home(VARIANTS[0], 4, 0)
    config = home / "config.yaml"
    original = config.read_text()
    for old, new in (("  max_episode_steps: 40\n", "  max_episode_steps: 30\n"),  # env's
                     ("  hidden: 0\n", "  hidden: 4\n")):  # the controller's
        assert original.count(old) == 1
        config.write_text(original.replace(old, new))
        assert population.finished_row(run, cfg, plan, VARIANTS[0], 4, 0) is None
    config.write_text(original)
    assert population.finished_row(run, cfg, plan, VARIANTS[0], 4, 0) == row


def test_cmaes_seconds_count_every_session_also_one_whose_first_generation_is_long():
    """A killed session of 2 generations (10 s) and a resumed one whose first generation
    took 20 s: 30 s in all (the drop in seconds that marked a resume is not there);
    entries without a session still count by that drop."""
    from agents.population import cmaes_seconds

    log = [{"seconds": 5.0, "session": 1}, {"seconds": 10.0, "session": 1},
           {"seconds": 20.0, "session": 3}, {"seconds": 26.0, "session": 3}]
    assert cmaes_seconds(log) == 36.0
    assert cmaes_seconds([{"seconds": 5.0}, {"seconds": 10.0}, {"seconds": 4.0}]) == 14.0


def test_cmaes_logs_the_session_of_each_generation(run):
    """train_cmaes writes each generation's session (its first generation) in the log."""
    cfg = run.load_config([*OPEN, "controller.generations=1", "controller.eval_every=0"],
                          trained=False)
    cfg.controller.environment = "dream"
    from agents.cmaes import train_cmaes

    train_cmaes(cfg, run, progress=False)
    cfg.controller.generations = 2
    train_cmaes(cfg, run, progress=False)
    log = json.loads(run.controller.log.read_text())
    assert [g["session"] for g in log] == [1, 2]
