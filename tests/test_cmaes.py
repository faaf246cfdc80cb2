import re

import numpy as np
import pytest

from agents.cmaes import CMAES, ProcessEvaluator, train_cmaes
from tests.conftest import run_of, write_tiny_run
from worldmodels.checkpoint import file_digest
from worldmodels.config import ConfigError
from worldmodels.errors import InputError
from worldmodels.run_dir import RunDir
from worldmodels.shards import read_npz


def quadratic(candidates, seeds):
    """A fake evaluator: best at all-0.5 parameters."""
    return -np.square(np.asarray(candidates) - 0.5).sum(axis=1)


def test_replayed_strategy_asks_the_same_population():
    a = CMAES(np.zeros(6), 0.3, 5, seed=1)
    for _ in range(3):
        xs = a.ask()
        a.tell(xs, quadratic(xs, []))
    b = CMAES(np.zeros(6), 0.3, 5, seed=1)
    np.random.seed(99)
    np.random.rand(7)  # someone else uses the global RNG: no effect on the strategy
    b.replay(np.stack(a.history))
    np.testing.assert_array_equal(a.ask(), b.ask())


def test_resumed_run_equals_uninterrupted_run(tiny_run, tmp_path):
    full = train_cmaes(tiny_run, evaluator=quadratic, progress=False)
    history = read_npz(RunDir(run_of(tiny_run)).controller.history)["fitness"]
    assert history.shape == (4, 4) and full.generations == 4
    assert history[-1].max() > history[0].max()  # it optimises
    # again, stopped after 2 generations and rerun
    tiny_run.name = "resumed"
    write_tiny_run(tiny_run)
    tiny_run.controller.generations = 2
    train_cmaes(tiny_run, evaluator=quadratic, progress=False)
    tiny_run.controller.generations = 4
    train_cmaes(tiny_run, evaluator=quadratic, progress=False)
    resumed = read_npz(RunDir(run_of(tiny_run)).controller.history)["fitness"]
    np.testing.assert_array_equal(resumed, history)


def test_a_non_finite_fitness_is_refused_and_the_run_resumes_before_it(tiny_run):
    calls = []

    def nan_in_generation_3(candidates, seeds):
        calls.append(1)
        fitness = quadratic(candidates, seeds)
        if len(calls) == 3:
            fitness[1] = np.nan
        return fitness

    with pytest.raises(InputError, match="generation 3's fitness of candidate 2 is nan"):
        train_cmaes(tiny_run, evaluator=nan_in_generation_3, progress=False)
    files = RunDir(run_of(tiny_run)).controller
    assert read_npz(files.history)["fitness"].shape == (2, 4)  # kept up to generation 2
    train_cmaes(tiny_run, evaluator=quadratic, progress=False)  # resumes from there
    resumed = read_npz(files.history)["fitness"]
    assert resumed.shape == (4, 4) and np.isfinite(resumed).all()


def test_real_env_fitness_is_the_same_on_every_engine(tiny_run):
    rng = np.random.default_rng(0)
    worker_params = rng.normal(0, 0.5, size=(3, (4 + 8) * 3 + 3))
    seeds = [11, 12]
    run = RunDir(run_of(tiny_run))
    serial = ProcessEvaluator(run, "serial", max_steps=80)(worker_params, seeds)
    procs = ProcessEvaluator(run, "process", workers=2,
                             max_steps=80)(worker_params, seeds)
    assert np.all(np.isfinite(serial)) and len(set(serial.round(6))) > 1
    np.testing.assert_array_equal(serial, procs)


def test_the_serial_engines_kept_worker_follows_the_runs_config(tiny_run):
    """The serial engine keeps its worker between calls in this process: a config.yaml
    rewritten since (another env.* setting) makes a new one, not the old env's."""
    from worldmodels.config import save_config

    run = RunDir(run_of(tiny_run))
    params = np.random.default_rng(2).normal(0, 0.5, size=(2, (4 + 8) * 3 + 3))
    evaluator = ProcessEvaluator(run, "serial")
    _, long_steps = evaluator.returns(params, [3], whole_episodes=True)
    assert long_steps.max() > 20
    tiny_run.env.max_episode_steps = 20
    save_config(tiny_run, run.config_file)
    _, short_steps = evaluator.returns(params, [3], whole_episodes=True)
    assert short_steps.max() == 20


@pytest.mark.slow
def test_ray_back_end_returns_the_process_back_end_fitness(tiny_run, ray_cluster):
    rng = np.random.default_rng(1)
    params = rng.normal(0, 0.5, size=(4, (4 + 8) * 3 + 3))
    seeds = [5, 6]
    run = RunDir(run_of(tiny_run))
    procs = ProcessEvaluator(run, "process", workers=2, max_steps=80)(params, seeds)
    on_ray = ProcessEvaluator(run, "ray", workers=2, max_steps=80)(params, seeds)
    np.testing.assert_array_equal(procs, on_ray)


def test_result_names_are_the_settings_as_read_and_safe_in_a_file_name():
    from agents.evaluation import result_name

    assert (result_name("controller", "selected", ("env.direct_render=false",))
            == "controller_selected_direct_render-false")
    # one setting spelled otherwise, or given in another order: one name
    a = result_name("controller", overrides=("env.max_episode_steps=03",
                                             "env.direct_render=False"))
    b = result_name("controller", overrides=("env.direct_render=false",
                                             "env.max_episode_steps=3"))
    assert a == b == "controller_direct_render-false_max_episode_steps-3"
    # a whole mapping replaces the run's; one entry keeps its others: two settings
    whole = result_name("ppo", overrides=("env.kwargs={continuous: false}",))
    entry = result_name("ppo", overrides=("env.kwargs.continuous=false",))
    assert whole == "ppo_kwargs-continuous-false" and entry == "ppo_kwargs.continuous-false"
    assert result_name("ppo", overrides=("env.kwargs={continuous: false, x: 1}",)) == \
        result_name("ppo", overrides=("env.kwargs={x: 1, continuous: False}",))
    # a slash is not a directory (a review's reproducer wrote eval/controller_id-ALE/...)
    assert result_name("controller", overrides=("env.id=ALE/Pong-v5",)) == \
        "controller_id-ALE-Pong-v5"
    long = result_name("controller", overrides=("env.kwargs.x=" + "a b" * 40,))
    assert re.fullmatch(r"controller_kwargs\.x-[0-9a-f]{8}", long), long
    # how to run is not what is played: no suffix
    assert result_name("controller", overrides=("controller.engine=serial",)) == "controller"


def test_evaluate_writes_csv_summary_and_video(tiny_run):
    import csv
    import json

    from agents.evaluation import evaluate

    train_cmaes(tiny_run, evaluator=quadratic, progress=False)  # writes controller/best.safetensors
    summary = evaluate(RunDir(run_of(tiny_run)), episodes=2, video_episodes=1, engine="serial",
                       progress=False)
    out = run_of(tiny_run) / "eval"
    with open(out / "controller.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and summary["episodes"] == 2
    assert abs(np.mean([float(r["return"]) for r in rows]) - summary["mean"]) < 1e-9
    saved = json.loads((out / "controller.json").read_text())
    assert saved["mean"] == summary["mean"]
    # which weights played: tools/runs_summary.py refuses to pool different ones
    run = RunDir(run_of(tiny_run))
    assert saved["digests"] == {"weights": file_digest(run.controller.best),
                                "vae": file_digest(run.vae.model),
                                "memory": file_digest(run.memory.weights())}
    gif = (out / "controller_episode0.gif").read_bytes()
    assert len(gif) > 1000
    other = tiny_run.seed + 1  # another evaluation's GIF gets its own name
    evaluate(run, episodes=1, video_episodes=1, engine="serial", progress=False, seed=other)
    assert (out / f"controller_seed{other}_episode0.gif").stat().st_size > 1000
    assert (out / "controller_episode0.gif").read_bytes() == gif
    rand = evaluate(RunDir(run_of(tiny_run)), episodes=2, policy="random", engine="serial",
                    progress=False)
    assert rand["episodes"] == 2 and (out / "random.csv").exists()
    # the same seeds give the same returns
    again = evaluate(RunDir(run_of(tiny_run)), episodes=2, engine="process", workers=2,
                     progress=False)
    assert again["mean"] == summary["mean"]
    # a result that replaces another takes its GIFs aside with it: no GIF of the old
    # agent stays beside the new result
    evaluate(run, episodes=2, video_episodes=2, engine="serial", progress=False)
    films = [(out / f"controller_episode{i}.gif").read_bytes() for i in (0, 1)]
    evaluate(run, episodes=1, video_episodes=1, engine="serial", progress=False)
    assert (out / "replaced" / "controller.2ep_episode1.gif").read_bytes() == films[1]
    assert (out / "replaced" / "controller.2ep_episode0.gif").read_bytes() == films[0]
    assert not (out / "controller_episode1.gif").exists()
    assert (out / "controller_episode0.gif").stat().st_size > 1000


def test_evaluate_plays_env_overrides_and_keeps_the_runs_own_result(tiny_run):
    import json

    from agents.evaluation import evaluate
    from agents.rollouts import RolloutWorker
    from envs.direct_car_racing import DirectCarRacing

    train_cmaes(tiny_run, evaluator=quadratic, progress=False)
    run = RunDir(run_of(tiny_run))
    own = evaluate(run, episodes=2, engine="serial", progress=False)
    # a cap of 30 steps instead of the run's 80: the episodes really are shorter
    capped = evaluate(run, episodes=2, engine="serial", progress=False,
                      overrides=("env.max_episode_steps=30",))
    out = run_of(tiny_run) / "eval"
    assert capped["policy"] == "controller_max_episode_steps-30"
    assert capped["env_overrides"] == ["env.max_episode_steps=30"]
    steps = [int(line.split(",")[3]) for line in
             (out / "controller_max_episode_steps-30.csv").read_text().splitlines()[1:]]
    assert max(steps) <= 30
    assert json.loads((out / "controller.json").read_text())["mean"] == own["mean"]
    # run.py's cache key (what it checks to reuse an evaluation) survives evaluate.py
    # playing the same episodes again without one
    keyed = {**json.loads((out / "controller.json").read_text()), "key": {"seed": 0}}
    (out / "controller.json").write_text(json.dumps(keyed))
    evaluate(run, episodes=2, engine="serial", progress=False)
    assert json.loads((out / "controller.json").read_text())["key"] == {"seed": 0}
    # other report seeds than the run's own name their own files too
    seed = run.load_config().seed + 1
    other = evaluate(run, episodes=2, engine="serial", progress=False, seed=seed)
    assert other["policy"] == f"controller_seed{seed}"
    seeds = [(out / f"{name}.csv").read_text().splitlines()[1].split(",")[1]
             for name in ("controller", f"controller_seed{seed}")]
    assert seeds[0] != seeds[1]
    assert json.loads((out / "controller.json").read_text())["mean"] == own["mean"]
    # a shorter evaluation under the same name keeps the longer one aside, byte for byte;
    # one that only repeats it moves nothing
    report = {p: (out / f"controller.{p}").read_bytes() for p in ("json", "csv")}
    check = evaluate(run, episodes=1, engine="serial", progress=False)
    assert check["episodes"] == 1 and not (out / "replaced" / "controller.1ep.json").exists()
    assert {p: (out / "replaced" / f"controller.2ep.{p}").read_bytes()
            for p in ("json", "csv")} == report
    evaluate(run, episodes=1, engine="serial", progress=False)
    assert sorted(q.name for q in (out / "replaced").iterdir()) == [
        "controller.2ep.csv", "controller.2ep.json"]
    (out / "controller.json").write_text("{not json")  # unreadable: kept aside, not lost
    evaluate(run, episodes=1, engine="serial", progress=False)
    assert (out / "replaced" / "controller.unknownep.json").read_text() == "{not json"
    worker = RolloutWorker(run, overrides=("env.direct_render=true",))
    assert isinstance(worker.env.unwrapped, DirectCarRacing)
    with pytest.raises(ConfigError, match="'vae.z_dim' is fixed"):
        run.load_config(("vae.z_dim=8",))
    # the dream's settings may change, and an override that restates the run's value
    cfg = run.load_config(("dream.done=threshold", "vae.z_dim=4"))
    assert cfg.dream.done == "threshold"
    assert run.load_config(("vae.z_dim=8",), trained=False).vae.z_dim == 8
    # from Python without a seed: the run's own report seeds, as evaluate.py plays them
    # (was: seed 0's, whatever the run's seed)
    from agents.seeds import evaluation_seeds

    text = run.config_file.read_text()
    run.config_file.write_text(re.sub(r"(?m)^seed: \d+$", f"seed: {seed}", text))
    mine = evaluate(run, episodes=2, engine="serial", progress=False)
    played = (out / "controller.csv").read_text().splitlines()[1].split(",")[1]
    assert mine["policy"] == "controller" and int(played) == evaluation_seeds(seed, 2)[0]


def test_collect_with_the_runs_trained_controller(tiny_run):
    from agents.collect import collect, episode_seeds
    from agents.vmc import VMCAgent
    from envs.factory import make_env_from_config
    from worldmodels.config import ConfigError
    from worldmodels.shards import read_meta

    c = tiny_run.collect
    c.policy, c.episodes, c.engine, c.controller_epsilon = "random:1,controller", 3, "serial", 0
    with pytest.raises(ConfigError, match="controller/best.safetensors"):
        collect(tiny_run, progress=False)  # no controller trained yet: nothing written
    assert not list((run_of(tiny_run) / "rollouts").glob("*.npz"))
    train_cmaes(tiny_run, evaluator=quadratic, progress=False)
    collect(tiny_run, progress=False)
    shards = sorted((run_of(tiny_run) / "rollouts").glob("ep_*.npz"))
    metas = [read_meta(p) for p in shards]
    assert [m["policy"] for m in metas] == ["random", "controller", "controller"]
    assert metas[1]["controller"]["weights"] == "best" and "digest" in metas[1]["controller"]
    # with epsilon 0 the actions are the trained agent's, step for step
    env = make_env_from_config(tiny_run.env)
    agent = VMCAgent.from_run(RunDir(run_of(tiny_run)), tiny_run, env.action_space, "best")
    agent.reset(1)
    shard = read_npz(shards[1])
    obs, _ = env.reset(seed=episode_seeds(tiny_run.seed, 1)[0])
    for t in range(len(shard["action"])):
        np.testing.assert_allclose(agent.act(obs[None])[0], shard["action"][t], rtol=1e-5)
        obs = env.step(shard["action"][t])[0]
    env.close()


def test_latent_env_passes_sb3_checker_and_ppo_round_trips(tiny_run):
    from stable_baselines3.common.env_checker import check_env

    from agents.sb3 import load_sb3, make_latent_env, train_sb3

    env = make_latent_env(run_of(tiny_run))
    check_env(env)
    run = RunDir(run_of(tiny_run))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4 + 8,) and obs.dtype == np.float32
    assert np.all(obs[4:] == 0)  # h starts at zero
    obs2, *_ = env.step(env.action_space.sample())
    assert np.any(obs2[4:] != 0)
    tiny_run.controller.algo, tiny_run.controller.sb3_timesteps = "ppo", 64
    trained, info = train_sb3(run, tiny_run, kwargs={"n_steps": 32, "batch_size": 16})
    loaded, env = load_sb3(run, tiny_run, "ppo")
    assert info["timesteps"] == 64
    from agents.evaluation import evaluate

    summary = evaluate(run, episodes=2, policy="ppo", progress=False)
    assert summary["episodes"] == 2 and (run_of(tiny_run) / "eval" / "ppo.csv").exists()
    assert summary["digests"]["weights"] == file_digest(run.controller.sb3("ppo")[0])
    for seed in range(3):  # the saved weights reproduce the trained policy exactly
        obs, _ = env.reset(seed=seed)
        obs = obs + np.random.default_rng(seed).normal(size=obs.shape).astype(np.float32)
        a1, _ = trained.predict(obs, deterministic=True)
        a2, _ = loaded.predict(obs, deterministic=True)
        np.testing.assert_array_equal(a1, a2)


def test_stall_steps_end_training_episodes_early(tiny_run):
    params = np.zeros((1, (4 + 8) * 3 + 3))
    run = RunDir(run_of(tiny_run))
    full, full_steps = ProcessEvaluator(run, "serial").returns(list(params), [1])
    cut, cut_steps = ProcessEvaluator(run, "serial",
                                      stall_steps=10).returns(list(params), [1])
    assert cut_steps[0, 0] < full_steps[0, 0] == 80


@pytest.mark.parametrize("key, value, message", [
    ("population", 6, "population: 4 -> 6"),
    ("sigma0", 0.5, "sigma0: 0.1 -> 0.5"),
])
def test_history_from_other_settings_is_refused(tiny_run, key, value, message):
    train_cmaes(tiny_run, evaluator=quadratic, progress=False)
    setattr(tiny_run.controller, key, value)
    with pytest.raises(ConfigError, match=message):
        train_cmaes(tiny_run, evaluator=quadratic, progress=False)


def test_repeated_seeds_fill_every_column(tiny_run):
    params = np.random.default_rng(0).normal(0, 0.5, size=(2, (4 + 8) * 3 + 3))
    returns, steps = ProcessEvaluator(RunDir(run_of(tiny_run)), "serial").returns(
        list(params), [4, 4])
    assert (steps == 80).all() and (returns[:, 0] == returns[:, 1]).all()


def test_fitness_curve_png_is_written(tiny_run):
    train_cmaes(tiny_run, evaluator=quadratic, progress=False)
    png = RunDir(run_of(tiny_run)).controller.dir / "fitness.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_real_env_wrappers_pass_gymnasium_and_sb3_checkers(tiny_run, tmp_path, monkeypatch):
    """PixelObservation and LatentObservation record their arguments, so the checkers'
    ``env.spec.make()`` rebuilds them; the latent env's spec names its run directory."""
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    from agents.sb3 import make_latent_env
    from envs import make_env

    for env_id in ("CarRacing-v3", "CartPole-v1"):
        pixels = make_env(env_id, max_episode_steps=20)
        gym_check(pixels)  # render modes and close included: spec.make() per render mode
        sb3_check(pixels)  # the same env still works after the copies were closed
        pixels.close()
    latent = make_latent_env(run_of(tiny_run))
    gym_check(latent)
    sb3_check(latent)
    spec = latent.spec
    assert spec.additional_wrappers[-1].kwargs["run_dir"] == str(run_of(tiny_run).absolute())
    spec.to_json()  # plain data, no torch modules
    monkeypatch.chdir(tmp_path)  # made again from elsewhere: the same observations
    again = spec.make()
    obs, _ = latent.reset(seed=5)
    np.testing.assert_array_equal(again.reset(seed=5)[0], obs)
    action = latent.action_space.sample()
    np.testing.assert_array_equal(again.step(action)[0], latent.step(action)[0])
    latent.close()
    again.close()


def test_selection_and_report_seeds_never_overlap():
    from agents.evaluation import evaluation_seeds
    from agents.seeds import selection_seeds

    for seed in (0, 1, 12345):
        for size in (1, 10, 100, 1000):
            chosen = selection_seeds(seed, size)
            assert len(set(chosen)) == size
            assert not set(chosen) & set(evaluation_seeds(seed, 1000))
            # a smaller set is the start of a larger one: every evaluation is paired
            assert selection_seeds(seed, min(size, 10)) == chosen[: min(size, 10)]
    # report seeds of any size are prefixes of one stream, which selection avoids
    assert evaluation_seeds(3, 5) == evaluation_seeds(3, 50)[:5]
    # a stream that repeats a value (seed 4507 does within 1,000) still gives distinct
    # episodes, and a report too large to be kept apart is refused
    raw = np.random.default_rng([4507, 424242]).integers(0, 2**31 - 1, size=1000)
    assert len(set(raw.tolist())) < 1000  # the premise: the stream does repeat
    assert len(set(evaluation_seeds(4507, 1000))) == 1000
    assert evaluation_seeds(4507, 1000)[:900] == evaluation_seeds(4507, 900)
    with pytest.raises(ConfigError, match="at most 100000"):
        evaluation_seeds(0, 100_001)


def test_a_report_on_the_seeds_a_policy_was_selected_on_is_refused():
    from agents.seeds import check_report_seeds, evaluation_seeds, selection_of

    cmaes = {"selection_seed": 0, "selection_episodes": 1000, "generation": 3}
    sb3 = {"seed": 0, "selected": {"step": 10, "mean": 1.0, "std": 0.0, "episodes": 1000}}
    for meta in (cmaes, sb3):
        assert selection_of(meta) == (0, 1000)
        check_report_seeds(evaluation_seeds(0, 1000), selection_of(meta), "C")  # kept apart
        # another stream can meet them by chance: evaluation seed 161 of seed 8175 does
        with pytest.raises(ConfigError, match="1 of these evaluation episodes"):
            check_report_seeds(evaluation_seeds(8175, 1000), selection_of(meta), "C")
    assert selection_of({"seed": 0}) is None  # nothing selected: nothing to keep apart


def selection_run(cfg, name, generations):
    """CMA-ES on the fake fitness, its periodic evaluations in the real (tiny) env."""
    cfg.name = name
    if not run_of(cfg).exists():
        write_tiny_run(cfg)
    c = cfg.controller
    c.generations, c.eval_every, c.eval_episodes, c.select_episodes = generations, 2, 5, 2
    return train_cmaes(cfg, evaluator=quadratic, progress=False)


def test_selection_keeps_the_higher_of_best_and_mean_on_fixed_seeds(tiny_run):
    import json

    from worldmodels.checkpoint import file_digest, read_header

    report = selection_run(tiny_run, "select", 6)
    files = RunDir(run_of(tiny_run)).controller
    log = json.loads(files.log.read_text())
    evals = [g for g in log if "eval" in g]
    assert [g["generation"] for g in evals] == [2, 4, 6]
    assert len({g["eval"]["seeds"] for g in evals}) == 1  # the same seeds every time
    assert all(g["eval"]["episodes"] == 2 for g in evals)  # select_episodes, not eval_episodes
    scores = [(g["eval"][s]["mean"], s, g["eval"][s]["generation"]) for g in evals
              for s in ("best", "mean")]
    top = max(score for score, _, _ in scores)
    meta = read_header(files.selected)["meta"]
    assert meta["selection_mean"] == top == report.selected["selection_mean"]
    assert meta["selection_episodes"] == 2 and meta["source"] in ("best", "mean")
    assert (top, meta["source"], meta["generation"]) in scores
    assert log[-1]["selected"] == meta
    # the selected file holds the controller that scored it
    run = RunDir(run_of(tiny_run))
    cfg = run.load_config()
    worker_ctrl = run.load_controller(cfg, run.action_space(), run.load_memory(), "selected")
    evaluator = ProcessEvaluator(run, "serial")
    from agents.seeds import selection_seeds

    again = evaluator.returns([worker_ctrl.get_flat().numpy()],
                              selection_seeds(tiny_run.seed, 2), whole_episodes=True)[0]
    assert again.mean() == pytest.approx(top)
    assert run.controller.default_weights() == "selected"
    assert evals[-1]["eval"]["best"]["digest"] == file_digest(files.best)


def test_selection_survives_a_kill_and_a_rerun(tiny_run):
    from worldmodels.checkpoint import file_digest, read_header
    from worldmodels.shards import write_npz_atomic

    selection_run(tiny_run, "whole", 6)
    whole = RunDir(run_of(tiny_run)).controller
    # stopped after 4 generations, then killed in generation 6 after its selected file
    # was written but before its history: the rerun redoes generation 6
    selection_run(tiny_run, "killed", 4)
    tiny_run.controller.target_return = 0
    selection_run(tiny_run, "killed", 6)
    files = RunDir(run_of(tiny_run)).controller
    history = read_npz(files.history)
    write_npz_atomic(files.history, {"fitness": history["fitness"][:5],
                                     "settings": history["settings"]}, compress_level=0)
    selection_run(tiny_run, "killed", 6)
    assert file_digest(files.selected) == file_digest(whole.selected)
    assert read_header(files.selected)["meta"] == read_header(whole.selected)["meta"]
    assert read_npz(files.history)["fitness"].shape == (6, 4)


def test_target_return_stops_on_the_selection_mean(tiny_run):
    tiny_run.controller.target_return = -1e9  # any selection mean reaches it
    report = selection_run(tiny_run, "target", 6)
    assert report.generations == 2 and report.selected["evaluated_at"] == 2


def test_a_rerun_of_a_search_that_met_its_target_adds_no_generation(tiny_run):
    tiny_run.controller.target_return = -1e9
    selection_run(tiny_run, "target", 6)
    files = RunDir(run_of(tiny_run)).controller
    before = {p: file_digest(p) for p in (files.history, files.selected, files.best)}
    for _ in range(2):  # run.py reruns the controller stage every time
        report = selection_run(tiny_run, "target", 6)
        assert report.generations == 2
    assert {p: file_digest(p) for p in before} == before


def test_a_history_scored_with_another_m_is_refused(tiny_run):
    """M trained further (memory.epochs raised, run.py rerun): the recorded fitness and
    the selected C belong to the old M, so the search does not train on with the new."""
    import torch

    from worldmodels.checkpoint import load_model, read_header, save_model

    selection_run(tiny_run, "m_changed", 2)
    run = RunDir(run_of(tiny_run))
    path = run.memory.weights()
    memory = load_model(path)
    with torch.no_grad():
        next(memory.parameters()).add_(0.5)
    save_model(path, memory, meta=read_header(path)["meta"])
    history = file_digest(run.controller.history)
    with pytest.raises(ConfigError, match="scored with another V or M.*move .*controller aside"):
        selection_run(tiny_run, "m_changed", 4)
    # finished, it is kept as it is (evaluation scores it on the new M), and said
    assert selection_run(tiny_run, "m_changed", 2).generations == 2
    assert file_digest(run.controller.history) == history


def test_a_history_played_with_other_env_settings_is_refused_where_it_would_train_on(tiny_run):
    """Its periodic selection scored real episodes of 80 steps: another step cap (or V's
    precision) would mix two envs' scores, so it does not train on; finished, it is kept
    (evaluate.py may play other settings)."""
    selection_run(tiny_run, "env_changed", 2)
    history = file_digest(RunDir(run_of(tiny_run)).controller.history)
    tiny_run.env.max_episode_steps = 20
    with pytest.raises(ConfigError, match=r"other settings \(env.max_episode_steps: 80 -> "
                                          r"20\).*evaluate.py plays others"):
        selection_run(tiny_run, "env_changed", 4)
    assert selection_run(tiny_run, "env_changed", 2).generations == 2
    tiny_run.env.max_episode_steps = 80
    tiny_run.controller.agent_precision = "bfloat16"
    with pytest.raises(ConfigError, match=r"controller.agent_precision: 'float32' -> 'bfloat16'"):
        selection_run(tiny_run, "env_changed", 4)
    assert file_digest(RunDir(run_of(tiny_run)).controller.history) == history
    tiny_run.controller.agent_precision = "float32"
    assert selection_run(tiny_run, "env_changed", 4).generations == 4


def test_a_report_size_given_for_a_selection_sized_by_eval_episodes_is_refused(tiny_run):
    """select_episodes 0: the selection played controller.eval_episodes; a rerun with
    another eval_episodes (a bigger report) would drop the selection, so it is refused
    with the fix, which keeps it."""
    from worldmodels.checkpoint import read_header

    selection_run(tiny_run, "by_eval", 2)
    c = tiny_run.controller
    c.select_episodes, c.eval_episodes = 0, 2
    train_cmaes(tiny_run, evaluator=quadratic, progress=False)  # selected on 2 episodes
    files = RunDir(run_of(tiny_run)).controller
    chosen = read_header(files.selected)["meta"]
    assert chosen["selection_episodes"] == 2
    c.eval_episodes = 100
    with pytest.raises(ConfigError, match=r"selected on 2 episodes.*controller.select_episodes=2"):
        train_cmaes(tiny_run, evaluator=quadratic, progress=False)
    c.select_episodes = 2
    assert train_cmaes(tiny_run, evaluator=quadratic, progress=False).selected == chosen


def test_a_best_file_past_the_history_is_rebuilt_from_it(tiny_run):
    """Killed after best.safetensors but before the history: the file may hold a
    candidate of a generation the history lacks; the rerun rebuilds the recorded best."""
    import torch

    from worldmodels.checkpoint import load_model, read_header, save_model

    selection_run(tiny_run, "best_killed", 4)
    files = RunDir(run_of(tiny_run)).controller
    recorded = file_digest(files.best)
    meta = read_header(files.best)["meta"]
    stray = load_model(files.best)
    stray.set_flat(torch.randn(stray.num_parameters()))
    save_model(files.best, stray, meta={**meta, "generation": 5, "fitness": 1e9})
    selection_run(tiny_run, "best_killed", 4)
    assert file_digest(files.best) == recorded


def test_final_evaluation_plays_selected_in_gymnasiums_renderer(tiny_run, monkeypatch):
    import run as run_script

    tiny_run.env.direct_render = True
    run = RunDir(run_of(tiny_run))
    train_cmaes(tiny_run, evaluator=quadratic, progress=False)  # no evaluation: no selected
    calls = []
    real_evaluate = run_script.evaluate
    monkeypatch.setattr(run_script, "evaluate",
                        lambda *a, **k: calls.append(k) or real_evaluate(*a, **k))
    tiny_run.controller.eval_episodes = 1
    first = run_script.evaluate_once(tiny_run, run, "controller")
    assert calls[-1]["weights"] == "best" and calls[-1]["overrides"] == ("env.direct_render=false",)
    assert first["policy"] == "controller_direct_render-false"
    assert first["key"]["weights_file"] == "best.safetensors"
    line = run_script._score(first)
    assert "Gymnasium's renderer" in line and "controller/best" in line
    # CMA-ES selects: the final evaluation moves to the selected file, then is cached
    tiny_run.controller.generations, tiny_run.controller.eval_every = 6, 2
    tiny_run.controller.select_episodes = 1
    train_cmaes(tiny_run, evaluator=quadratic, progress=False)
    second = run_script.evaluate_once(tiny_run, run, "controller")
    assert calls[-1]["weights"] == "selected"
    assert second["policy"] == "controller_selected_direct_render-false"
    assert second["key"]["weights_file"] == "selected.safetensors" and "cached" not in second
    n = len(calls)
    assert run_script.evaluate_once(tiny_run, run, "controller")["cached"] and len(calls) == n
    rand = run_script.evaluate_once(tiny_run, run, "random")
    assert calls[-1]["overrides"] == ("env.direct_render=false",) and rand["episodes"] == 1
    # a run trained in Gymnasium's renderer is scored in it, with no override
    tiny_run.env.direct_render = False
    run_script.evaluate_once(tiny_run, run, "controller")
    assert calls[-1]["overrides"] == ()


def test_a_history_of_another_controller_architecture_is_refused(tiny_run):
    """Two controllers of one size can read a flat vector otherwise (here the discrete
    head); a history from before the architecture was recorded still resumes."""
    import json

    from worldmodels.shards import write_npz_atomic

    train_cmaes(tiny_run, evaluator=quadratic, progress=False)
    history = RunDir(run_of(tiny_run)).controller.history
    saved = read_npz(history)
    settings = json.loads(str(saved["settings"]))
    assert settings["controller"]["discrete_head"] == tiny_run.controller.discrete_head

    def rewrite(settings: dict) -> None:
        write_npz_atomic(history, {"fitness": saved["fitness"],
                                   "settings": np.array(json.dumps(settings))})

    # a history of the same size made by a controller with an ordinal head (this run's
    # Box actions take none, so the history is written as such a run would have)
    rewrite({**settings, "controller": {**settings["controller"],
                                        "discrete_head": "ordinal"}})
    tiny_run.controller.generations = 5
    with pytest.raises(ConfigError, match=r"cmaes_history.npz: made with other CMA-ES "
                                          r"settings controller: .*'ordinal'"):
        train_cmaes(tiny_run, evaluator=quadratic, progress=False)
    del settings["controller"]  # an older history: not compared
    rewrite(settings)
    assert train_cmaes(tiny_run, evaluator=quadratic, progress=False).generations == 5
