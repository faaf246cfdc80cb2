"""The second selection stage (controller.final_candidates / final_episodes): finalists
rebuilt by replaying CMA-ES, scored on more selection episodes, and the run's C the best
over all of them."""

import json
import shutil

import numpy as np
import pytest
import torch

from agents.cmaes import ProcessEvaluator, replay_parameters, train_cmaes
from agents.finalists import pooled, ranked_checkpoints
from agents.searches import train_searches
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


def fading(candidates, seeds, calls=[0]):  # noqa: B006 (a counter across calls)
    """Fake dream fitness whose best candidate stays in generation 1: the best
    candidate's checkpoints are then older than the evaluations that score them."""
    calls[0] += 1
    return quadratic(candidates, seeds) - 1000.0 * calls[0]


def scored_by_weights(cfg, monkeypatch):
    """Real selection episodes replaced by a score of the weights: their sum on the
    first stage's seeds, minus it on the others, so the second stage reverses the
    first's order."""
    first = set(selection_seeds(cfg.seed, cfg.controller.select_episodes))

    def returns(self, candidates, seeds, whole_episodes=False):
        sums = np.array([float(np.sum(c)) for c in candidates])
        signs = np.array([1.0 if s in first else -1.0 for s in seeds])
        offsets = np.array([(s % 7) * 1e-3 for s in seeds])
        out = sums[:, None] * signs[None, :] + offsets[None, :]
        return out, np.ones_like(out, dtype=int)

    monkeypatch.setattr(ProcessEvaluator, "returns", returns)
    return returns


def test_the_finalist_with_the_best_mean_over_all_episodes_becomes_the_runs_c(
        tiny_run, monkeypatch):
    cfg = tiny_run
    cfg.name = "final"
    write_tiny_run(cfg)
    c = cfg.controller
    c.generations, c.eval_every, c.eval_episodes, c.select_episodes = 4, 2, 5, 2
    c.restarts, c.final_candidates, c.final_episodes = 2, 3, 3
    fake = scored_by_weights(cfg, monkeypatch)
    run = RunDir(run_of(cfg))
    report = train_searches(cfg, run, progress=False, evaluator=fading)
    files = run.controller
    meta = read_header(files.selected)["meta"]
    assert report.selected == meta
    assert meta["selection_episodes"] == 5 and meta["selection_seed"] == cfg.seed
    finalists = meta["final"]["finalists"]
    ranked = ranked_checkpoints(run, 2, selection_seeds(cfg.seed, 2))
    assert len(ranked) > 3 and len(finalists) == 3
    assert [f["first_stage"]["mean"] for f in finalists] == [p.mean for p in ranked[:3]]
    # the best candidates' checkpoints come from generation 1, scored at 2 and 4
    assert {p.generation for p in ranked if p.source == "best"} == {1}
    # the first stage's pick is the top of the ranking: its search's own selected
    stage1 = meta["final"]["stage1"]
    summary = json.loads(files.searches.read_text())
    assert stage1 == read_header(files.search(summary["first_stage_winner"]).selected)["meta"]
    # the second stage reverses the order: the last finalist wins
    winner = finalists[-1]
    assert (meta["search"], meta["source"], meta["generation"]) == \
        (winner["search"], winner["source"], winner["generation"])
    assert (stage1["source"], stage1["generation"]) != (meta["source"], meta["generation"]) \
        or summary["first_stage_winner"] != meta["search"]
    assert summary["winner"] == meta["search"] == report.search
    # the saved weights, scored on all 5 seeds of the stream, give the recorded mean:
    # the right checkpoint was rebuilt, and the stages are one seed stream
    weights = flat_weights(cfg, run, files.selected)
    every = fake(None, [weights.numpy()], selection_seeds(cfg.seed, 5))[0][0]
    assert every.mean() == pytest.approx(meta["selection_mean"], abs=1e-6)
    assert every[:2].mean() == pytest.approx(winner["first_stage"]["mean"], abs=1e-6)
    # every episode that chose it is kept from a report
    with pytest.raises(ConfigError, match="among them"):
        check_report_seeds(selection_seeds(cfg.seed, 5)[4:], selection_of(meta), "C")
    # a rerun plays nothing again and writes the same files
    before = {p: file_digest(p) for p in files.dir.rglob("*") if p.is_file()
              and p.suffix in (".safetensors", ".json")}

    def refuse(*args, **kwargs):
        raise AssertionError("a finished final stage played again")

    monkeypatch.setattr(ProcessEvaluator, "returns", refuse)
    train_searches(cfg, run, progress=False, evaluator=fading)
    assert {p: file_digest(p) for p in before} == before
    # one more finalist: only it plays
    played = []
    monkeypatch.setattr(ProcessEvaluator, "returns",
                        lambda self, cands, seeds, whole_episodes=False:
                        played.append(len(cands)) or fake(self, cands, seeds))
    c.final_candidates = 4
    train_searches(cfg, run, progress=False, evaluator=fading)
    assert played == [1]
    assert len(read_header(files.selected)["meta"]["final"]["finalists"]) == 4


def test_a_first_stage_pick_that_its_log_does_not_rank_first_is_refused(tiny_run):
    finals_run(tiny_run, "odd", 2)
    files = RunDir(run_of(tiny_run)).controller
    log = json.loads(files.search(0).log.read_text())
    for entry in log:  # another controller than the saved one now tops search 0's log
        if "eval" in entry:
            entry["eval"]["mean"]["mean"] += 1e6
    files.search(0).log.write_text(json.dumps(log))
    with pytest.raises(ConfigError, match="the files disagree"):
        finals_run(tiny_run, "odd", 2, candidates=2, episodes=2)


def test_one_search_takes_the_stage_and_gives_it_back(tiny_run):
    cfg = tiny_run
    finals_run(cfg, "one", 1)
    run = RunDir(run_of(cfg))
    files = run.controller
    first_stage = file_digest(files.selected)
    finals_run(cfg, "one", 1, candidates=2, episodes=2)
    meta = read_header(files.selected)["meta"]
    assert meta["selection_episodes"] == 4 and "final" in meta
    assert {f["search"] for f in meta["final"]["finalists"]} == {0}
    # real episodes: the saved C on the 4 seeds of the stream gives the recorded mean
    evaluator = ProcessEvaluator(run, "serial")
    returns = evaluator.returns([flat_weights(cfg, run, files.selected).numpy()],
                                selection_seeds(cfg.seed, 4), whole_episodes=True)[0][0]
    evaluator.close()
    assert returns.mean() == pytest.approx(meta["selection_mean"], abs=1e-6)
    digest = file_digest(files.selected)
    finals_run(cfg, "one", 1, candidates=2, episodes=2)  # finished: the same winner
    assert file_digest(files.selected) == digest
    # more generations: the first stage goes on against its own pick, then the stage again
    cfg.controller.generations = 6
    train_searches(cfg, run, progress=False, evaluator=quadratic)
    assert read_header(files.selected)["meta"]["selection_episodes"] == 4
    log = json.loads(files.log.read_text())
    assert log[-1]["selected"]["selection_episodes"] == 2  # the first stage's figure
    # turned off: the first stage's pick is back
    cfg.controller.final_candidates = cfg.controller.final_episodes = 0
    report = train_searches(cfg, run, progress=False, evaluator=quadratic)
    meta = read_header(files.selected)["meta"]
    assert "final" not in meta and meta == report.selected == log[-1]["selected"]
    if log[-1]["selected"]["evaluated_at"] <= 4:  # picked before the stage first ran
        assert file_digest(files.selected) == first_stage


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


def test_score_finalists_plays_each_finalist_as_evaluate_plays_the_selected(tiny_run):
    import evaluate
    from tools.score_finalists import main

    finals_run(tiny_run, "plain", 1)
    path = str(run_of(tiny_run))
    with pytest.raises(ConfigError, match="no finalists"):
        main(["--run", path, "--episodes", "2", "seed=3"])
    finals_run(tiny_run, "plain", 1, candidates=2, episodes=2)
    rows = main(["--run", path, "--episodes", "2", "seed=3"])
    meta = read_header(RunDir(run_of(tiny_run)).controller.selected)["meta"]
    assert [r["finalist"] for r in rows] == meta["final"]["finalists"]
    picked = next(r for r in rows if (r["finalist"]["source"], r["finalist"]["generation"])
                  == (meta["source"], meta["generation"]))
    played = evaluate.main(["--run", path, "--episodes", "2", "seed=3"])
    assert picked["mean"] == pytest.approx(played["mean"]) and picked["episodes"] == 2
    name = f"finalist_0_{meta['source']}_{meta['generation']}_seed3"
    assert (RunDir(run_of(tiny_run)).eval_dir / f"{name}.csv").is_file()


def test_score_vote_of_one_member_plays_the_runs_c_and_of_all_its_own_game(tiny_run):
    import evaluate
    from tools.score_vote import main

    finals_run(tiny_run, "vote", 1, candidates=2, episodes=2)
    path = str(run_of(tiny_run))
    one = main(["--run", path, "--episodes", "2", "--members", "1", "seed=3"])
    played = evaluate.main(["--run", path, "--episodes", "2", "seed=3"])
    assert one["mean"] == pytest.approx(played["mean"]) and one["episodes"] == 2
    meta = read_header(RunDir(run_of(tiny_run)).controller.selected)["meta"]
    assert [(m["source"], m["generation"]) for m in one["members"]] == [
        (meta["source"], meta["generation"])]
    both = main(["--run", path, "--episodes", "2", "seed=3"])
    assert len(both["members"]) == 2 and both["weights"] != one["weights"]
    eval_dir = RunDir(run_of(tiny_run)).eval_dir
    assert (eval_dir / "vote_1_seed3.json").is_file() and (eval_dir / "vote_2_seed3.csv").is_file()
    capped = main(["--run", path, "--episodes", "2", "--members", "1", "seed=3",
                   "env.max_episode_steps=5"])  # an env override is played, and named
    assert capped["policy"] == "vote_1_max_episode_steps-5_seed3"
    steps = (eval_dir / "vote_1_max_episode_steps-5_seed3.csv").read_text().splitlines()[1:]
    assert max(int(line.split(",")[3]) for line in steps) <= 5
    with pytest.raises(ConfigError, match="--members 3"):
        main(["--run", path, "--episodes", "2", "--members", "3", "seed=3"])


def test_m_on_real_plays_each_finalist_and_feeds_its_episodes_to_m(tiny_run, tmp_path):
    import evaluate
    from tools.m_on_real import main

    finals_run(tiny_run, "forced", 2, candidates=2, episodes=2)
    path = str(run_of(tiny_run))
    out = tmp_path / "rows.json"
    rows = main(["--runs", path, "--episodes", "2", "seed=3", "--out", str(out)])
    assert len(rows) == 2 and json.loads(out.read_text())["rows"] == rows
    meta = read_header(RunDir(run_of(tiny_run)).controller.selected)["meta"]
    winner = [r for r in rows if r["controller"] == "finalist_{}_{}_{}".format(
        meta["search"], meta["source"], meta["generation"])]
    played = evaluate.main(["--run", path, "--episodes", "2", "seed=3"])
    assert winner and winner[0]["real"] == pytest.approx(played["mean"], abs=1e-3)
    for r in rows:
        assert 1 <= r["rule"] <= r["steps"] and 0 <= r["early"] <= 1
        assert np.isfinite(r["nll"]) and 0 <= r["p_done"] <= 1
    for other in ("env.max_episode_steps=5", "dream.temperature=2"):  # not what it plays
        with pytest.raises(ConfigError, match="only seed=, dream.done= and"):
            main(["--runs", path, "--episodes", "2", other])
    never = main(["--runs", path, "--episodes", "2", "seed=3", "dream.done=threshold",
                  "dream.done_threshold=0.999"])
    assert [r["rule"] for r in never] == [r["steps"] for r in rows]  # no end: the real length
    assert all(r["early"] == 0 for r in never)
    with pytest.raises(ConfigError, match="--episodes"):
        main(["--runs", path, "--episodes", "0"])
    from worldmodels.atomic import WriteError

    with pytest.raises(WriteError, match="a directory; give the path of a file"):
        main(["--runs", path, "--episodes", "2", "--out", str(tmp_path)])  # before play
    with pytest.raises(ConfigError, match="given twice in --runs"):
        main(["--runs", f"{path},{path}", "--episodes", "2"])


def test_branched_dreams_score_every_finalist_from_the_same_branch_points(tiny_run, tmp_path,
                                                                        monkeypatch):
    from tools.branched_dreams import main
    from tools.score_finalists import main as score

    paths = []
    for name, restarts in (("b1", 1), ("b2", 2)):  # two runs on the same V and M
        finals_run(tiny_run, name, restarts, candidates=2, episodes=2)
        paths.append(str(run_of(tiny_run)))
        score(["--run", paths[-1], "--episodes", "2", "seed=3"])
    common = ["--source", paths[0], "--source-episodes", "2", "--random-episodes", "2",
              "--every", "10", "--real-seeds", "3", "dream.max_steps=15"]
    rows = main(["--runs", ",".join(paths), *common])
    assert len(rows) == 4
    for r in rows:
        assert 0 <= r["survived"] <= 1 and 1 <= r["length"] <= 15
    # a controller scored twice (a copy of its run) scores the same: the same branch
    # points and noise; one run given twice is refused
    copy = tmp_path / "copy"
    shutil.copytree(paths[0], copy)
    twice = main(["--runs", f"{paths[0]},{copy}", *common])
    scores = [{k: v for k, v in r.items() if k != "run"} for r in twice]
    assert scores[:2] == scores[2:] == [{k: v for k, v in r.items() if k != "run"}
                                        for r in rows[:2]]
    with pytest.raises(ConfigError, match="given twice in --runs"):
        main(["--runs", f"{paths[0]},{paths[0]}", *common])
    # a missing report file or a bad seed list is refused before any episode is played
    import tools.branched_dreams as branched

    monkeypatch.setattr(branched, "RolloutWorker", None)  # (playing would fail on it)
    with pytest.raises(ConfigError, match=r"no real score of .*seed=4"):
        main(["--runs", ",".join(paths), *common, "--real-seeds", "4"])
    with pytest.raises(ConfigError, match="--real-seeds"):
        main(["--runs", ",".join(paths), *common, "--real-seeds", "x"])
    with pytest.raises(ConfigError, match="only seed= and dream"):
        main(["--runs", ",".join(paths), *common, "env.max_episode_steps=5"])
    with pytest.raises(ConfigError, match="--every"):
        main(["--runs", ",".join(paths), *common, "--every", "0"])


def test_a_replay_that_misses_the_saved_pick_is_refused_and_an_ulp_is_not(tiny_run):
    """Another BLAS thread count moves a replayed weight by a float32 ulp or so: accepted.
    A replay that lands on other weights (another cma, another history) is refused."""
    finals_run(tiny_run, "ulp", 2)
    run = RunDir(run_of(tiny_run))
    summary = json.loads(run.controller.searches.read_text())
    saved = run.controller.search(summary["winner"]).selected
    header = read_header(saved)
    controller = run.new_controller(tiny_run, run.action_space(), run.load_memory())
    load_weights(saved, controller)
    exact = controller.get_flat()
    from worldmodels.checkpoint import save_model

    controller.set_flat(torch.nextafter(exact, exact + 1))  # one ulp up, every weight
    save_model(saved, controller, meta=header["meta"])
    finals_run(tiny_run, "ulp", 2, candidates=2, episodes=1)
    controller.set_flat(exact + 1e-3)
    save_model(saved, controller, meta=header["meta"])
    with pytest.raises(ConfigError, match="does not give these weights"):
        finals_run(tiny_run, "ulp", 2, candidates=2, episodes=2)


def test_the_stage_saves_its_finalists_and_collect_plays_them_in_turn(tiny_run, monkeypatch):
    """``controller/finalists/`` holds the ranking's K controllers, the weights replay
    gives; ``collect.controller_weights=finalists`` plays finalist i mod K in episode i
    (the rollouts a finalist plays are its own: the same actions replayed by hand)."""
    import copy

    from agents.collect import collect, episode_seeds
    from agents.finalists import run_controllers
    from agents.vmc import VMCAgent
    from envs.factory import make_env_from_config
    from worldmodels.shards import read_meta, read_npz

    cfg = tiny_run
    scored_by_weights(cfg, monkeypatch)
    finals_run(cfg, "played", 2, candidates=3, episodes=2)
    run = RunDir(run_of(cfg))
    paths = run.controller.finalist_weights()
    meta = read_header(run.controller.selected)["meta"]
    stems = [f"finalist_{f['search']}_{f['source']}_{f['generation']}"
             for f in meta["final"]["finalists"]]
    assert [p.name.removesuffix(".safetensors") for p in paths] == stems
    template = run.new_controller(cfg, run.action_space(), run.load_memory())
    for (stem, params), path in zip(run_controllers(run, template), paths, strict=True):
        assert stem == path.name.removesuffix(".safetensors")
        assert torch.equal(flat_weights(cfg, run, path),
                           torch.as_tensor(params, dtype=torch.float32))
    # collect: episodes 1-4 by finalists 1, 2, 0, 1
    data = copy.deepcopy(cfg)
    c = data.collect
    c.policy, c.episodes, c.engine, c.controller_epsilon = "random:1,controller", 5, "serial", 0
    c.controller_weights = "finalists"
    validate(data)
    collect(data, progress=False)
    shards = sorted((run.home / "rollouts").glob("ep_*.npz"))
    played = [read_meta(s)["controller"] for s in shards[1:]]
    assert [m["weights"] for m in played] == [stems[i % 3] for i in range(1, 5)]
    assert [m["digest"] for m in played] == [file_digest(paths[i % 3]) for i in range(1, 5)]
    env = make_env_from_config(cfg.env)
    controller = run.new_controller(cfg, env.action_space, run.load_memory())
    load_weights(paths[2], controller)
    agent = VMCAgent.from_run(run, cfg, env.action_space, controller=controller.eval())
    agent.reset(1)
    shard = read_npz(shards[2])
    obs, _ = env.reset(seed=episode_seeds(cfg.seed, 2)[0])
    for t in range(len(shard["action"])):
        np.testing.assert_allclose(agent.act(obs[None])[0], shard["action"][t], rtol=1e-5)
        obs = env.step(shard["action"][t])[0]
    env.close()
    # the serial engine's cache holds one agent per finalist, for the current weights
    from agents import collect as collecting

    mine = [k for k in collecting._WORKER_AGENTS if k[0] == str(run.path)]
    assert sorted(k[3] for k in mine) == sorted(p.name for p in paths)
    # fewer finalists: the folder holds only the new ranking's, rewritten
    finals_run(cfg, "played", 2, candidates=2, episodes=2)
    assert [p.name for p in run.controller.finalist_weights()] == [p.name for p in paths[:2]]
    assert len(list(run.controller.finalists.iterdir())) == 4  # weights and sidecars
    data.collect.episodes = 6  # episode 5: finalist 1 of 2, its new file: old entry gone
    collect(data, progress=False)
    mine = [k for k in collecting._WORKER_AGENTS if k[0] == str(run.path)]
    assert sorted(k[3] for k in mine) == sorted(p.name for p in paths)
    assert len({k[4] for k in mine if k[3] == paths[1].name}) == 1
    # a folder that is not the selected C's finalists is refused, naming both
    stale = run.controller.finalists / "finalist_9_best_9.safetensors"
    stale.write_bytes(paths[0].read_bytes())
    with pytest.raises(ConfigError, match="finalist_9_best_9.*chosen among"):
        run.controller.finalist_weights()
    stale.unlink()
    # the stage turned off: no finalists, and the data policy says what to do
    finals_run(cfg, "played", 2)
    with pytest.raises(ConfigError, match="finalists.*controller.final_candidates"):
        run.controller.finalist_weights()
    data.collect.episodes = 7
    with pytest.raises(ConfigError, match="finalists.*controller.final_candidates"):
        collect(data, progress=False)
    assert len(list((run.home / "rollouts").glob("ep_*.npz"))) == 6  # nothing lost


def test_the_finalists_data_policy_needs_the_second_stage(tiny_run):
    tiny_run.collect.controller_weights = "finalists"
    validate(tiny_run)  # no episode of the controller policy: nothing to play
    tiny_run.run.iterations = 2  # later rounds play the controller policy
    with pytest.raises(ConfigError, match="collect.controller_weights.*final_candidates"):
        validate(tiny_run)
    validate(tiny_run, rounds=False)  # a config that never plays a round
    tiny_run.run.iterations = 1
    tiny_run.collect.policy = "random:1,controller"
    with pytest.raises(ConfigError, match="collect.controller_weights.*final_candidates"):
        validate(tiny_run)
    c = tiny_run.controller
    c.final_candidates, c.final_episodes, c.eval_every, c.select_episodes = 2, 2, 2, 2
    validate(tiny_run)


def test_report_scores_read_the_runs_own_seed_unsuffixed_and_refuse_other_weights(
        tiny_run):
    from agents.finalists import report_score, weights_key

    run = RunDir(run_of(tiny_run))
    own = tiny_run.seed  # evaluate.py and score_finalists.py name it without a suffix
    flat = np.arange(5, dtype=np.float32)
    run.eval_dir.mkdir(parents=True, exist_ok=True)
    for stem, mean, episodes in (("finalist_0_mean_3", 100.0, 1),
                                 (f"finalist_0_mean_3_seed{own + 1}", 400.0, 3)):
        (run.eval_dir / f"{stem}.json").write_text(json.dumps(
            {"mean": mean, "episodes": episodes, "weights": weights_key(flat)}))
    assert report_score(run, "finalist_0_mean_3", [own, own + 1], flat) == \
        pytest.approx((100.0 + 3 * 400.0) / 4)
    with pytest.raises(ConfigError, match=r"finalist_0_mean_3\.json: scores other weights"):
        report_score(run, "finalist_0_mean_3", [own], flat + 1)  # an earlier round's
    run.controller.dir.mkdir(parents=True, exist_ok=True)  # evaluate.py's: the file played
    run.controller.selected.write_bytes(b"a C")
    (run.eval_dir / "controller_selected.json").write_text(json.dumps(
        {"mean": 5.0, "episodes": 1, "weights": "selected",
         "digests": {"weights": file_digest(run.controller.selected)}}))
    assert report_score(run, "controller_selected", [own], flat) == 5.0
    run.controller.selected.write_bytes(b"another C")
    with pytest.raises(ConfigError, match=r"controller_selected\.json: scores other"):
        report_score(run, "controller_selected", [own], flat)
