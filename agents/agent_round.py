"""Which finished round of iterative training is the run's agent (``run.agent_round``).

After every round of ``run.py`` with ``run.iterations`` > 1, the run's ``memory/``,
``controller/`` and ``eval/`` hold the last round's files. With ``run.agent_round=best``
the agent is instead the round whose winning controller has the highest mean on the
selection episodes (:func:`best_round`; every round's winner plays the same selection
seeds, so the means compare; a tie goes to the later round, whose M saw more data).
:func:`settle_agent` then puts that round's kept files (``iterations/round_<k>/``) in
the run's places, so every script that reads a run (evaluate.py, dream.py,
``train_controller.py --world-model RUN``, tools/export_pretrained.py) takes that round:

* ``memory/best.safetensors``: round ``k``'s M (its last-epoch ``model.safetensors``,
  training state and metrics stay the last round's: a later round continues M from them);
* ``controller/``: round ``k``'s files, all of them;
* ``eval/``: round ``k``'s evaluations (JSON and CSV); the run's others, which describe
  another round's agent, go to ``eval/set_aside/``;
* ``dream_starts.npz``: the first latents of the training episodes round ``k``'s M saw,
  so a dream on the run starts as round ``k``'s controller training did.

``iterations/agent.json`` records the round in place. It is written before any file
moves (``complete: false``) and completed after, so a kill in between only makes the
next command move the files again. A round that starts later (``run.iterations``
raised) first puts the previous round back (:func:`put_back_previous`): rounds collect
with the last round's controller and continue its M, whatever the agent was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.iterations import (
    copy_files,
    files_in,
    finished_round,
    round_start_latents,
    round_total,
    set_aside_evaluations,
)
from worldmodels.checkpoint import read_json, sidecar, write_json_atomic
from worldmodels.config import ExperimentConfig
from worldmodels.errors import InputError
from worldmodels.run_dir import RunDir
from worldmodels.shards import list_shards, shard_index, write_npz_atomic


def selection_mean(figures: dict[str, Any], where: Path) -> float:
    """The mean return of a round's winning controller on the selection episodes
    (``controller.selected.selection_mean`` of its figures, read from ``where``)."""
    try:
        return float(figures["controller"]["selected"]["selection_mean"])
    except (KeyError, TypeError, ValueError):
        raise InputError(
            f"{where}: round {figures.get('round', '?')} has no selection mean "
            "(controller.selected.selection_mean); run.agent_round=best compares the "
            "rounds' controllers on the selection episodes (controller.eval_every > 0)"
        ) from None


def selection_of(figures: dict[str, Any]) -> tuple[Any, Any]:
    """The (selection seed, episodes) a round's winner was scored on (its figures)."""
    chosen = (figures.get("controller") or {}).get("selected") or {}
    return chosen.get("selection_seed"), chosen.get("selection_episodes")


def planned_selection(cfg: ExperimentConfig) -> tuple[int, int]:
    """The (selection seed, episodes) a round trained under ``cfg`` will be scored on:
    the run's seed, the first stage's episodes plus the second stage's, if any."""
    c = cfg.controller
    return cfg.seed, c.selection_size + (c.final_episodes if c.final_candidates else 0)


def _refuse_mixed(kinds: dict[str, tuple[Any, Any]], run: RunDir) -> None:
    """Refused when the rounds (by name) were, or will be, scored on different
    selection episodes: their winners' means do not compare."""
    if len(set(kinds.values())) > 1:
        raise InputError(
            f"{run.iterations_dir}: run.agent_round=best compares the rounds' winners on "
            "the same selection episodes, but they were scored on different ones (round: "
            "(seed, episodes) " + ", ".join(f"{k}: {v}" for k, v in kinds.items())
            + "). Finished rounds are not scored again: give every round the "
            "selection the finished ones had (controller.select_episodes, "
            "controller.final_candidates and controller.final_episodes; the solve preset "
            "added final_candidates=4 final_episodes=96 on 2026-12-05), or set "
            "run.agent_round=last")


def refuse_mixed_before(cfg: ExperimentConfig, run: RunDir) -> None:
    """Before any round of ``run.iterations`` trains, with ``run.agent_round=best``:
    refused when a finished round was scored on other selection episodes than the
    rounds still to come would be (:func:`planned_selection`), so the refusal comes
    before the new rounds' hours, not after (:func:`selection_means` would refuse them
    then)."""
    if cfg.run.agent_round != "best":
        return
    finished = {n: figures for n in range(1, cfg.run.iterations + 1)
                if (figures := finished_round(run, n)) is not None}
    if len(finished) < cfg.run.iterations:
        _refuse_mixed({**{str(n): selection_of(f) for n, f in finished.items()},
                       "to come": planned_selection(cfg)}, run)


def selection_means(rounds: list[dict[str, Any]], run: RunDir) -> dict[int, float]:
    """Each round's winner's selection mean, by round number; refused when the rounds'
    winners were scored on different selection episodes (a second selection stage,
    ``controller.final_episodes``, turned on or changed between rounds): such means do
    not compare."""
    _refuse_mixed({str(r["round"]): selection_of(r)
                   for r in sorted(rounds, key=lambda r: int(r["round"]))}, run)
    return {int(r["round"]): selection_mean(r, run.round(int(r["round"])).summary)
            for r in rounds}


def best_round(rounds: list[dict[str, Any]], run: RunDir) -> int:
    """The round (from 1) whose winner has the highest selection mean; the later round
    on a tie."""
    return _best(selection_means(rounds, run))


def _best(means: dict[int, float]) -> int:
    return max((mean, number) for number, mean in means.items())[1]


def latest_finished(run: RunDir) -> int:
    """The highest round with a kept summary (0 if none): the round whose files
    ``keep_round`` last left in the run's places."""
    numbers = [int(d.name.split("_", 1)[1]) for d in run.iterations_dir.glob("round_*")
               if d.name.split("_", 1)[1].isdigit() and (d / "summary.json").is_file()]
    return max(numbers, default=0)


def round_in_place(run: RunDir) -> int | None:
    """The round whose files the run's places hold: as ``iterations/agent.json`` says,
    else (no mark) the latest finished round; None if a move was cut short."""
    mark = read_json(run.agent_round_file, None)
    if not isinstance(mark, dict):
        return latest_finished(run)
    return int(mark["round"]) if mark.get("complete") else None


def started_after(cfg: ExperimentConfig, run: RunDir, latest: int) -> str | None:
    """What shows that a round after ``latest`` (the last finished one) has started, or
    None: its episodes, its kept-files directory, or M's epochs beyond ``latest``'s.
    The run's places then hold that round's unfinished work, which a move would lose."""
    later = [p for p in list_shards(run.rollouts) if shard_index(p) >= round_total(cfg, latest)]
    if later:
        return f"{later[0]} (an episode of round {latest + 1})"
    if run.round(latest + 1).dir.exists():
        return str(run.round(latest + 1).dir)
    metrics = read_json(run.memory.metrics, [])
    epochs = int(metrics[-1]["epoch"]) if metrics else 0
    done = int(read_json(run.round(latest).summary, {}).get("memory", {}).get("epochs_done", 0))
    if epochs > done:
        return f"{run.memory.metrics} ({epochs} epochs of M; round {latest} ended at {done})"
    return None


def move_in(cfg: ExperimentConfig, run: RunDir, number: int) -> None:
    """Put finished round ``number``'s kept M, C and evaluations in the run's places
    (see the module's docstring); the mark records it. Refused, with nothing moved, when
    a later round has started or the round's dream starts cannot be read."""
    kept = run.round(number)
    if not kept.summary.is_file():
        raise InputError(f"{kept.summary}: round {number} is not finished, so it cannot "
                         "be the run's agent")
    latest = latest_finished(run)
    started = started_after(cfg, run, latest)
    if started is not None:
        raise InputError(
            f"{started}: round {latest + 1} has started, and its unfinished work is in the "
            f"run's memory/ and controller/; finish it first (run.iterations={latest + 1}), "
            f"then choose the agent")
    starts = None if number == latest else round_start_latents(cfg, run, number)
    write_json_atomic(run.agent_round_file, {"round": number, "complete": False})
    copy_files([(kept.memory.best, run.memory.best),
                (sidecar(kept.memory.best), sidecar(run.memory.best))])
    for path in files_in(run.controller.dir, recursive=True):
        path.unlink()
    copy_files([(p, run.controller.dir / p.relative_to(kept.controller.dir))
                for p in files_in(kept.controller.dir, recursive=True)])
    evaluations = files_in(kept.eval_dir, (".json", ".csv"))
    set_aside_evaluations(run, {p.name for p in evaluations})
    copy_files([(p, run.eval_dir / p.name) for p in evaluations])
    if starts is None:
        run.dream_starts.unlink(missing_ok=True)  # the run's own episodes, as ever
        run.agent_round_file.unlink()  # no mark: the latest round in place
    else:
        write_npz_atomic(run.dream_starts, {"mu": starts[0].numpy(),
                                            "logvar": starts[1].numpy()})
        write_json_atomic(run.agent_round_file, {"round": number, "complete": True})


def put_back_previous(cfg: ExperimentConfig, run: RunDir, number: int) -> None:
    """Before round ``number`` (> 1) plays: the run's places hold round ``number - 1``
    (it collects with that round's C and continues its M)."""
    if number > 1 and run.agent_round_file.exists() and round_in_place(run) != number - 1:
        move_in(cfg, run, number - 1)


def settle_agent(cfg: ExperimentConfig, run: RunDir, rounds: list[dict[str, Any]],
                 ) -> dict[str, Any]:
    """Once every round is finished: the round ``run.agent_round`` picks, in the run's
    places; returns the choice's figures for the summary."""
    means = selection_means(rounds, run) if cfg.run.agent_round == "best" else None
    pick = _best(means) if means else int(rounds[-1]["round"])
    if round_in_place(run) != pick or started_after(cfg, run, latest_finished(run)):
        move_in(cfg, run, pick)  # (which refuses when a later round has started)
    figures: dict[str, Any] = {"rule": cfg.run.agent_round, "round": pick}
    if means:
        figures["selection_means"] = {str(n): m for n, m in means.items()}
    return figures
