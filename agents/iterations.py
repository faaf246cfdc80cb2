"""Ha's iterative training: the later rounds of ``run.py`` with ``run.iterations`` > 1.

Round 1 is the pipeline as ever. Round ``r`` > 1 (docs/experiments/takecover-iterations.md):

* collects ``run.iteration_episodes`` episodes played by the run's controller as round
  ``r - 1`` left it (the ``controller`` data policy: ``collect.controller_weights``,
  with ``collect.controller_epsilon`` random actions; ``finalists``: the K finalists of
  its second selection stage in turn), as the run's episodes
  ``collect.episodes + (r - 2) * run.iteration_episodes`` onwards (:func:`round_episodes`);
* encodes them (the encode stage encodes only shards without current latents);
* trains M ``run.iteration_memory_epochs`` more epochs on all the episodes, from its last
  weights; the round's best epoch is chosen among its own epochs (:func:`memory_round`);
* trains C anew: the run's ``controller/`` is cleared (round ``r - 1`` kept a copy) and
  CMA-ES, or the SB3 algorithm of ``controller.algo`` (whose policy the ``controller``
  data policy plays with ``collect.controller_weights=sb3``), starts from scratch in the
  new dream or env (:func:`controller_round`);
* evaluates C as round 1 does.

While rounds play, the run's ``memory/``, ``controller/`` and ``eval/`` hold the
latest round's files, so every script (evaluate.py, dream.py) plays the latest agent;
each finished round keeps copies in ``iterations/round_<r>/`` (:func:`keep_round`,
:class:`worldmodels.run_dir.RoundFiles`), whose ``summary.json`` marks it finished.
After the last round, ``run.agent_round=best`` may put an earlier round's files in
their places (agents/agent_round.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents.collect import collect, describe
from agents.dream_check import train_memory_checked
from worldmodels.atomic import write_bytes_atomic
from worldmodels.checkpoint import file_digest, read_json, sidecar, write_json_atomic
from worldmodels.config import ConfigError, ExperimentConfig, policy_schedule
from worldmodels.dream import start_latents
from worldmodels.errors import InputError
from worldmodels.frmdn_training import latent_split, report_dict
from worldmodels.run_dir import RunDir
from worldmodels.shards import list_shards, shard_index

if TYPE_CHECKING:
    from torch import Tensor


def round_total(cfg: ExperimentConfig, number: int) -> int:
    """Episodes the run holds once round ``number`` (from 1) has collected."""
    return cfg.collect.episodes + (number - 1) * cfg.run.iteration_episodes


def round_episodes(cfg: ExperimentConfig, number: int) -> range:
    """Indices of the episodes round ``number`` adds (round 1: ``collect.episodes``)."""
    return range(round_total(cfg, number - 1) if number > 1 else 0, round_total(cfg, number))


def round_schedule(cfg: ExperimentConfig) -> str:
    """``collect.policy`` for the later rounds: the run's own schedule for its first
    ``collect.episodes`` (so their shards stay valid), then ``controller``:
    ``random:2000,linear`` with 4,000 episodes -> ``random:2000,linear:2000,controller``."""
    parts, start, first = [], 0, cfg.collect.episodes
    for name, count in policy_schedule(cfg.collect.policy):
        n = first - start if count < 0 else min(count, first - start)
        if n > 0:
            parts.append(f"{name}:{n}")
        start += n
        if start >= first:
            break
    return ",".join([*parts, "controller"])


def round_start_latents(cfg: ExperimentConfig, run: RunDir, number: int | None = None,
                        ) -> tuple[Tensor, Tensor]:
    """(mu, logvar), each ``(episodes, z_dim)``: the first latents of the run's training
    episodes, where dreams on its M start; with ``number``, only the episodes round
    ``number``'s M trained on (the run's first :func:`round_total`)."""
    train = latent_split(cfg, run)[0]
    if number is not None:
        train = [p for p in train if shard_index(p) < round_total(cfg, number)]
    return start_latents(train)


def finished_round(run: RunDir, number: int) -> dict[str, Any] | None:
    """Round ``number``'s figures if it is finished (its summary exists), else None."""
    summary = read_json(run.round(number).summary, None)
    return summary if isinstance(summary, dict) else None


def _previous(run: RunDir, number: int) -> dict[str, Any]:
    previous = finished_round(run, number - 1)
    if previous is None:
        raise ConfigError(f"{run.round(number - 1).summary}: round {number - 1} is not "
                          f"finished, so round {number} cannot start")
    return previous


def collect_round(cfg: ExperimentConfig, run: RunDir, number: int) -> dict[str, Any]:
    """Round ``number``'s episodes, played by the run's controller (skipped when they
    are all there: C's files may already be cleared for this round's CMA-ES)."""
    total = round_total(cfg, number)
    have = {shard_index(p) for p in list_shards(run.rollouts)}
    figures: dict[str, Any] = {"policy": "controller",
                               "weights": cfg.collect.controller_weights,
                               "epsilon": cfg.collect.controller_epsilon,
                               "first_episode": round_episodes(cfg, number).start}
    missing = [i for i in range(total) if i not in have]
    if missing and read_json(run.round(number).state, {}).get("controller_cleared"):
        raise InputError(f"{run.rollouts}: episode {missing[0]} of round {number} is missing, "
                         "but the round's C was already cleared to train anew, so the "
                         "last round's C cannot play it; restore the shard, or start the "
                         "round again (delete its iterations/round_<r>/ folder and put the "
                         "last round's controller/ back)")
    if not missing:
        return {"episodes_total": total, "episodes_new": 0, "steps_new": 0, "seconds": 0.0,
                "steps_per_second": 0.0, **figures}
    # this round's collection only: the run's config.yaml keeps the run's own settings
    round_cfg = dataclasses.replace(cfg, collect=dataclasses.replace(
        cfg.collect, episodes=total, policy=round_schedule(cfg)))
    return {**describe(collect(round_cfg, run, out_dir=run.rollouts)), **figures}


def memory_round(cfg: ExperimentConfig, run: RunDir, number: int) -> dict[str, Any]:
    """M trained on all the run's latents from the epoch it had when round ``number``
    began (the last round's ``epochs_done``) to ``run.iteration_memory_epochs`` more;
    its best is chosen among the round's own epochs."""
    start = int(_previous(run, number)["memory"]["epochs_done"])
    report = train_memory_checked(cfg, run, epochs=start + cfg.run.iteration_memory_epochs,
                                  select_after=start)
    return {**report_dict(report), "round_start_epoch": start}


def controller_round(cfg: ExperimentConfig, run: RunDir, number: int,
                     train: Callable[[ExperimentConfig, RunDir], dict[str, Any]],
                     ) -> dict[str, Any]:
    """C trained anew for round ``number``: the run's ``controller/`` files (the last
    round's, kept in its ``iterations/round_<r>/controller/``) are removed once, a mark
    in the round's state says so with the digest of the M it trains in, then ``train``
    runs (or resumes) as in round 1. A rerun whose M has changed since (more
    ``run.iteration_memory_epochs``) clears C again: it was trained in another dream."""
    files = run.round(number)
    state = read_json(files.state, {})
    memory = file_digest(run.memory.weights())
    cleared = state.get("controller_cleared")
    if cleared and "memory" not in state:  # (marked before the digest was recorded)
        state = {**state, "memory": memory}
        write_json_atomic(files.state, state)
    if not cleared or state["memory"] != memory:
        if not cleared:
            _previous(run, number)  # the last round kept its copy of these files
        else:
            print(f"{run.controller.dir}: round {number}'s C trained in another M's dream "
                  f"(M changed since: {state['memory']} -> {memory}); trained anew")
        for path in files_in(run.controller.dir, recursive=True):
            path.unlink()
        # the last round's scores (its copies are kept) would pass for this round's C's:
        # finalists and evaluate.py's other seed sets reuse their names round to round
        set_aside_evaluations(run, {p.name for p in files_in(run.eval_dir)
                                    if p.name.startswith("random")})
        files.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(files.state, {**state, "controller_cleared": True,
                                        "memory": memory})
    return {**train(cfg, run), "restarted": True}


def check_round_sizes(cfg: ExperimentConfig, run: RunDir) -> None:
    """Refuse a config whose round sizes (``collect.episodes``,
    ``run.iteration_episodes``) put a finished round's end elsewhere than the episodes
    it collected: later rounds would skip or mislabel episodes, and dream starts of an
    earlier round would take a later round's."""
    number = 1
    while (done := finished_round(run, number)) is not None:
        total = (done.get("collect") or {}).get("episodes_total")
        if isinstance(total, int) and total != round_total(cfg, number):
            raise ConfigError(
                f"{run.round(number).summary}: round {number} ended at {total} episodes, "
                f"but collect.episodes={cfg.collect.episodes} and run.iteration_episodes="
                f"{cfg.run.iteration_episodes} put its end at {round_total(cfg, number)}; "
                "give them as the run had them")
        number += 1


def set_aside_evaluations(run: RunDir, keep: set[str]) -> None:
    """Move the run's evaluations (JSON, CSV, GIF) not named in ``keep`` to
    ``eval/set_aside/``: they describe another round's agent (say evaluate.py on other
    seeds of the agent that was in place)."""
    for path in files_in(run.eval_dir, (".json", ".csv", ".gif")):
        if path.name not in keep:
            target = run.eval_dir / "set_aside" / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            path.replace(target)


def files_in(directory: Path, suffixes: tuple[str, ...] = (), recursive: bool = False,
           ) -> list[Path]:
    """The files in ``directory`` (and below it if ``recursive``: a controller's
    ``searches/``), optionally only those with one of ``suffixes``."""
    if not directory.is_dir():
        return []
    return sorted(p for p in (directory.rglob("*") if recursive else directory.iterdir())
                  if p.is_file() and (not suffixes or p.suffix in suffixes))


def keep_round(run: RunDir, number: int, figures: dict[str, Any]) -> None:
    """Copy what round ``number`` left in the run's ``memory/`` (its best weights and
    metrics), ``controller/`` and ``eval/`` (JSON and CSV) into
    ``iterations/round_<r>/``, then write the round's summary: the mark that it is
    finished (a kill before it only makes the rerun copy again)."""
    files = run.round(number)
    weights = run.memory.weights()
    copies = [(weights, files.memory.best), (run.memory.metrics, files.memory.metrics),
              (sidecar(weights), sidecar(files.memory.best))]  # the readable headers
    copies += [(p, files.controller.dir / p.relative_to(run.controller.dir))
               for p in files_in(run.controller.dir, recursive=True)]
    copies += [(p, files.eval_dir / p.name) for p in files_in(run.eval_dir, (".json", ".csv"))]
    copy_files(copies)
    write_json_atomic(files.summary, figures)


def copy_files(copies: list[tuple[Path, Path]]) -> None:
    """Copy each existing ``src`` to ``dst`` (made whole by an atomic write, its folder
    made as needed); a missing ``src`` (say an M without a header) is skipped."""
    for src, dst in copies:
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(dst, src.read_bytes())
