"""``run.agent_round=best``: the run's agent is the round whose winning controller
selected highest, in the run's places; a rerun, a kill half way and a later round keep
the run consistent (agents/agent_round.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import agents.iterations
import run
from agents.agent_round import best_round, round_in_place
from agents.evaluation import evaluate
from agents.iterations import round_start_latents
from tests.test_iterations import iterated_args, one_thread, tiny_run  # noqa: F401
from tools.export_pretrained import export
from worldmodels.checkpoint import file_digest
from worldmodels.config import ConfigError, load_config
from worldmodels.errors import InputError
from worldmodels.run_dir import RunDir
from worldmodels.shards import read_meta, shard_name

SELECT = ["controller.eval_every=1", "controller.select_episodes=1", "run.agent_round=best"]


def best_args(tmp_path: Path, rounds: int = 2) -> list[str]:
    return [*iterated_args(tmp_path), *SELECT, f"run.iterations={rounds}"]


def places(rd: RunDir) -> dict[str, str]:
    """Digests of what the run's scripts load: M's best, every controller file and the
    evaluations."""
    out = {"memory": file_digest(rd.memory.weights())}
    out |= {f"controller/{p.relative_to(rd.controller.dir)}": file_digest(p)
            for p in sorted(rd.controller.dir.rglob("*")) if p.is_file()}
    out |= {f"eval/{p.name}": file_digest(p) for p in sorted(rd.eval_dir.glob("*.[jc]s*"))}
    return out


def kept(rd: RunDir, number: int) -> dict[str, str]:
    """The same digests for round ``number``'s kept copies."""
    files = rd.round(number)
    out = {"memory": file_digest(files.memory.best)}
    out |= {f"controller/{p.relative_to(files.controller.dir)}": file_digest(p)
            for p in sorted(files.controller.dir.rglob("*")) if p.is_file()}
    out |= {f"eval/{p.name}": file_digest(p)
            for p in sorted(files.eval_dir.glob("*.[jc]s*"))}
    return out


def favour(rd: RunDir, number: int) -> float:
    """Rewrite round ``number``'s kept selection mean above every other round's (so a
    test can make any round the best); returns the new mean."""
    summaries = sorted(rd.iterations_dir.glob("round_*/summary.json"))
    top = max(json.loads(p.read_text())["controller"]["selected"]["selection_mean"]
              for p in summaries) + 1.0
    path = rd.round(number).summary
    figures = json.loads(path.read_text())
    figures["controller"]["selected"]["selection_mean"] = top
    path.write_text(json.dumps(figures))
    return top


@pytest.fixture(scope="module")
def best_run(tmp_path_factory, one_thread) -> tuple[Path, dict[str, Any]]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("best")
    return tmp, run.main(best_args(tmp))


def test_best_needs_cmaes_with_a_selection():
    with pytest.raises(ConfigError, match="run.agent_round"):
        load_config("carracing", [], ["run.iterations=2", "run.agent_round=best",
                                      "controller.eval_every=0"])
    with pytest.raises(ConfigError, match="run.agent_round"):
        load_config("carracing", [], ["run.iterations=2", "run.agent_round=best",
                                      "controller.algo=ppo", "collect.controller_weights=sb3"])
    with pytest.raises(ConfigError, match="run.agent_round"):
        load_config("carracing", [], ["run.iterations=2", "run.agent_round=worst"])
    cfg = load_config("carracing", [], ["run.iterations=2", *SELECT])
    assert cfg.run.agent_round == "best"
    assert load_config("carracing", [], ["run.agent_round=best"]).run.iterations == 1


def test_the_highest_selection_mean_wins_and_a_tie_goes_to_the_later_round(tmp_path):
    rd = RunDir(tmp_path)

    def rnd(n: int, mean: float) -> dict[str, Any]:
        return {"round": n, "controller": {"selected": {"selection_mean": mean}}}

    assert best_round([rnd(1, 300.0), rnd(2, 737.4), rnd(3, 633.1)], rd) == 2
    assert best_round([rnd(1, 500.0), rnd(2, 500.0), rnd(3, 100.0)], rd) == 2
    with pytest.raises(InputError, match=r"round_2.summary\.json.*round 2 has no selection"):
        best_round([rnd(1, 1.0), {"round": 2, "controller": {}}], rd)


def test_rounds_scored_on_different_selection_episodes_are_not_compared(tmp_path):
    """A second selection stage turned on between rounds: round 2's mean is over 128
    episodes, round 1's over 32 (a more optimistic figure); refused."""
    def rnd(n: int, mean: float, episodes: int) -> dict[str, Any]:
        return {"round": n, "controller": {"selected": {
            "selection_mean": mean, "selection_seed": 5, "selection_episodes": episodes}}}

    rd = RunDir(tmp_path)
    assert best_round([rnd(1, 900.0, 128), rnd(2, 800.0, 128)], rd) == 1
    with pytest.raises(InputError, match=r"different ones.*1: \(5, 32\), 2: \(5, 128\)"):
        best_round([rnd(1, 900.0, 32), rnd(2, 800.0, 128)], rd)


def test_a_new_round_on_another_selection_is_refused_before_it_trains(best_run):
    """Two rounds finished on 1 selection episode; run.iterations=3 with a second
    selection stage would score round 3 on 2: refused before round 3 plays (no
    episode, no kept files, the run's places untouched), not after it trained."""
    tmp, _ = best_run
    rd = tiny_run(tmp)
    before, episodes = places(rd), sorted(rd.rollouts.iterdir())
    with pytest.raises(InputError, match=r"different ones.*1: \(\d+, 1\), 2: \(\d+, 1\), "
                                         r"to come: \(\d+, 2\)"):
        run.main([*best_args(tmp, rounds=3), "controller.final_candidates=2",
                  "controller.final_episodes=1"])
    assert not rd.round(3).dir.exists() and sorted(rd.rollouts.iterdir()) == episodes
    assert places(rd) == before


def test_the_run_holds_the_best_rounds_agent(best_run, tmp_path):
    tmp, summary = best_run
    rd = tiny_run(tmp)
    means = {r["round"]: r["controller"]["selected"]["selection_mean"]
             for r in summary["rounds"]}
    agent = summary["agent"]
    assert agent["rule"] == "best" and agent["selection_means"] == {
        str(n): m for n, m in means.items()}
    assert agent["round"] == max((m, n) for n, m in means.items())[1]
    assert places(rd) == kept(rd, agent["round"])
    assert json.loads(rd.summary_file.read_text())["agent"] == agent
    # make round 1 the best: the rerun puts its M, C and evaluations in the run's places
    last_epoch = file_digest(rd.memory.model)
    favour(rd, 1)
    stray = rd.eval_dir / "controller_selected_seed9.json"  # an evaluation of round 2's C
    stray.write_text("{}")
    again = run.main(best_args(tmp))
    assert again["agent"]["round"] == 1 and all(r["reused"] for r in again["rounds"])
    assert places(rd) == kept(rd, 1) and places(rd) != kept(rd, 2)
    assert round_in_place(rd) == 1
    assert not stray.exists() and (rd.eval_dir / "set_aside" / stray.name).is_file()
    assert file_digest(rd.memory.model) == last_epoch  # M's last epoch stays round 2's
    cfg = rd.load_config()
    starts = np.load(rd.dream_starts, allow_pickle=False)
    want = round_start_latents(cfg, rd, 1)
    np.testing.assert_array_equal(starts["mu"], want[0].numpy())
    assert not np.array_equal(starts["mu"], round_start_latents(cfg, rd)[0].numpy())
    # evaluate.py on the run plays round 1's agent: round 1's score on its episodes
    scored = summary["rounds"][0]["evaluate"]
    replay = evaluate(rd, scored["episodes"], seed=cfg.seed, engine="serial", progress=False,
                      out_dir=tmp_path / "eval")
    assert replay["digests"] == scored["digests"]
    assert replay["mean"] == pytest.approx(scored["mean"], abs=1e-6)
    # the export ships round 1 and says so; --round 2 ships round 2's own dream starts
    info = export(rd.path, tmp_path / "agent")
    assert info["round"] == 1
    assert file_digest(RunDir(tmp_path / "agent").dream_starts) == file_digest(rd.dream_starts)
    export(rd.path, tmp_path / "round2", round_number=2)
    starts2 = np.load(RunDir(tmp_path / "round2").dream_starts, allow_pickle=False)
    np.testing.assert_array_equal(starts2["mu"], round_start_latents(cfg, rd, 2)[0].numpy())
    # and the last rule puts round 2 back, without the mark or round 1's dream starts
    last = run.main([*best_args(tmp), "run.agent_round=last"])
    assert last["agent"] == {"rule": "last", "round": 2}
    assert places(rd) == kept(rd, 2)
    assert not rd.agent_round_file.exists() and not rd.dream_starts.exists()


def test_a_kill_while_the_files_move_then_a_rerun_finishes_the_move(tmp_path, monkeypatch):
    summary = run.main(best_args(tmp_path))
    rd = tiny_run(tmp_path)
    other = 3 - summary["agent"]["round"]
    favour(rd, other)

    class Killed(RuntimeError):
        pass

    calls = {"n": 0}
    copy = agents.iterations.write_bytes_atomic

    def dies_on_the_third(path, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed
        copy(path, data)

    monkeypatch.setattr(agents.iterations, "write_bytes_atomic", dies_on_the_third)
    with pytest.raises(Killed):
        run.main(best_args(tmp_path))
    assert round_in_place(rd) is None  # the mark says the move was cut short
    monkeypatch.undo()
    assert run.main(best_args(tmp_path))["agent"]["round"] == other
    assert places(rd) == kept(rd, other)


def test_no_move_while_a_later_round_is_unfinished(tmp_path, monkeypatch):
    """Round 3 killed after collecting, then a rerun with run.iterations=2 that would
    make round 1 the agent: refused, naming round 3's first episode, and nothing moves
    (the run's places hold round 3's unfinished work)."""
    run.main(best_args(tmp_path))
    rd = tiny_run(tmp_path)

    class Killed(RuntimeError):
        pass

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(agents.iterations, "train_memory_checked", killed)
    with pytest.raises(Killed):
        run.main(best_args(tmp_path, rounds=3))
    monkeypatch.undo()
    favour(rd, 1)
    before = places(rd)
    with pytest.raises(InputError, match=r"ep_000005.*round 3 has started.*run.iterations=3"):
        run.main(best_args(tmp_path))
    assert places(rd) == before and not rd.agent_round_file.exists()
    # finishing round 3 then chooses among all three
    assert set(run.main(best_args(tmp_path, rounds=3))["agent"]["selection_means"]) == {
        "1", "2", "3"}


def test_a_later_round_plays_from_the_last_round_not_the_agent(best_run, tmp_path):
    """run.iterations raised after round 1 became the agent: round 3 collects with round
    2's controller and continues round 2's M; then the agent is chosen among three."""
    tmp, _ = best_run
    rd = tiny_run(tmp)
    favour(rd, 1)
    assert run.main(best_args(tmp))["agent"]["round"] == 1
    third = run.main(best_args(tmp, rounds=3))
    r3 = third["rounds"][2]
    assert r3["memory"]["round_start_epoch"] == third["rounds"][1]["memory"]["epochs_done"]
    for i in range(r3["collect"]["first_episode"], r3["collect"]["episodes_total"]):
        meta = read_meta(rd.rollouts / shard_name(i))["controller"]
        assert meta["digest"] == file_digest(rd.round(2).controller.weights(meta["weights"]))
    assert set(third["agent"]["selection_means"]) == {"1", "2", "3"}
    assert places(rd) == kept(rd, third["agent"]["round"])
    assert torch.get_num_threads() == 1
