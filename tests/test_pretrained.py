"""The agents shipped in the repository (``pretrained/<name>``, made by
tools/export_pretrained.py) load and play a few real steps, without writing into
themselves. Absent agents are skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from worldmodels.checkpoint import load_weights
from worldmodels.run_dir import RunDir

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["carracing", "takecover"])
def test_a_shipped_agent_plays_real_steps(name):
    path = ROOT / "pretrained" / name
    if not (path / "shipped.json").is_file():
        pytest.skip(f"{path} holds no shipped agent")
    if name == "takecover":
        pytest.importorskip("vizdoom", reason="vizdoom is not installed")
    from agents.evaluation import default_policy
    from agents.rollouts import RolloutWorker
    from agents.sb3 import sb3_controller

    run = RunDir(path)
    before = sorted(str(p) for p in path.rglob("*"))
    policy = default_policy(run)  # the shipped one: CMA-ES's controller or an SB3 policy
    if policy == "controller":
        worker = RolloutWorker(run)
        load_weights(run.controller.weights(run.controller.default_weights()),
                     worker.controller)
        params = worker.controller.get_flat().numpy()
    else:
        cfg = run.load_config()
        worker = RolloutWorker(run, controller=sb3_controller(run, cfg, policy,
                                                              cfg.controller.environment))
        params = np.zeros(1, np.float32)
    result = worker.play_one(params, seed=0, max_steps=20)
    assert result.steps > 0 and np.isfinite(result.ret)
    worker.env.close()
    assert sorted(str(p) for p in path.rglob("*")) == before
