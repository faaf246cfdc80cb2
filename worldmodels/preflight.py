"""Checks a command makes before its first stage writes anything: a run's trained V and
M against the sizes the config asks for, and the optional packages it names.

Each stage checks its own inputs before it writes ``config.yaml``, and
``RunDir.write_config`` the run's V and M against the config (:func:`refuse_other_models`),
but a later stage's files are only read when that stage starts: ``run.py`` with, say,
``vae.z_dim`` changed on a trained run would rewrite ``config.yaml`` and collect episodes
before V's stage refused. So ``run.py`` makes these checks first.
"""

from __future__ import annotations

import torch

from worldmodels.checkpoint import CheckpointError, read_header, refuse_made_with
from worldmodels.config import ExperimentConfig, refuse_missing_engines
from worldmodels.run_dir import RunDir


def refuse_other_models(cfg: ExperimentConfig, run: RunDir) -> None:
    """The run's trained V and M (if any) must be those ``cfg`` would build: V of
    ``vae.z_dim``, M of ``memory.kind`` with the sizes of ``memory.*`` (for the actions
    M was made for). Refused naming the file and the first key that differs.

    :meth:`RunDir.write_config` calls it before every stage writes ``config.yaml`` (so a
    command that changes, say, ``memory.hidden`` on a run whose M is trained cannot
    leave a config its files contradict), and ``run.py`` before its first stage."""
    from worldmodels.frmdn_training import build_memory  # (M's stage imports run_dir)

    if run.vae.model.exists():
        made = read_header(run.vae.model)["config"].get("z_dim")
        if made != cfg.vae.z_dim:
            raise CheckpointError(f"{run.vae.model}: made with z_dim={made!r}, but the "
                                  f"config asks for vae.z_dim={cfg.vae.z_dim!r}")
    if run.memory.model.exists():
        header = read_header(run.memory.model)
        made = header["config"]
        with torch.random.fork_rng(devices=[]):  # (a check must not move the caller's RNG)
            model = build_memory(cfg, int(made.get("action_dim", 0)),
                                 bool(made.get("discrete_actions", False)))
        if type(model).__name__ != header["kind"]:
            raise CheckpointError(f"{run.memory.model}: holds a {header['kind']}, but the "
                                  f"config's memory.kind={cfg.memory.kind!r} builds a "
                                  f"{type(model).__name__}")
        refuse_made_with(run.memory.model, made, model.config())


def preflight(cfg: ExperimentConfig, run: RunDir) -> None:
    """Every check above, for a command that runs stages on ``run``."""
    refuse_missing_engines(cfg)
    refuse_other_models(cfg, run)
