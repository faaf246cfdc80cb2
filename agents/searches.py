"""Several CMA-ES searches for one controller (``controller.restarts`` > 1).

Where one CMA-ES run ends up depends on its seed: on TakeCover one of three runs on the
same V and M settled on a poor policy that later generations never left
(docs/experiments/takecover-solve.md). With ``controller.restarts: K`` a run trains K
searches from scratch and keeps the one whose selected controller has the highest mean on
the run's selection seeds:

* search 0 uses the run's ``seed``; search k > 0 a seed drawn from it
  (:func:`search_seed`). Each draws its own generations' env or dream seeds;
* every search is selected on the same selection seeds, the run's, so their selection
  means compare episode for episode, and a report must still avoid only those seeds;
* search k keeps its files in ``controller/searches/<k>/`` and resumes from them like any
  CMA-ES run; the searches run one after another, a finished one is only replayed;
* then the winner's ``selected``, ``best`` and ``mean`` weights, its ``generations.json``
  and ``fitness.png`` are copied into ``controller/``, so every script plays the winner
  unchanged, ``controller/searches.json`` lists every search and names the winner, and
  ``controller/searches.png`` draws every search's fitness and selection means.
  It is written last: a kill before it only makes the rerun copy again.
* with ``controller.final_candidates`` > 0 a second selection stage then picks among the
  searches' best checkpoints on more selection episodes (:mod:`agents.finalists`): the
  winner's search is the one copied, its finalist becomes ``controller/selected``, and
  ``searches.json`` also names the first stage's winner and lists the finalists.

``controller.restarts: 1`` (the default) is one search in ``controller/`` as ever. A run's
number of searches is fixed once it has CMA-ES files: a change is refused
(:func:`check_searches`), since it would mix two searches' files in ``controller/``; more
searches may be added (K to K + 1) to a run of several.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from agents.cmaes import CMAESReport, Evaluator, read_history_file, train_cmaes
from agents.finalists import final_selection, restore_first_stage, save_selected
from agents.seeds import search_seed
from worldmodels.atomic import write_bytes_atomic
from worldmodels.checkpoint import read_header, read_json, sidecar, write_json_atomic
from worldmodels.config import ConfigError, ExperimentConfig
from worldmodels.errors import InputError
from worldmodels.pictures import plot_curves
from worldmodels.run_dir import CONTROLLER_WEIGHTS, RunDir


def train_searches(cfg: ExperimentConfig, run: RunDir, progress: bool = True,
                   evaluator: Evaluator | None = None) -> CMAESReport:
    """Train (or resume) ``controller.restarts`` CMA-ES searches and keep the best on the
    run's selection seeds; one search is :func:`agents.cmaes.train_cmaes` itself
    (``evaluator``: its fitness, default the run's real env or dream)."""
    restarts, files = cfg.controller.restarts, run.controller
    check_searches(run, restarts)
    if restarts == 1:
        report = train_cmaes(cfg, run, evaluator, progress=progress)
        final = final_selection(cfg, run, cfg.seed, progress)
        if final is None:
            restored = restore_first_stage(cfg, run)  # the stage turned off
            return dataclasses.replace(report, selected=restored) if restored else report
        save_selected(cfg, run, *final)
        return dataclasses.replace(report, selected=final[0])
    for k in range(restarts):  # every search's history readable before any trains
        if files.search(k).history.exists():
            read_history_file(files.search(k).history)
    reports = []
    for k in range(restarts):
        if progress:
            print(f"CMA-ES search {k} (searches 0-{restarts - 1}), "
                  f"seed {search_seed(cfg.seed, k)}")
        reports.append(train_cmaes(cfg, run, evaluator, progress=progress,
                                   seed=search_seed(cfg.seed, k), selection_seed=cfg.seed,
                                   files=files.search(k),
                                   tensorboard=f"controller/search_{k}"))
    rows = [search_row(k, cfg.seed, report) for k, report in enumerate(reports)]
    unscored = [row["search"] for row in rows if row["selection_mean"] is None]
    if unscored:
        raise ConfigError(
            f"{files.search(unscored[0]).dir}: this search has no controller selected on "
            "the run's selection seeds (its selected file is missing, or "
            "controller.select_episodes changed since it ran), so the searches cannot be "
            "compared; delete that directory to run the search again")
    first_winner = max(rows, key=lambda row: row["selection_mean"])["search"]
    final = final_selection(cfg, run, cfg.seed, progress)
    if final and final[0]["final"]["finalists"][0]["search"] != first_winner:
        raise ConfigError(f"{files.searches}: the second stage's ranking does not start "
                          f"at the first stage's winner (search {first_winner}); the "
                          "searches' logs and selected files disagree")
    winner = final[0]["search"] if final else first_winner
    selected = keep_winner(run, winner)
    summary: dict[str, Any] = {"winner": winner, "searches": rows}
    if final:  # the finalist replaces its search's selected weights
        save_selected(cfg, run, *final)
        selected = final[0]
        summary.update(first_stage_winner=first_winner, final=final[0]["final"])
    plot_searches(run, rows, winner)
    write_json_atomic(files.searches, summary)
    report = reports[winner]
    return dataclasses.replace(report, selected=selected, searches=rows, search=winner,
                               seconds=sum(r.seconds for r in reports))


def check_searches(run: RunDir, restarts: int) -> None:
    """Refuse a change in the number of searches of a run that has CMA-ES files: one
    search and several keep their files in different places, and the winner's are copied
    over the run's, so a change would mix two searches' files. (A new C on the same V
    and M: ``train_controller.py --world-model RUN --run NEW``.)"""
    files = run.controller
    found = sorted(int(d.name) for d in (files.dir / "searches").glob("*")
                   if d.name.isdigit() and d.is_dir())
    new_run = "use a new run (train_controller.py --world-model RUN --run NEW)"
    if restarts == 1 and found:
        raise ConfigError(f"{files.dir / 'searches'}: this run's C comes from several CMA-ES "
                          f"searches; set controller.restarts to their number (at least "
                          f"{max(2, found[-1] + 1)}), or {new_run}")
    if restarts > 1 and files.history.exists():
        raise ConfigError(f"{files.history}: this run trained one CMA-ES search; several "
                          f"would mix their files with it: {new_run}")
    if found and found[-1] >= restarts:
        raise ConfigError(f"{files.search(found[-1]).dir}: a search beyond "
                          f"controller.restarts={restarts}; set controller.restarts="
                          f"{found[-1] + 1}, or {new_run}")


def search_row(k: int, seed: int, report: CMAESReport) -> dict[str, Any]:
    """One search's figures for ``searches.json`` and the run's summary."""
    chosen = report.selected or {}
    return {"search": k, "seed": search_seed(seed, k), "generations": report.generations,
            "best_fitness": report.best_fitness,
            "selection_mean": chosen.get("selection_mean"),
            "selected": {key: chosen.get(key) for key in ("source", "generation")}}


def plot_searches(run: RunDir, rows: list[dict[str, Any]], winner: int) -> None:
    """``controller/searches.png``: every search's mean fitness by generation, and its
    selection means (real episodes) at the periodic evaluations."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    styles: dict[str, dict[str, Any]] = {}
    for row in rows:
        k, log = row["search"], read_json(run.controller.search(row["search"]).log, [])
        tag = f"search {k}" + (" (kept)" if k == winner else "")
        fitness, chosen = f"{tag}: mean fitness", f"{tag}: selected, selection mean"
        series[fitness] = ([g["generation"] for g in log], [g["mean"] for g in log])
        picked = [(g["generation"], g["selected"]["selection_mean"]) for g in log
                  if g.get("selected")]
        series[chosen] = ([g for g, _ in picked], [m for _, m in picked])
        color = f"C{k % 10}"  # one colour a search: its fitness line, its selections
        styles[fitness] = {"color": color, "marker": None,
                           "linewidth": 2.2 if k == winner else 1.0}
        styles[chosen] = {"color": color, "linestyle": ":", "marker": "s", "markersize": 5}
    plot_curves(run.controller.dir / "searches.png", series,
                f"{len(rows)} CMA-ES searches (selection on the run's seeds)", "generation",
                "return", styles=styles)


def keep_winner(run: RunDir, k: int) -> dict[str, Any]:
    """Copy search ``k``'s controller into the run's ``controller/``: its weights (with
    their readable headers), log and plot; returns the selected controller's meta."""
    source, target = run.controller.search(k), run.controller
    pairs = [(source.log, target.log), (source.fitness_plot, target.fitness_plot)]
    for name in CONTROLLER_WEIGHTS:
        src, dst = source.weights(name), target.weights(name)
        pairs += [(src, dst), (sidecar(src), sidecar(dst))]
    missing = [src for src, _ in pairs if not src.is_file()]
    if missing:
        raise InputError(f"{missing[0]}: missing, so search {k}'s controller cannot be kept "
                         f"(delete {source.dir} to train that search again)")
    for src, dst in pairs:
        write_bytes_atomic(dst, src.read_bytes())
    return dict(read_header(target.selected)["meta"])

