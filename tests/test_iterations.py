"""Ha's iterative training in run.py (run.iterations): rounds, their kept files, the
held-out split across rounds, M's epochs, and a kill inside round 2 then a rerun."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import agents.iterations
import run
from agents.evaluation import evaluate
from agents.iterations import round_episodes, round_schedule
from tests.test_run import tiny_job_args
from tools.export_pretrained import export
from worldmodels.checkpoint import file_digest, load_model, read_header
from worldmodels.config import ConfigError, load_config
from worldmodels.datasets import split_episodes
from worldmodels.dream import start_latents
from worldmodels.errors import InputError
from worldmodels.frmdn_training import latent_split
from worldmodels.memory import checkpoint_kinds
from worldmodels.run_dir import RunDir
from worldmodels.shards import list_shards, read_meta, shard_index, shard_name

ROUNDS = ["run.iterations=2", "run.iteration_episodes=2", "run.iteration_memory_epochs=1",
          "collect.controller_epsilon=0.25", "memory.keep_epochs=true"]


def iterated_args(tmp_path: Path) -> list[str]:
    return tiny_job_args(tmp_path, "dream") + ROUNDS


def same_weights(a: Path, b: Path) -> bool:
    """Whether two M checkpoints hold equal tensors."""
    wa, wb = (load_model(p, kinds=checkpoint_kinds()).state_dict() for p in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def tiny_run(tmp_path: Path) -> RunDir:
    return RunDir(tmp_path / "runs" / "CarRacing-v3" / "tiny")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every job here on one torch thread: collecting with the controller policy in this
    process (the serial engine) sets one thread, and V's and M's floating-point sums
    depend on the thread count, so the runs compared below must all start alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, one_thread) -> tuple[Path, dict[str, Any]]:
    """One uninterrupted two-round job (3 random-policy episodes, then 2 played by C)."""
    tmp = tmp_path_factory.mktemp("iter")
    return tmp, run.main(iterated_args(tmp))


def test_round_schedule_keeps_the_first_rounds_policies_then_plays_the_controller():
    cfg = load_config("carracing", [], ["collect.episodes=4000",
                                        "collect.policy=random:2000,linear"])
    assert round_schedule(cfg) == "random:2000,linear:2000,controller"
    cfg = load_config("carracing", [], ["collect.episodes=3", "collect.policy=random:5"])
    assert round_schedule(cfg) == "random:3,controller"
    cfg = load_config("carracing", [], ["collect.episodes=10", "run.iterations=3",
                                        "run.iteration_episodes=4"])
    assert [round_episodes(cfg, r) for r in (1, 2, 3)] == [range(10), range(10, 14),
                                                           range(14, 18)]


def test_iterations_config_is_checked():
    with pytest.raises(ConfigError, match="run.iterations"):
        load_config("carracing", [], ["run.iterations=0"])
    with pytest.raises(ConfigError, match="run.iterations"):
        load_config("carracing", [], ["run.iterations=2", "controller.algo=ppo"])
    with pytest.raises(ConfigError, match="run.iterations"):  # C trains CMA-ES, data SB3
        load_config("carracing", [], ["run.iterations=2", "collect.controller_weights=sb3"])
    ppo = load_config("carracing", [], ["run.iterations=2", "controller.algo=ppo",
                                        "collect.controller_weights=sb3"])
    assert ppo.run.iterations == 2
    loop = load_config("carracing", ["solve", "ppo", "ppo_horizon", "ppo_loop"])
    assert (loop.run.iterations, loop.collect.controller_weights) == (2, "sb3")
    assert loop.controller.algo == "ppo" and loop.controller.sb3_kwargs["gamma"] == 0.995


def test_later_episodes_never_move_the_first_rounds_split():
    first = [Path(shard_name(i)) for i in range(40)]
    later = [Path(shard_name(i)) for i in range(40, 140)]
    before = split_episodes(first, 0.1, 0, 8, base_episodes=40)
    assert before == split_episodes(first, 0.1, 0, 8)  # nothing added: the usual rule
    train, held = split_episodes(first + later, 0.1, 0, 8, base_episodes=40)
    assert [p for p in train if shard_index(p) < 40] == before[0]
    assert [p for p in held if shard_index(p) < 40] == before[1]
    late_held = [p for p in held if shard_index(p) >= 40]
    assert 0 < len(late_held) < 30  # the 10% threshold alone, no minimum top-up
    # each later episode's side depends on its own name only
    assert late_held == [p for p in split_episodes(first + later[:50], 0.1, 0, 8,
                                                   base_episodes=40)[1]
                         if shard_index(p) >= 40] + [
        p for p in late_held if shard_index(p) >= 90]


def test_two_rounds_run_end_to_end_and_keep_each_rounds_files(two_rounds, capsys):
    tmp, summary = two_rounds
    rd = tiny_run(tmp)
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert set(rounds[0]) >= {s.name for s in run.STAGES}
    assert "vae" not in rounds[1] and "evaluate_random" not in rounds[1]  # V: round 1 only
    # round 2's data: episodes 3 and 4, played by round 1's controller with its epsilon
    assert [shard_index(p) for p in list_shards(rd.rollouts)] == [0, 1, 2, 3, 4]
    assert len(list_shards(rd.latents)) == 5
    assert rounds[1]["collect"]["episodes_new"] == 2 and rounds[1]["encode"]["encoded"] == 2
    for i in (3, 4):
        meta = read_meta(rd.rollouts / shard_name(i))
        assert meta["policy"] == "controller"
        assert meta["controller"]["epsilon"] == 0.25
        assert meta["controller"]["digest"] == file_digest(rd.round(1).controller.best)
    assert {read_meta(rd.rollouts / shard_name(i))["policy"] for i in range(3)} == {"brownian"}
    # M went on from round 1's last epoch, and its best is round 2's
    assert rounds[0]["memory"]["epochs_done"] == 1
    assert rounds[1]["memory"]["round_start_epoch"] == 1
    assert rounds[1]["memory"]["epochs_done"] == rounds[1]["memory"]["best_epoch"] == 2
    assert rd.memory_meta()["epoch"] == 2
    # C trained anew: one generation in round 2's own history
    assert rounds[1]["controller"]["restarted"] and rounds[1]["controller"]["generations"] == 1
    # each round's files, kept apart
    for r, epochs in ((1, 1), (2, 2)):
        kept = rd.round(r)
        assert json.loads(kept.summary.read_text())["round"] == r
        assert len(json.loads(kept.memory.metrics.read_text())) == epochs
        for path in (kept.memory.best, kept.controller.best, kept.controller.mean,
                     kept.controller.log, kept.eval_dir / "controller.json"):
            assert path.is_file(), path
    assert file_digest(rd.round(2).controller.best) == file_digest(rd.controller.best)
    assert file_digest(rd.round(2).memory.best) == file_digest(rd.memory.weights())
    assert file_digest(rd.round(1).memory.best) != file_digest(rd.round(2).memory.best)
    saved = json.loads(rd.summary_file.read_text())
    assert [r["evaluate"]["mean"] for r in saved["rounds"]] == [
        r["evaluate"]["mean"] for r in rounds]
    # the config on disk is the run's own, not a round's collection settings
    assert rd.load_config().collect.episodes == 3
    # a rerun reads both finished rounds back
    again = run.main(iterated_args(tmp))
    assert [r.get("reused") for r in again["rounds"]] == [True, True]
    table = capsys.readouterr().out
    assert "round 2" in table and "anew" in table
    took = sum(r["wall_seconds"] for r in again["rounds"])
    assert f"this job; the 2 rounds took {took:.1f} s (2 finished before)" in table


def test_round_2_keeps_the_first_rounds_held_out_split(two_rounds):
    tmp, _ = two_rounds
    rd = tiny_run(tmp)
    cfg = rd.load_config()
    train, held, _ = latent_split(cfg, rd)
    first = [p for p in list_shards(rd.latents) if shard_index(p) < 3]
    want_train, want_held = split_episodes(first, cfg.data.holdout_fraction, cfg.seed,
                                           cfg.data.holdout_min_episodes)
    assert [p for p in train if shard_index(p) < 3] == want_train
    assert [p for p in held if shard_index(p) < 3] == want_held
    assert want_held  # round 1 held out something, and it still does


def _digests(rd: RunDir) -> dict[str, str]:
    r2 = rd.round(2)
    return {"controller": file_digest(r2.controller.best),
            "memory": file_digest(r2.memory.best),
            "history": file_digest(r2.controller.history),
            "rollout": file_digest(rd.rollouts / shard_name(4))}


@pytest.mark.parametrize("where", ["memory", "controller"])
def test_a_kill_inside_round_2_then_a_rerun_finishes_as_an_uninterrupted_run(
        two_rounds, tmp_path, monkeypatch, where):
    class Killed(RuntimeError):
        pass

    def killed(*args, **kwargs):
        raise Killed(where)

    if where == "memory":  # round 2, after its episodes are collected and encoded
        monkeypatch.setattr(agents.iterations, "train_memory_checked", killed)
    else:  # round 2, after M's epochs and after C's files were cleared for CMA-ES
        monkeypatch.setattr(run, "train_controller", killed)
    with pytest.raises(Killed):
        run.main(iterated_args(tmp_path))
    rd = tiny_run(tmp_path)
    assert rd.round(1).summary.is_file() and not rd.round(2).summary.exists()
    kept = json.loads(rd.round(2).progress.read_text())
    killed_job = kept["stages"]  # the stages the killed job finished in round 2
    assert "collect" in killed_job and where not in killed_job
    monkeypatch.undo()
    rerun = run.main(iterated_args(tmp_path))
    first, second = rerun["rounds"]
    assert first["reused"] and "reused" not in second  # round 1 is not played again
    uninterrupted_tmp, uninterrupted = two_rounds
    # the round's figures count the killed job's work: its episodes, encoding, wall time
    for stage, count in (("collect", "episodes_new"), ("encode", "encoded")):
        assert second[stage][count] == uninterrupted["rounds"][1][stage][count] > 0
        assert second[stage]["invocations"] == 2
        assert second[stage]["wall_seconds"] >= killed_job[stage]["wall_seconds"]
    assert "invocations" not in second[where]  # the stage the kill cut off
    assert second["killed_jobs_seconds"] == kept["wall_seconds"] > 0
    assert rerun["wall_seconds"] >= second["wall_seconds"] >= kept["wall_seconds"]
    assert not rd.round(2).progress.exists()  # gone once the round's summary is written
    assert second["evaluate"]["mean"] == uninterrupted["rounds"][1]["evaluate"]["mean"]
    assert second["memory"]["epochs_done"] == 2
    assert _digests(rd) == _digests(tiny_run(uninterrupted_tmp))


def ppo_rounds_args(tmp_path: Path) -> list[str]:
    return [*iterated_args(tmp_path), "controller.algo=ppo", "collect.controller_weights=sb3",
            "controller.sb3_timesteps=32", "controller.sb3_envs=2",
            "controller.sb3_checkpoint_steps=32",
            "controller.sb3_kwargs={n_steps: 16, batch_size: 16, n_epochs: 1}"]


def test_two_rounds_with_ppo_in_the_dream_collect_with_round_1s_policy(tmp_path):
    """Ha's loop with an SB3 controller (``collect.controller_weights=sb3``): round 2's
    episodes are played by the PPO policy round 1 trained in the dream, and round 2
    trains PPO anew in the new M's dream; each round keeps its own policy."""
    rounds = run.main(ppo_rounds_args(tmp_path))["rounds"]
    rd = tiny_run(tmp_path)
    kept = [rd.round(r).controller.dir / "sb3_ppo_dream.safetensors" for r in (1, 2)]
    assert all(p.is_file() for p in kept)
    for i in (3, 4):  # round 2's episodes: round 1's dream-trained policy
        meta = read_meta(rd.rollouts / shard_name(i))
        assert meta["policy"] == "controller"
        assert meta["controller"]["weights"] == "sb3_ppo_dream"
        assert meta["controller"]["digest"] == file_digest(kept[0])
    second = rounds[1]
    assert second["controller"]["restarted"] and second["controller"]["algo"] == "ppo"
    assert second["controller"]["timesteps"] == 32  # from scratch, not 64
    assert second["evaluate"]["policy"] == "ppo_dream" and second["evaluate"]["episodes"] == 1
    assert not second["evaluate"].get("cached")  # round 2's own policy was played
    assert second["evaluate"]["digests"]["weights"] == file_digest(kept[1])
    # round 2's policy trained on round 2's M: not round 1's file
    assert file_digest(kept[1]) == file_digest(rd.controller.sb3("ppo", "dream")[0])
    assert file_digest(kept[1]) != file_digest(kept[0])


def test_a_kill_in_an_sb3_rounds_controller_stage_then_a_rerun_trains_round_2s_policy(
        tmp_path, monkeypatch):
    """Killed after round 2 cleared round 1's policy from ``controller/``: the rerun
    does not collect again and trains round 2's policy from scratch on round 2's M."""
    class Killed(RuntimeError):
        pass

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(run, "train_controller", killed)
    with pytest.raises(Killed):
        run.main(ppo_rounds_args(tmp_path))
    rd = tiny_run(tmp_path)
    assert json.loads(rd.round(2).state.read_text())["controller_cleared"]
    assert not rd.controller.sb3("ppo", "dream")[0].exists()  # round 1's kept apart only
    collected = {p.name: file_digest(p) for p in list_shards(rd.rollouts)}
    monkeypatch.undo()
    second = run.main(ppo_rounds_args(tmp_path))["rounds"][1]
    # round 2's 2 episodes were collected once, by the killed job, and are counted
    assert {p.name: file_digest(p) for p in list_shards(rd.rollouts)} == collected
    assert len(collected) == 5 and second["collect"]["episodes_new"] == 2
    assert second["collect"]["invocations"] == 2 and second["controller"]["timesteps"] == 32
    now = rd.controller.sb3("ppo", "dream")[0]
    assert file_digest(now) == file_digest(rd.round(2).controller.dir / now.name)
    assert file_digest(now) != file_digest(rd.round(1).controller.dir / now.name)
    assert second["evaluate"]["digests"]["memory"] == file_digest(rd.round(2).memory.best)


def test_a_finished_round_ships_as_that_round_left_it_and_replays_its_score(two_rounds,
                                                                           tmp_path):
    """``export_pretrained.py --round 1`` after round 2: round 1's M and C (not the
    run's latest), which play round 1's evaluation episodes to the same returns; an
    unfinished round is refused, naming its summary file."""
    tmp, summary = two_rounds
    rd = tiny_run(tmp)
    scored = summary["rounds"][0]["evaluate"]
    weights = Path(scored["key"]["weights_file"]).stem
    dest = tmp_path / "round1"
    info = export(rd.path, dest, weights=weights, round_number=1)
    assert info["round"] == 1
    shipped = RunDir(dest)
    assert file_digest(shipped.controller.weights(weights)) == file_digest(
        rd.round(1).controller.weights(weights))
    kept = load_model(rd.round(1).memory.best, kinds=checkpoint_kinds()).state_dict()
    latest = load_model(rd.memory.weights(), kinds=checkpoint_kinds()).state_dict()
    ours = shipped.load_memory().state_dict()
    assert all(torch.equal(ours[k], kept[k]) for k in kept)
    assert not all(torch.equal(ours[k], latest[k]) for k in latest)  # not round 2's M
    again = evaluate(shipped, scored["episodes"], seed=rd.load_config().seed, engine="serial",
                     progress=False, weights=weights, overrides=tuple(scored["key"]["overrides"]),
                     out_dir=tmp_path / "eval")
    assert again["episodes"] == scored["episodes"]
    for stat in ("mean", "std", "min", "max"):
        assert again[stat] == pytest.approx(scored[stat], abs=1e-6)
    with pytest.raises(InputError, match=r"round_3.summary\.json.*not finished"):
        export(rd.path, tmp_path / "round3", weights=weights, round_number=3)
    assert not (tmp_path / "round3").exists()
    # memory.keep_epochs: every scored epoch's weights, the chosen ones among them; the
    # export ships a kept epoch's M with the round's C, and refuses one not kept
    epochs = [rd.load_config().memory.epochs + r for r in (0, 1)]
    best_epoch = read_header(rd.round(1).memory.best)["meta"]["epoch"]
    assert all(rd.memory.epoch_weights(e).is_file() for e in range(1, epochs[1] + 1))
    assert same_weights(rd.memory.epoch_weights(best_epoch), rd.round(1).memory.best)
    with pytest.raises(InputError, match=f"epoch {epochs[1]} of M is not of round 1"):
        export(rd.path, tmp_path / "epoch2", weights=weights, round_number=1,
               memory_epoch=epochs[1])  # round 2's epoch, round 1's episodes and C
    with pytest.raises(InputError, match="needs --round"):
        export(rd.path, tmp_path / "epoch2", weights=weights, memory_epoch=epochs[1])
    info = export(rd.path, tmp_path / "epoch2", weights=weights, round_number=2,
                  memory_epoch=epochs[1])
    epoch_ship = RunDir(tmp_path / "epoch2").memory.model
    meta = read_header(epoch_ship)["meta"]
    assert (meta["epoch"], meta["weights"]) == (epochs[1], f"epoch_{epochs[1]:03d}")
    assert (info["round"], info["memory_epoch"]) == (2, epochs[1])
    assert same_weights(epoch_ship, rd.memory.epoch_weights(epochs[1]))
    assert not same_weights(epoch_ship, rd.round(1).memory.best)
    with pytest.raises(InputError, match=r"epoch_099\.safetensors: no weights kept.*epoch_001"):
        export(rd.path, tmp_path / "epoch99", weights=weights, round_number=2, memory_epoch=99)
    assert not (tmp_path / "epoch99").exists()
    # dreams start from the episodes round 1's M trained on, not round 2's as well
    cfg = rd.load_config()
    train = latent_split(cfg, rd)[0]
    starts = np.load(shipped.dream_starts, allow_pickle=False)["mu"]
    round_1 = [p for p in train if shard_index(p) < cfg.collect.episodes]
    assert len(round_1) < len(train)
    np.testing.assert_array_equal(starts, start_latents(round_1)[0].numpy())
    # a shipped agent plays no rounds: its iterations/ would not be its own
    with pytest.raises(InputError, match="plays none"):
        export(dest, tmp_path / "again", weights=weights, round_number=1)


def test_m_data_control_trains_a_rounds_m_on_the_earlier_episodes_only(two_rounds, tmp_path,
                                                                        monkeypatch):
    """tools/m_data_control.py: round 1's M, one more epoch on the episodes below 3 (round
    1's data), in a directory of its own; the run's files are only read."""
    from tools import m_data_control
    from worldmodels import frmdn_training

    tmp, _ = two_rounds
    rd = tiny_run(tmp)
    before = {p: file_digest(p) for p in rd.path.rglob("*") if p.is_file()}
    seen = []
    real = frmdn_training.SequenceDataset

    def spy(paths, *args, **kwargs):
        seen.append([shard_index(p) for p in paths])
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(frmdn_training, "SequenceDataset", spy)
    started_from = []
    real_train = m_data_control.train_memory_checked

    def train_spy(cfg, view, **kwargs):  # the weights M starts from
        started_from.append(file_digest(view.memory.model))
        return real_train(cfg, view, **kwargs)

    monkeypatch.setattr(m_data_control, "train_memory_checked", train_spy)
    out = tmp_path / "control"
    result = m_data_control.main(["--run", str(rd.path), "--round", "1", "--epochs", "1",
                                  "--below", "3", "--out", str(out)])
    train, held, _ = latent_split(rd.load_config(), rd)
    # trained on the episodes below 3, scored on every held-out one
    assert seen[0] == [shard_index(p) for p in train if shard_index(p) < 3]
    assert seen[1:] and all(s == [shard_index(p) for p in held] for s in seen[1:])
    assert any(shard_index(p) >= 3 for p in train)  # the filter left some out
    assert result["memory"]["epochs_done"] == result["memory"]["best_epoch"] == 2
    assert "skipped" in result["check"]  # CarRacing's actions are not Discrete
    metrics = json.loads((out / "memory" / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [2]
    # started from round 1's M: its weights, then one epoch on
    assert started_from == [file_digest(rd.round(1).memory.best)]
    assert file_digest(out / "memory" / "model.safetensors") != started_from[0]
    assert {p: file_digest(p) for p in before} == before  # the run is only read
    # below 0: every training episode
    seen.clear()
    m_data_control.main(["--run", str(rd.path), "--round", "1", "--epochs", "1",
                         "--below", "0", "--out", str(tmp_path / "all")])
    assert seen[0] == [shard_index(p) for p in train]
    with pytest.raises(ConfigError, match="round 3"):
        m_data_control.main(["--run", str(rd.path), "--round", "3", "--epochs", "1",
                             "--below", "0", "--out", str(tmp_path / "none")])


def _copy_of(two_rounds, tmp_path: Path) -> RunDir:
    """A copy of the two-round run's directory, under tmp_path's runs/ (the fixture's
    run is shared by the module's tests)."""
    import shutil

    tmp, _ = two_rounds
    shutil.copytree(tmp / "runs", tmp_path / "runs")
    return tiny_run(tmp_path)


def test_round_sizes_unlike_the_finished_rounds_are_refused(two_rounds, tmp_path):
    rd = _copy_of(two_rounds, tmp_path)
    before = sorted(p.name for p in rd.rollouts.iterdir())
    with pytest.raises(ConfigError, match=r"round_2.*summary.json: round 2 ended at 5 "
                                          r"episodes.*run.iteration_episodes=1"):
        run.main([*iterated_args(tmp_path), "run.iteration_episodes=1", "run.iterations=3"])
    assert sorted(p.name for p in rd.rollouts.iterdir()) == before  # nothing collected


def test_fewer_rounds_than_played_make_the_last_of_them_the_agent(two_rounds, tmp_path):
    """run.iterations=1 on a run that played 2 rounds puts round 1 in place (it ran the
    one-round pipeline over the rounds' episodes, or refused naming collect.policy), and
    run.iterations=2 puts round 2 back."""
    rd = _copy_of(two_rounds, tmp_path)
    before = sorted(p.name for p in rd.rollouts.iterdir())
    one = run.main([*iterated_args(tmp_path), "run.iterations=1"])
    assert [r["round"] for r in one["rounds"]] == [1] and one["rounds"][0].get("reused")
    assert one["agent"]["round"] == 1
    assert same_weights(rd.memory.best, rd.round(1).memory.best)
    assert not same_weights(rd.memory.best, rd.round(2).memory.best)
    two = run.main(iterated_args(tmp_path))
    assert two["agent"]["round"] == 2 and same_weights(rd.memory.best, rd.round(2).memory.best)
    assert sorted(p.name for p in rd.rollouts.iterdir()) == before  # nothing collected


def test_a_new_rounds_c_sets_the_last_rounds_scores_aside_and_follows_m(two_rounds,
                                                                         tmp_path):
    from agents.iterations import controller_round

    rd = _copy_of(two_rounds, tmp_path)
    cfg = rd.load_config()
    stale = rd.eval_dir / "controller_selected_seed7.json"  # round 2's C, other seeds
    stale.write_text(json.dumps({"mean": 400.0, "episodes": 100}))
    (rd.eval_dir / "random_seed7.json").write_text("{}")
    trained: list[int] = []

    def train(cfg, run):  # a C trained in this round: one file
        trained.append(1)
        (run.controller.dir / "best.safetensors").write_bytes(b"C of round 3")
        return {}

    controller_round(cfg, rd, 3, train)
    assert not stale.exists() and (rd.eval_dir / "set_aside" / stale.name).is_file()
    assert (rd.eval_dir / "random_seed7.json").is_file()  # the random policy's stay
    assert (rd.round(2).eval_dir / "controller.json").is_file()  # round 2 kept its own
    state = json.loads(rd.round(3).state.read_text())
    assert state["memory"] == file_digest(rd.memory.weights())
    controller_round(cfg, rd, 3, lambda cfg, run: {})  # a rerun, same M: C stays
    assert (rd.controller.dir / "best.safetensors").read_bytes() == b"C of round 3"
    shutil_m = rd.memory.weights()
    shutil_m.write_bytes(rd.round(1).memory.best.read_bytes())  # M trained further
    controller_round(cfg, rd, 3, lambda cfg, run: {})
    assert not (rd.controller.dir / "best.safetensors").exists()  # C of another dream
    assert json.loads(rd.round(3).state.read_text())["memory"] == file_digest(shutil_m)


def test_a_missing_episode_after_the_rounds_c_was_cleared_is_refused(two_rounds, tmp_path):
    from agents.iterations import collect_round

    rd = _copy_of(two_rounds, tmp_path)
    cfg = run_config = rd.load_config()
    run_config.run.iterations, run_config.run.iteration_episodes = 3, 2
    rd.round(3).dir.mkdir(parents=True)
    rd.round(3).state.write_text(json.dumps({"controller_cleared": True}))
    with pytest.raises(InputError, match=r"episode 5 of round 3 is missing.*cleared"):
        collect_round(cfg, rd, 3)
