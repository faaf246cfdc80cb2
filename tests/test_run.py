"""The main job end to end on a tiny config, then again: every stage skipped or reused."""

import json
from pathlib import Path

import pytest
import torch
import yaml

import run
from worldmodels.checkpoint import file_digest, load_model, read_header, save_model
from worldmodels.config import ConfigError


def tiny_job_args(tmp_path, environment: str) -> list[str]:
    return ["--preset", "quick", f"root={tmp_path / 'runs'}", "name=tiny",
            "collect.episodes=3", "collect.workers=1", "env.max_episode_steps=30",
            "vae.epochs=1", "vae.batch_size=16", "vae.max_holdout_frames=0",
            "vae.grid_frames=2", "vae.z_dim=4", "data.shuffle_buffer=64",
            "data.holdout_fraction=0.34", "data.holdout_min_episodes=1", "memory.hidden=8",
            "memory.epochs=1",
            "memory.seq_len=10", "controller.population=3", "controller.rollouts=1",
            "controller.generations=1", "controller.eval_episodes=1",
            "controller.engine=serial", f"controller.environment={environment}"]


def logged_scalars(log_dir: Path) -> list[str]:
    """The scalar tags TensorBoard reads from the event files under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(log_dir)).Reload().Tags()["scalars"]


@pytest.mark.parametrize("new_v", [False, True])
def test_a_job_killed_in_m_then_rerun_reports_the_killed_jobs_collection(
        tmp_path, monkeypatch, capsys, new_v):
    """The rerun's summary counts the episodes, encoding and wall time of the stages the
    killed job finished (kept in progress.json until the summary is written); with V
    trained further in between, the latents are encoded again and counted once."""
    class Killed(RuntimeError):
        pass

    def killed(*args, **kwargs):
        raise Killed

    args = tiny_job_args(tmp_path, "dream")
    monkeypatch.setattr(run, "train_memory_checked", killed)
    with pytest.raises(Killed):
        run.main(args)
    run_dir = tmp_path / "runs" / "CarRacing-v3" / "tiny"
    progress = run_dir / "progress.json"
    kept = json.loads(progress.read_text())
    killed_job = kept["stages"]
    assert set(killed_job) == {"collect", "vae", "encode"}
    assert kept["wall_seconds"] >= sum(s["wall_seconds"] for s in killed_job.values()) - 0.2
    monkeypatch.undo()
    capsys.readouterr()
    rerun = run.main([*args, "vae.epochs=2"] if new_v else args)
    assert "3 episodes (3 new) [over 2 invocations]" in capsys.readouterr().out
    assert rerun["collect"]["episodes_new"] == 3 and rerun["encode"]["encoded"] == 3
    assert rerun["encode"]["invocations"] == 2
    assert (rerun["encode"]["vae_digest"] != killed_job["encode"]["vae_digest"]) == new_v
    assert rerun["collect"]["steps_new"] == killed_job["collect"]["steps_new"] > 0
    assert rerun["vae"]["invocations"] == 2 and "invocations" not in rerun["memory"]
    assert rerun["collect"]["wall_seconds"] >= killed_job["collect"]["wall_seconds"]
    assert rerun["wall_seconds"] >= kept["wall_seconds"]  # the job's total counts both
    assert not progress.exists()
    assert json.loads((run_dir / "summary.json").read_text())["collect"]["episodes_new"] == 3


@pytest.mark.parametrize("data", [
    b"{not json", b"\xff\xfe{", b"[]", b'{"stages": {}}', b'{"stages": [], "wall_seconds": 0}',
    b'{"stages": {}, "wall_seconds": "x"}',
    b'{"stages": {"collect": {"wall_seconds": null}}, "wall_seconds": 1}',
    b'{"stages": {"collect": {"wall_seconds": 1, "invocations": "2"}}, "wall_seconds": 1}'])
def test_an_unreadable_progress_file_is_set_aside_with_a_warning(tmp_path, capsys, data):
    progress = tmp_path / "progress.json"
    progress.write_bytes(data)
    assert run.killed_jobs(progress) == {}
    assert (tmp_path / "progress.json.unreadable").read_bytes() == data  # kept, not lost
    assert f"{progress} is unreadable" in capsys.readouterr().err
    assert run.killed_jobs(progress) == {}  # and none now: nothing to count


def test_a_progress_file_run_py_wrote_is_read_back(tmp_path):
    progress = tmp_path / "progress.json"
    kept = {"wall_seconds": 3.5, "stages": {"collect": {"wall_seconds": 2.0, "invocations": 2}}}
    progress.write_text(json.dumps(kept))
    assert run.killed_jobs(progress) == kept and progress.exists()


def tiny_memory_run(root, kind: str):
    """A tiny CarRacing run with ``memory.kind=<kind>``: M trained, CMA-ES in its dream
    for 2 generations, then evaluated in the real env (run.py's main job)."""
    from worldmodels.run_dir import RunDir

    args = [a for a in tiny_job_args(root, "dream") if not a.startswith("controller.gen")]
    summary = run.main([*args, f"memory.kind={kind}", "controller.generations=2"])
    assert summary["controller"]["environment"] == "dream"
    assert summary["evaluate"]["episodes"] == 1
    return RunDir(root / "runs" / "CarRacing-v3" / "tiny")


def dreams_and_acts(trained, kind: str, model: type) -> None:
    """A run's M is of ``kind``; CMA-ES's fitness comes from its batched dream, and the
    trained C acts in the real env through M's features."""
    import numpy as np

    from agents.dreams import DreamEvaluator
    from agents.vmc import VMCAgent
    from envs.factory import make_env_from_config

    cfg = trained.load_config()
    assert cfg.memory.kind == kind and isinstance(trained.load_memory(), model)
    assert trained.controller.best.exists()
    evaluator = DreamEvaluator(trained, cfg)
    fitness = evaluator(np.zeros((2, evaluator.controller.num_parameters())), [0, 1])
    assert fitness.shape == (2,) and np.isfinite(fitness).all()
    real = make_env_from_config(cfg.env)
    agent = VMCAgent.from_run(trained, cfg, real.action_space, weights="best")
    obs, _ = real.reset(seed=0)
    for _ in range(3):
        obs, *_ = real.step(agent.act(obs[None])[0])
    real.close()


def test_main_job_runs_every_stage_then_skips_them(tmp_path, capsys):
    args = tiny_job_args(tmp_path, "dream")
    first = run.main(args)
    table = capsys.readouterr().out
    for stage in ("collect", "vae", "encode", "memory", "dream_check", "controller", "evaluate",
                  "evaluate_random", "total"):
        assert stage in table
    assert first["controller"]["environment"] == "dream"
    assert first["evaluate"]["episodes"] == 1 and "cached" not in first["evaluate"]
    # the printed score says which episodes it was played on
    assert f"(the report seeds of seed={first['evaluate']['key']['seed']})" in table
    run_dir = tmp_path / "runs" / "CarRacing-v3" / "tiny"
    logs = sorted((run_dir / "tensorboard").glob("*/events.out.tfevents.*"))
    assert {p.parent.name for p in logs} == {"vae", "memory", "controller"}
    for stage in ("vae", "memory", "controller"):  # each training stage drew its curves
        assert logged_scalars(run_dir / "tensorboard" / stage), stage
    second = run.main(args)
    # stages with nothing to do open no (empty) event files
    assert sorted((run_dir / "tensorboard").glob("*/events.out.tfevents.*")) == logs
    # a rerun of a finished job reports its own (no) work: nothing was carried over
    assert second["collect"]["episodes_new"] == 0 and "invocations" not in second["collect"]
    assert second["encode"]["encoded"] == 0
    assert second["evaluate"]["cached"] and second["evaluate_random"]["cached"]
    assert second["evaluate"]["mean"] == first["evaluate"]["mean"]
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["memory"]["epochs_done"] == 1
    # run.iterations=1 (the default) is the pipeline once: these stages, no rounds kept
    assert set(saved) == {s.name for s in run.STAGES} | {"run_dir", "wall_seconds"}
    assert not (run_dir / "iterations").exists()

    # the score belongs to V and M too: other M weights are scored again
    best = run_dir / "memory" / "best.safetensors"
    memory = load_model(best)
    with torch.no_grad():
        next(memory.parameters()).add_(0.1)
    save_model(best, memory, meta=read_header(best)["meta"])
    third = run.main(args)
    assert "cached" not in third["evaluate"] and third["evaluate_random"]["cached"]

    # so are other play settings: the agent's precision, the env's step cap
    fourth = run.main([*args, "controller.agent_precision=bfloat16"])
    assert "cached" not in fourth["evaluate"] and fourth["evaluate_random"]["cached"]
    fifth = run.main([*args, "controller.agent_precision=bfloat16", "env.max_episode_steps=10"])
    assert "cached" not in fifth["evaluate"] and "cached" not in fifth["evaluate_random"]

    # V trained again: the latents are encoded again, but the M (and C) of the old V
    # are refused, untouched, with the file named
    model = run_dir / "memory" / "model.safetensors"
    before = file_digest(model)
    with pytest.raises(ConfigError, match="memory/model.safetensors: M was trained on latents"):
        run.main([*args, "vae.epochs=2"])
    assert file_digest(model) == before


@pytest.mark.slow
@pytest.mark.parametrize("env_id, extra", [
    ("CartPole-v1", ["collect.policy=random", "controller.environment=dream"]),  # Discrete
    ("Pendulum-v1", ["controller.environment=real"]),  # Box actions, brownian data
])
def test_another_env_by_id_runs_every_stage_from_its_rendered_frames(tmp_path, env_id, extra):
    """Classic-control envs have no picture observation: V sees their rgb_array rendering,
    and every stage runs through run.py from `--config common` (no env file's settings);
    the run directory is named after the env id, and dream.py plays the trained agent."""
    import dream as dream_script

    args = ["--config", "common", *tiny_job_args(tmp_path, "dream"), f"env.id={env_id}",
            *extra]
    summary = run.main(args)
    assert summary["collect"]["episodes_new"] == 3 and summary["evaluate"]["episodes"] == 1
    run_dir = tmp_path / "runs" / env_id / "tiny"
    assert (run_dir / "controller" / "best.safetensors").exists()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["env"]["crop_bottom"] == -1
    shown = dream_script.main(["--run", str(run_dir), "--dream-only", "--steps", "3"])
    assert 1 <= shown["dream_steps"] <= 3 and Path(shown["gif"]).exists()
