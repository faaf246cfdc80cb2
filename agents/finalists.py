"""A second selection stage: the finalists of a run's CMA-ES searches play more episodes.

Every periodic evaluation scores the best candidate so far and the search mean on the
run's ``select_episodes`` selection seeds, and the run's C is the highest of those means:
with a spread of hundreds per episode and a few dozen checkpoints, the highest mean is
optimistic and its checkpoint need not be the best (docs/experiments/takecover-solve.md).
With ``controller.final_candidates: K`` and ``controller.final_episodes: N`` the K
checkpoints with the highest selection means, across all of a run's searches, play the
next N seeds of the same selection stream (:func:`agents.seeds.selection_seeds` of
``select_episodes + N``, whose first ``select_episodes`` are the ones already played;
the stream avoids the report seeds), and the run's C is the finalist with the highest
mean over all ``select_episodes + N`` episodes.

* each finalist is rebuilt by replaying its search's CMA-ES history
  (:func:`agents.cmaes.replay_parameters`), so no checkpoint needs to have been saved;
  the rebuilt first-stage pick is checked against its search's saved ``selected``
  weights (within :data:`REPLAY_TOLERANCE`; not where a run of one search already holds
  a finalist there), and a pick its log does not rank first is refused;
* ``controller/final.json`` keeps every finalist's scores as they come, by the digest of
  its weights and of the seeds it played; a rerun (a new ranking after more generations,
  another K) plays only what it lacks;
* turned off again on a run of one search, the first stage's pick is put back;
* the winner becomes ``controller/selected.safetensors``; its meta gives the mean over all
  episodes as ``selection_mean``, ``selection_episodes = select_episodes + N`` (so a report
  on any of those seeds is refused), and under ``final`` the first stage's pick and every
  finalist.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.cmaes import ProcessEvaluator, replay_parameters, seeds_key, selection_meta
from agents.rollouts import describe_returns
from agents.seeds import search_seed, selection_seeds
from worldmodels.checkpoint import (
    file_digest,
    load_weights,
    read_header,
    read_json,
    save_model,
    sidecar,
    write_json_atomic,
)
from worldmodels.config import ConfigError, ExperimentConfig
from worldmodels.controller import FlatPolicy
from worldmodels.run_dir import ControllerFiles, RunDir, finalist_stem


@dataclass(frozen=True)
class Checkpoint:
    """One controller a periodic evaluation scored on the selection seeds."""

    search: int  # the search it comes from (0 for a run of one search)
    source: str  # "best" (the best candidate so far) or "mean" (the search mean)
    generation: int  # of its weights: the best candidate's own generation, or the mean's
    mean: float  # its first-stage selection mean
    std: float
    evaluated_at: int  # the generation of the evaluation that scored it

    @property
    def key(self) -> str:
        return f"{self.search}/{self.source}/{self.generation}"

    @property
    def stem(self) -> str:
        """Its file stem in ``controller/finalists/`` and in report files."""
        return finalist_stem(self.search, self.source, self.generation)


def finalists_of(meta: dict[str, Any], where: Path) -> list[Checkpoint]:
    """The finalists a selected controller's meta lists, first stage's ranking order."""
    final = meta.get("final")
    if not isinstance(final, dict) or not final.get("finalists"):
        raise ConfigError(f"{where}: this controller was not chosen by a second selection "
                          "stage (controller.final_candidates); there are no finalists")
    return [Checkpoint(int(f["search"]), str(f["source"]), int(f["generation"]),
                       float(f["first_stage"]["mean"]), float(f["first_stage"]["std"]), 0)
            for f in final["finalists"]]


def search_files(run: RunDir, restarts: int) -> list[ControllerFiles]:
    """The files of each of the run's searches (one search: ``controller/`` itself)."""
    files = run.controller
    return [files] if restarts == 1 else [files.search(k) for k in range(restarts)]


def ranked_checkpoints(run: RunDir, restarts: int, seeds: list[int]) -> list[Checkpoint]:
    """Every checkpoint scored on ``seeds`` by the run's searches, highest selection mean
    first; ties keep the order in which the searches met them (search, then generation),
    the order in which the first stage picks, so the first is the first stage's pick."""
    found: dict[tuple[int, str, int], Checkpoint] = {}
    key = seeds_key(seeds)
    for k, files in enumerate(search_files(run, restarts)):
        for entry in read_json(files.log, []):
            evaluation = entry.get("eval") or {}
            if evaluation.get("seeds") != key:
                continue
            for source in ("best", "mean"):
                score = evaluation[source]
                point = Checkpoint(k, source, int(score["generation"]), float(score["mean"]),
                                   float(score["std"]), int(entry["generation"]))
                found.setdefault((k, source, point.generation), point)
    return sorted(found.values(), key=lambda p: -p.mean)


def pooled(first: dict[str, float], n1: int, second: dict[str, Any]) -> dict[str, float]:
    """Mean and spread (population std) of ``n1`` episodes described by ``first`` and the
    episodes described by ``second`` (:func:`agents.rollouts.describe_returns`)."""
    n2 = int(second["episodes"])
    mean = (n1 * first["mean"] + n2 * second["mean"]) / (n1 + n2)
    square = (n1 * (first["std"] ** 2 + first["mean"] ** 2)
              + n2 * (second["std"] ** 2 + second["mean"] ** 2)) / (n1 + n2)
    return {"mean": float(mean), "std": float(np.sqrt(max(square - mean**2, 0.0)))}


def final_selection(cfg: ExperimentConfig, run: RunDir, seed: int, progress: bool = True,
                    ) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray]] | None:
    """Run (or resume) the second stage on the run's finished searches: the winner's
    meta and flat weights and every finalist's by file stem, first stage's order (None
    when the stage is off), for
    :func:`save_selected`.
    ``seed``: the run's ``seed``, both its selection seed and the CMA-ES seed its
    searches' seeds follow from (:func:`agents.searches.train_searches`)."""
    c = cfg.controller
    if not c.final_candidates:
        clear_finalists(run)
        return None
    files, n1, n2 = run.controller, c.selection_size, c.final_episodes
    first_seeds = selection_seeds(seed, n1)
    every = selection_seeds(seed, n1 + n2)
    if every[:n1] != first_seeds:  # the stream's prefixes: what makes the stages one set
        raise ConfigError(f"selection seeds of seed {seed}: the first {n1} of {n1 + n2} "
                          "differ from the first stage's (a rejected draw moved the "
                          "stream); give another controller.final_episodes")
    extra = every[n1:]
    points = ranked_checkpoints(run, c.restarts, first_seeds)[: c.final_candidates]
    if not points:
        raise ConfigError(f"{files.dir}: no controller was scored on the run's selection "
                          "seeds, so there are no finalists (controller.eval_every)")
    params = rebuild(cfg, run, points, seed)
    # scores kept by the weights and the seeds they played: a new ranking or K plays only
    # what is missing (a new N plays other seeds, so all again)
    played = seeds_key(extra)
    kept = read_json(files.final, {}).get("results", {})
    results: dict[str, Any] = {}
    evaluator = None
    for point in points:
        entry = {"seeds": played, "weights": weights_key(params[point.key])}
        old = kept.get(point.key)
        if isinstance(old, dict) and {k: old.get(k) for k in entry} == entry \
                and isinstance(old.get("score"), dict):
            results[point.key] = old
            continue
        if evaluator is None:
            evaluator = ProcessEvaluator(run, c.engine, c.workers, c.ray_address,
                                         batch=c.batch_envs)
        returns = evaluator.returns([params[point.key]], extra, whole_episodes=True)[0][0]
        results[point.key] = {**entry, "score": describe_returns(returns)}
        write_json_atomic(files.final, {"results": {**kept, **results}})
        if progress:
            print(f"final selection: search {point.search}, {point.source} of generation "
                  f"{point.generation}: {point.mean:.1f} on {n1} episodes, "
                  f"{returns.mean():.1f} on {n2} more")
    if evaluator is not None:
        evaluator.close()
    rows = [{"search": p.search, "source": p.source, "generation": p.generation,
             "first_stage": {"mean": p.mean, "std": p.std, "episodes": n1},
             "final": results[p.key]["score"],
             "overall": pooled({"mean": p.mean, "std": p.std}, n1, results[p.key]["score"])}
            for p in points]
    winner_row = max(rows, key=lambda row: row["overall"]["mean"])  # first on ties
    winner, first = points[rows.index(winner_row)], points[0]
    overall = {**winner_row["overall"], "generation": winner.generation,
               "episodes": n1 + n2}
    meta = {**selection_meta(overall, winner.source, seed, winner.evaluated_at),
            "search": winner.search,
            "final": {"candidates": c.final_candidates, "episodes": n2,
                      "stage1": selection_meta(
                          {**rows[0]["first_stage"], "generation": first.generation},
                          first.source, seed, first.evaluated_at),
                      "finalists": rows}}
    if progress:
        print(f"final selection: search {winner.search}, {winner.source} of generation "
              f"{winner.generation}, {meta['selection_mean']:.1f} over {n1 + n2} episodes "
              f"(first stage: search {first.search}, {first.source} of generation "
              f"{first.generation}, {first.mean:.1f} over {n1})")
    return meta, params[winner.key], {p.stem: params[p.key] for p in points}


def save_selected(cfg: ExperimentConfig, run: RunDir, meta: dict[str, Any],
                  params: np.ndarray, finalists: dict[str, np.ndarray] | None = None) -> None:
    """Write the second stage's finalists, if given (``controller/finalists/``, by
    their file stems), then its winner as the run's ``controller/selected.safetensors``:
    the last write, so a kill between them leaves the finalists refused against the old
    C (:meth:`worldmodels.run_dir.ControllerFiles.finalist_weights`) until a rerun."""
    if finalists is not None:
        save_finalists(cfg, run, meta["final"]["finalists"], finalists)
    controller = run.new_controller(cfg, run.action_space(), run.load_memory())
    controller.set_flat(torch.as_tensor(params))
    save_model(run.controller.selected, controller, meta=meta)


def clear_finalists(run: RunDir, keep: set[str] | None = None) -> None:
    """Remove the files of ``controller/finalists/`` whose names are not in ``keep``
    (all of them by default: the stage is off, so no finalists)."""
    folder = run.controller.finalists
    for old in folder.iterdir() if folder.is_dir() else ():
        if old.name not in (keep or set()):
            old.unlink()


def save_finalists(cfg: ExperimentConfig, run: RunDir, rows: list[dict[str, Any]],
                   params: dict[str, np.ndarray]) -> None:
    """Write every finalist's weights to ``controller/finalists/`` (``params`` by file
    stem, in the order of ``rows``, the stage's rows; meta: its row and its rank in the
    first stage's order), and remove the files of earlier finalists, so the folder
    holds this ranking's K."""
    folder = run.controller.finalists
    folder.mkdir(parents=True, exist_ok=True)
    controller = run.new_controller(cfg, run.action_space(), run.load_memory())
    keep = set()
    for rank, (row, (stem, flat)) in enumerate(zip(rows, params.items(), strict=True)):
        path = folder / f"{stem}.safetensors"
        controller.set_flat(torch.as_tensor(flat))
        save_model(path, controller, meta={**row, "rank": rank})
        keep.update({path.name, sidecar(path).name})
    clear_finalists(run, keep)


def rebuild(cfg: ExperimentConfig, run: RunDir, points: list[Checkpoint], seed: int
            ) -> dict[str, np.ndarray]:
    """Each checkpoint's weights (flat, float64) by replaying its search (``seed``: the
    run's CMA-ES seed, whose searches' seeds follow from it); the first stage's pick
    (``points[0]``) must match its search's saved ``selected`` weights."""
    controller = run.new_controller(cfg, run.action_space(), run.load_memory())
    dim = controller.num_parameters()
    out: dict[str, np.ndarray] = {}
    for k, files in enumerate(search_files(run, cfg.controller.restarts)):
        wanted = [(p.source, p.generation) for p in points if p.search == k]
        if not wanted:
            continue
        found = replay(cfg, run, files, dim, search_seed(seed, k), wanted)
        for p in points:
            if p.search == k:
                out[p.key] = found[p.source, p.generation]
    first = points[0]
    first_files = search_files(run, cfg.controller.restarts)[first.search]
    saved = first_files.selected
    meta = read_header(saved).get("meta", {}) if saved.exists() else {}
    if meta.get("final"):  # one search, the stage ran: the file holds the finalist
        return out
    picked = (meta.get("source"), meta.get("generation"), meta.get("selection_mean"))
    if picked != (first.source, first.generation, first.mean):
        raise ConfigError(f"{saved}: the first stage's pick ({picked[0]} of generation "
                          f"{picked[1]}, {picked[2]}) is not the top of its search's log "
                          f"{first_files.log} ({first.source} of generation "
                          f"{first.generation}, {first.mean}); the files disagree, so the "
                          "finalists cannot be trusted: train this C in a new run")
    load_weights(saved, controller)
    weights = controller.get_flat().double()
    gap = float((torch.as_tensor(out[first.key]) - weights).abs().max())
    if gap > REPLAY_TOLERANCE * max(1.0, float(weights.abs().max())):
        raise ConfigError(f"{saved}: replaying {first_files.history} does not give these "
                          f"weights (they differ by up to {gap:.3g}), so the finalists cannot "
                          "be rebuilt. Replay with the BLAS thread count the search ran with "
                          "(e.g. OMP_NUM_THREADS=1 for a run trained with one torch thread: "
                          "CMA-ES's eigendecomposition rounds differently under another, "
                          "and a long search can drift far from it), and the same cma")
    return out


#: how far (relative to the largest weight) a replayed controller may lie from the one
#: the search saved: bit for bit under the BLAS thread count it ran with, a float32 ulp
#: or so under another (OpenBLAS's threaded eigendecomposition rounds differently),
#: though a long search can drift much further (a population-64 search of 100
#: generations replayed with 2 threads instead of 1: 1.85, refused); another checkpoint
#: lies orders of magnitude further
REPLAY_TOLERANCE = 1e-6


def replay(cfg: ExperimentConfig, run: RunDir, files: ControllerFiles, dim: int, seed: int,
           wanted: list[tuple[str, int]]) -> dict[tuple[str, int], np.ndarray]:
    """:func:`agents.cmaes.replay_parameters` of one of ``run``'s searches, a missing
    history named with where to find it (a shipped agent keeps none: the run it was
    exported from)."""
    if not files.history.is_file():
        source = run.shipped_info().get("source_run") if run.is_shipped else None
        raise ConfigError(
            f"{files.history}: no such file, and the search's controllers are rebuilt "
            "from its CMA-ES history; " + (
                f"a shipped agent keeps none: give the run it was exported from "
                f"({source})" if source else "give the run that trained them"))
    return replay_parameters(cfg, files, dim, seed, wanted)


def weights_key(params: np.ndarray) -> str:
    """A short digest of flat weights as they are saved (float32)."""
    return hashlib.sha256(np.asarray(params, np.float32).tobytes()).hexdigest()[:16]


def restore_first_stage(cfg: ExperimentConfig, run: RunDir) -> dict[str, Any] | None:
    """A run of one search whose second stage was turned off: put its first stage's pick
    back in ``controller/selected.safetensors`` (rebuilt by replay); returns its meta, or
    None when the file holds a first-stage pick already."""
    files = run.controller
    meta = read_header(files.selected).get("meta", {}) if files.selected.exists() else {}
    if not meta.get("final"):
        return None
    stage1 = dict(meta["final"]["stage1"])
    controller = run.new_controller(cfg, run.action_space(), run.load_memory())
    key = (stage1["source"], int(stage1["generation"]))
    found = replay(cfg, run, files, controller.num_parameters(), cfg.seed, [key])
    save_selected(cfg, run, stage1, found[key])
    return stage1


def run_controllers(run: RunDir, template: FlatPolicy) -> list[tuple[str, np.ndarray]]:
    """(report file stem, flat weights) of each finalist of the run's second selection
    stage, or of its selected C when it has none (``template``: a controller of the run's
    kind, loaded in place). The stems are those of tools/score_finalists.py's and
    evaluate.py's report files: ``finalist_<search>_<source>_<generation>``,
    ``controller_selected``."""
    cfg = run.load_config()
    meta = dict(read_header(run.controller.selected).get("meta", {}))
    if not meta.get("final"):
        load_weights(run.controller.selected, template)
        return [("controller_selected", template.get_flat().numpy())]
    points = finalists_of(meta, run.controller.selected)
    params = rebuild(cfg, run, points, cfg.seed)
    return [(p.stem, params[p.key]) for p in points]


def distinct_runs(runs: list[RunDir]) -> list[RunDir]:
    """``runs`` (a tool's ``--runs``), refused if one is given twice (its controllers
    would count twice in a rank correlation)."""
    homes = [run.home.resolve() for run in runs]
    twice = next((h for h in homes if homes.count(h) > 1), None)
    if twice is not None:
        raise ConfigError(f"{twice}: given twice in --runs")
    return runs


def scored_controllers(runs: list[RunDir], template: FlatPolicy,
                       real_seeds: list[int] | None = None,
                       ) -> list[tuple[RunDir, str, np.ndarray, float | None]]:
    """(run, report file stem, flat weights, real report score or None) of every
    controller of ``runs`` (:func:`run_controllers`), the scores (:func:`report_score`)
    on ``real_seeds`` if given: all resolved before a tool plays, so a missing report
    file or a history that cannot be replayed is refused before any episode or dream is
    spent."""
    return [(run, name, params,
             None if real_seeds is None else report_score(run, name, real_seeds, params))
            for run in runs for name, params in run_controllers(run, template)]


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation of two score lists: the correlation of their ranks,
    tied values sharing their average rank; NaN when a list holds NaN or is constant."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"two lists of one length >= 2, got {len(x)} and {len(y)}")
    if np.isnan(x).any() or np.isnan(y).any() or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(_average_ranks(x), _average_ranks(y))[0, 1])


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of x (n,), ties given the mean of the ranks they span."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / np.bincount(inverse)[inverse]


def report_score(run: RunDir, name: str, seeds: list[int],
                 params: np.ndarray | None = None) -> float:
    """The mean return over the report files of ``name`` (from tools/score_finalists.py
    or evaluate.py) on the seed sets ``seeds``, pooled: ``eval/<name>.json`` for the
    run's own seed, ``eval/<name>_seed<s>.json`` for another. With ``params`` (the flat
    weights being scored), a file that says it scored other weights (an earlier round's
    C under the same name) is a :class:`ConfigError` naming it."""
    own = run.load_config().seed
    total, episodes = 0.0, 0
    for s in seeds:
        path = run.eval_dir / (f"{name}.json" if s == own else f"{name}_seed{s}.json")
        if not path.is_file():
            raise ConfigError(f"{path}: no real score of {name} on the report seeds of "
                              f"seed={s} (tools/score_finalists.py or evaluate.py first)")
        summary = read_json(path, {}, ("mean", "episodes"))
        if params is not None and not scored_these(run, name, summary, params):
            raise ConfigError(f"{path}: scores other weights than the {name} of "
                              f"{run.home} (an earlier C's); score it again "
                              "(tools/score_finalists.py or evaluate.py)")
        total += float(summary["mean"]) * int(summary["episodes"])
        episodes += int(summary["episodes"])
    return total / episodes


def scored_these(run: RunDir, name: str, summary: dict[str, Any], params: np.ndarray,
                 ) -> bool:
    """Whether a report file's ``summary`` scored the flat weights ``params``, as far as
    it tells: tools/score_finalists.py records their :func:`weights_key`, evaluate.py
    the digest of the controller file that played (``controller_<weights>``); a file
    recording neither cannot tell and passes."""
    recorded = summary.get("digests")
    if isinstance(recorded, dict) and isinstance(recorded.get("weights"), str):
        path = run.controller.dir / f"{name.removeprefix('controller_')}.safetensors"
        return path.is_file() and file_digest(path) == recorded["weights"]
    key = summary.get("weights")
    if isinstance(key, str) and len(key) == 16:
        return key == weights_key(params)
    return True


def world_model_key(run: RunDir) -> tuple[str, str]:
    """(V's digest, M's digest): runs with equal keys dream and see alike."""
    return file_digest(run.vae.model), file_digest(run.memory.model)


def tool_overrides(run: RunDir, overrides: list[str], allowed: tuple[str, ...],
                   described: str) -> tuple[list[str], int]:
    """The ``key=value`` overrides of a tool over several runs: (those starting with one
    of ``allowed``, the report seed set of ``seed=S``, default 0). Any other is refused,
    naming what applies (``described``)."""
    kept = [o for o in overrides if o.startswith(allowed)]
    seed_given = [o for o in overrides if o.startswith("seed=")]
    others = [o for o in overrides if o not in kept + seed_given]
    if others:
        raise ConfigError(f"only {described} apply here, not {others}")
    return kept, run.load_config(seed_given).seed if seed_given else 0
