"""The population experiment (issue 20): does C trained by CMA-ES in an FRMDN's dream
score better in the real env than in an RMDN's dream, at smaller populations?

One fixed dream data set: the run's V, its latent episodes (the training split of the
run's ``seed``: every dream starts from the same episodes) and, for each M variant, the
M that ``compare_memory.py`` trained with seed ``memory_seed`` into
``memory_compare/<variant>__s<memory_seed>/`` (trained here if absent). For every
(variant, population, seed) one CMA-ES run in that M's dream, in its own directory
``controller_compare/<variant>/p<population>_s<seed>/`` seen through a
:class:`worldmodels.run_dir.RunView` (the base run's V and latents, the variant's M, the
run's own config, controller and evaluations: no file copied or linked).

Budget: every run plays the same ``dream_episodes`` dream episodes, so a run of
population P and R rollouts per candidate runs ``dream_episodes / (P x R)``
generations (refused unless that divides exactly). Selection (see
:mod:`agents.cmaes`): every ``eval_every`` generations (or ``selections`` times a run,
evenly spaced in its budget) the best candidate and the search mean play the run's
fixed selection seeds in the real env; ``selected`` keeps the better. Those real
episodes are counted per run. The reported score of a run is its ``selected``
controller's mean return over ``report_episodes`` real episodes on the report seeds
(:func:`agents.seeds.evaluation_seeds` of ``report_seed``: the same for every run, and
checked disjoint from every run's selection seeds). ``controller.target_return`` is
off: every run spends its whole budget.

Resuming: a run whose ``result.json`` matches its settings (and whose ``selected``
weights are those it scored) is read, not run; otherwise CMA-ES resumes from its
history (:func:`agents.cmaes.train_cmaes`; none of it replayed when it is complete) and
the report evaluation is reused when the same weights played the same seeds.
:func:`write_results` writes ``results.json``, ``results.md`` and ``population.png``.
"""

from __future__ import annotations

import contextlib
import fcntl
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from agents.cmaes import controller_architecture, seeds_key, train_cmaes
from agents.evaluation import evaluate, other_seed, result_name
from agents.rollouts import play_settings
from agents.seeds import evaluation_seeds, selection_seeds
from envs.dream_env import ensemble_settings
from worldmodels.checkpoint import file_digest, read_json, write_json_atomic, write_text_atomic
from worldmodels.config import MIN_POPULATION, ConfigError, ExperimentConfig, merge_into, validate
from worldmodels.memory_compare import VARIANTS, compare, variant_config
from worldmodels.pictures import plot_errorbars, plot_points
from worldmodels.run_dir import MemoryFiles, RunDir, RunView
from worldmodels.shards import ShardError, read_npz

#: config keys the experiment's command line may change for the CMA-ES runs (prefixes);
#: the rest (V, M, data, seed) are the base run's
OPEN_KEYS = ("controller.", "dream.", "device")


@dataclass(frozen=True)
class Plan:
    """What the experiment runs: every (variant, population, seed), each on the same
    ``dream_episodes`` dream episodes, its ``selected`` C scored on ``report_episodes``
    real episodes of ``report_seed``'s report seeds. ``eval_every`` 0: the config's
    ``controller.eval_every``; ``selections`` > 0 instead selects that many times a
    run, every ``generations // selections`` generations. ``shard`` of ``shards``: this
    process runs every ``shards``-th job of :func:`jobs_of` from the ``shard``-th, so that
    ``shards`` processes share the plan (each one's results cover every finished run)."""

    variants: tuple[str, ...]
    populations: tuple[int, ...]
    seeds: tuple[int, ...]
    dream_episodes: int
    memory_seed: int = 0
    eval_every: int = 0
    selections: int = 0
    report_episodes: int = 100
    report_seed: int = 0
    shard: int = 0
    shards: int = 1


def generations_for(dream_episodes: int, population: int, rollouts: int) -> int:
    """Generations of a run that plays ``dream_episodes`` dream episodes:
    ``dream_episodes / (population x rollouts)``, refused unless it divides exactly."""
    per_generation = population * rollouts
    if dream_episodes < per_generation or dream_episodes % per_generation:
        raise ConfigError(
            f"--dream-episodes {dream_episodes} is not a positive multiple of population "
            f"{population} x rollouts {rollouts} = {per_generation}: every run must play the "
            "same dream episodes (give a multiple of the largest population x rollouts)")
    return dream_episodes // per_generation


def selection_interval(plan: Plan, generations: int, eval_every: int) -> int:
    """Generations between selections of a run of ``generations`` generations: the
    plan's ``selections`` spread evenly, else ``plan.eval_every``, else the config's
    ``eval_every``; refused if the run would never select."""
    every = generations // plan.selections if plan.selections else plan.eval_every or eval_every
    if plan.selections > generations:
        raise ConfigError(f"{plan.selections} selections asked, but a run has only "
                          f"{generations} generations")
    if plan.selections and generations % plan.selections:
        # every `every`-th generation would select more often than asked (24 // 5 = 4:
        # 6 selections), so the populations would not play the same selection episodes
        raise ConfigError(f"--selections {plan.selections} does not divide a run's "
                          f"{generations} generations: give a divisor, or a dream-episode "
                          "budget whose generations it divides")
    if not 1 <= every <= generations:
        raise ConfigError(f"selection every {every} generations: a run of {generations} "
                          "generations would never select a controller; lower "
                          "controller.eval_every or give --selections")
    return every


def run_config(cfg: ExperimentConfig, variant: str, population: int, generations: int,
               eval_every: int) -> ExperimentConfig:
    """One CMA-ES run's config: ``cfg`` with variant's ``memory.*`` (as its M was
    trained), CMA-ES in the dream at ``population`` for ``generations`` generations,
    selection every ``eval_every``, no early stop."""
    out = variant_config(cfg, variant)
    merge_into(out, {"controller": {
        "algo": "cmaes", "environment": "dream", "population": population,
        "generations": generations, "eval_every": eval_every, "target_return": 0.0,
    }}, "population experiment")
    validate(out)
    return out


def check_open_keys(run: RunDir, cfg: ExperimentConfig) -> None:
    """Refuse a command line that changes more than the CMA-ES runs' keys
    (:data:`OPEN_KEYS`): V, M, the data and its split are the base run's."""
    fixed = [k for k in run.changed_keys(cfg) if not k.startswith(OPEN_KEYS)]
    if fixed:
        raise ConfigError(f"the population experiment takes V, M and the data from "
                          f"{run.path}: '{fixed[0]}' cannot change here (only "
                          f"{', '.join(k + '*' if k.endswith('.') else k for k in OPEN_KEYS)})")


def view_of(run: RunDir, plan: Plan, variant: str, population: int, seed: int) -> RunView:
    """The CMA-ES run's view: the base run with variant's M and its own home."""
    return RunView(run, run.controller_compare.run_home(variant, population, seed),
                   run.memory_variant(variant, plan.memory_seed))


def run_key(cfg: ExperimentConfig, view: RunView, variant: str, seed: int,
            plan: Plan) -> dict[str, Any]:
    """What a finished run's result depends on: a rerun with another key runs again."""
    c = cfg.controller
    return {"variant": variant, "memory_seed": plan.memory_seed,
            "memory_digest": file_digest(view.memory.weights()),
            "population": c.population, "rollouts": c.rollouts, "generations": c.generations,
            "sigma0": c.sigma0, "seed": seed, "eval_every": c.eval_every,
            "select_episodes": c.selection_size,
            "max_episode_steps": c.max_episode_steps, "stall_steps": c.stall_steps,
            "dream": {"temperature": cfg.dream.temperature, "done": cfg.dream.done,
                      "done_threshold": cfg.dream.done_threshold,
                      "max_steps": cfg.dream.max_steps,
                      # (only when set: keys written before the ensemble stay valid)
                      **({"ensemble": ensemble_settings(cfg)} if cfg.dream.ensemble else {})},
            "report_episodes": plan.report_episodes, "report_seed": plan.report_seed,
            **_precision(cfg), **_architecture(cfg, RunDir(view.path).load_config())}


def _architecture(cfg: ExperimentConfig, base: ExperimentConfig) -> dict[str, Any]:
    """The controller's architecture and ``clip_dims`` where the experiment's command
    line makes them differ from the base run's (so that keys written before they were
    recorded stay valid): a rerun with another controller must not reuse the finished
    rows of this one."""
    ours, theirs = controller_architecture(cfg), controller_architecture(base)
    changed = {k: v for k, v in ours.items() if v != theirs[k]}
    if sorted(set(cfg.controller.clip_dims)) != sorted(set(base.controller.clip_dims)):
        changed["clip_dims"] = sorted(set(cfg.controller.clip_dims))
    return {"controller": changed} if changed else {}


def _precision(cfg: ExperimentConfig) -> dict[str, Any]:
    """``controller.agent_precision`` where it is not the default float32 (so that keys
    written before it was recorded stay valid): the real episodes play in it."""
    precision = cfg.controller.agent_precision
    return {} if precision == "float32" else {"agent_precision": precision}


#: run_key entries a CMA-ES history does not depend on: a larger budget continues it,
#: and the report is played after it
AFTER_HISTORY = frozenset({"generations", "report_episodes", "report_seed"})


def _history_changes(before: dict[str, Any], key: dict[str, Any]) -> list[str]:
    """The run_key entries, other than :data:`AFTER_HISTORY`, that differ."""
    return sorted(k for k in (set(before) | set(key)) - AFTER_HISTORY
                  if before.get(k) != key.get(k))


def history_length(view: RunView) -> int:
    """Generations the run's CMA-ES history holds (0: none yet)."""
    path = view.controller.history
    if not path.exists():
        return 0
    try:
        return int(read_npz(path, ("fitness",))["fitness"].shape[0])
    except ShardError:
        return 0  # unreadable: train_cmaes says so


def cmaes_seconds(log: list[dict[str, Any]]) -> float:
    """CMA-ES wall time over every session of a run, from ``generations.json``: each
    entry's ``seconds`` counts from its session's start, and its ``session`` (the
    session's first generation) marks a resume; in entries written before it was
    recorded, a drop in ``seconds`` does (missing a resume whose first generation took
    longer than the session before)."""
    total, last, session = 0.0, 0.0, None
    for entry in log:
        now = entry.get("session")
        resumed = now != session if now is not None and session is not None \
            else entry["seconds"] < last
        if resumed:
            total += last
        last, session = entry["seconds"], now
    return total + last


def selection_episodes_played(log: list[dict[str, Any]]) -> tuple[int, int]:
    """(selections, real episodes they played): each plays the search mean, and the best
    candidate unless the same weights already played the same seeds (then reused, see
    :func:`agents.cmaes.evaluate_for_selection`)."""
    seen: set[tuple[str, str]] = set()
    selections = episodes = 0
    for entry in log:
        ev = entry.get("eval")
        if not ev or "best" not in ev:
            continue
        selections += 1
        episodes += ev["episodes"]
        key = (ev["best"].get("digest", ""), ev.get("seeds", ""))
        if key not in seen:
            episodes += ev["episodes"]
            seen.add(key)
    return selections, episodes


def report(view: RunView, cfg: ExperimentConfig, plan: Plan, progress: bool = False,
           ) -> dict[str, Any]:
    """The run's ``selected`` C on the report seeds (``report_episodes`` real episodes):
    reused from ``eval/controller_selected.json`` when the same weights played the same
    seeds, else played (``controller.engine`` and ``workers``)."""
    seeds = evaluation_seeds(plan.report_seed, plan.report_episodes)
    key = {"weights": file_digest(view.controller.selected), "seeds": seeds_key(seeds),
           "episodes": plan.report_episodes, "report_seed": plan.report_seed, **_precision(cfg)}
    name = result_name("controller", "selected", seed=other_seed(view, plan.report_seed))
    cached = read_json(view.eval_dir / f"{name}.json", {})
    if cached.get("key") == key:
        return {**cached, "cached": True}
    c = cfg.controller
    summary = evaluate(view, episodes=plan.report_episodes, policy="controller",
                       seed=plan.report_seed, engine=c.engine, workers=c.workers,
                       ray_address=c.ray_address, progress=progress, key=key,
                       weights="selected")
    return {**summary, "cached": False}


def _prepare(run: RunDir, cfg: ExperimentConfig, plan: Plan, variant: str, population: int,
             seed: int) -> tuple[ExperimentConfig, RunView, dict[str, Any], int, int]:
    """One run's config, view, settings key, generations and selection interval."""
    generations = generations_for(plan.dream_episodes, population, cfg.controller.rollouts)
    every = selection_interval(plan, generations, cfg.controller.eval_every)
    rcfg = run_config(cfg, variant, population, generations, every)
    view = view_of(run, plan, variant, population, seed)
    if not view.memory.weights().exists():
        raise ConfigError(f"{view.memory.dir}: no trained M '{variant}'")
    return rcfg, view, run_key(rcfg, view, variant, seed, plan), generations, every


def _finished(view: RunView, key: dict[str, Any], rcfg: ExperimentConfig,
              ) -> dict[str, Any] | None:
    """The run's kept row if it finished with these settings and these weights, and its
    own config.yaml (what it trained and played with) has ``rcfg``'s controller and env:
    the key records the architecture only where it differs from the base run's, which a
    later command may have changed, and no env.* at all."""
    old = read_json(view.result_file, {})
    selected = view.controller.selected
    if not (old.get("key") == key and selected.exists()
            and old.get("selected_digest") == file_digest(selected)
            and view.config_file.is_file()):
        return None
    trained = view.load_config()
    same = (controller_architecture(trained) == controller_architecture(rcfg)
            and sorted(set(trained.controller.clip_dims)) == sorted(set(rcfg.controller.clip_dims))
            and play_settings(trained) == play_settings(rcfg))
    return old if same else None


def finished_row(run: RunDir, cfg: ExperimentConfig, plan: Plan, variant: str,
                 population: int, seed: int) -> dict[str, Any] | None:
    """The row of a run that finished with the plan's settings (None if it has not)."""
    rcfg, view, key, _, _ = _prepare(run, cfg, plan, variant, population, seed)
    return _finished(view, key, rcfg)


def one_run(run: RunDir, cfg: ExperimentConfig, plan: Plan, variant: str, population: int,
            seed: int, progress: bool = False) -> dict[str, Any]:
    """One (variant, population, seed): the CMA-ES run (resumed, or skipped when done) and
    its report evaluation (cached); returns its row, also kept in its ``result.json``."""
    rollouts = cfg.controller.rollouts
    rcfg, view, key, generations, every = _prepare(run, cfg, plan, variant, population, seed)
    files = view.controller
    if (old := _finished(view, key, rcfg)) is not None:
        return old  # finished with these settings: nothing to run
    done = history_length(view)
    if done > generations:
        raise ConfigError(f"{files.history}: {done} generations, more than the {generations} "
                          "this budget gives; delete the run's directory to run it again")
    started = view.home / "started.json"  # the settings its CMA-ES history was made with
    if not done:
        write_json_atomic(started, key)
    elif (before := read_json(started, None)) is None:
        raise ConfigError(f"{files.history}: {started} is missing, so the settings of this "
                          f"CMA-ES history are unknown; delete {view.home} to run it again")
    elif changed := _history_changes(before, key):
        raise ConfigError(f"{files.history}: this CMA-ES history was made with other "
                          f"settings ({', '.join(changed)}), e.g. another M; it cannot be "
                          f"resumed with these; delete {view.home} to run it again")
    if done < generations or not files.selected.exists():
        train_cmaes(rcfg, view, progress=progress, seed=seed)
    if not files.selected.exists():
        raise ConfigError(f"{files.dir}: CMA-ES selected no controller (selection every "
                          f"{every} of {generations} generations)")
    summary = report(view, rcfg, plan, progress=progress)
    log = read_json(files.log, [])
    selections, select_played = selection_episodes_played(log)
    selected = next((e["selected"] for e in reversed(log) if e.get("selected")), {})
    c = rcfg.controller
    train_seconds = cmaes_seconds(log)
    eval_seconds = float(summary.get("seconds", 0.0))
    row = {
        "variant": variant, "memory_seed": plan.memory_seed, "population": population,
        "seed": seed, "rollouts": rollouts, "generations": len(log),
        "dream_episodes": len(log) * population * rollouts,
        "eval_every": every, "select_episodes": c.selection_size,
        "selections": selections, "selection_real_episodes": select_played,
        "selected_source": selected.get("source"),
        "selected_generation": selected.get("generation"),
        "selection_mean": selected.get("selection_mean"),
        "report_mean": summary["mean"], "report_std": summary["std"],
        "report_min": summary["min"], "report_max": summary["max"],
        "report_episodes": summary["episodes"], "report_seed": plan.report_seed,
        "final_dream_best": log[-1]["best"], "final_dream_mean": log[-1]["mean"],
        "cmaes_seconds": train_seconds, "report_seconds": eval_seconds,
        "wall_seconds": train_seconds + eval_seconds,
        "memory_dir": str(view.memory.dir), "dir": str(view.home),
        "selected_digest": file_digest(files.selected), "key": key,
    }
    write_json_atomic(view.result_file, row)
    return row


def check_plan(run: RunDir, cfg: ExperimentConfig, plan: Plan) -> None:
    """Refuse a bad plan before any work: unknown variants, a budget that does not
    divide, a run that would never select, report seeds that meet selection seeds."""
    if not plan.variants or not plan.populations or not plan.seeds:
        raise ConfigError("give at least one variant, one population and one seed")
    for name in plan.variants:
        if name not in VARIANTS:
            raise ConfigError(f"unknown variant '{name}' (known: {', '.join(VARIANTS)})")
    runs = len(plan.variants) * len(plan.populations) * len(plan.seeds)
    if not 0 <= plan.shard < plan.shards <= runs:
        raise ConfigError(f"shard {plan.shard} of {plan.shards}: give 0 <= shard < shards "
                          f"<= the plan's {runs} runs")
    if min(plan.populations) < MIN_POPULATION:
        raise ConfigError(f"CMA-ES populations must be >= {MIN_POPULATION} "
                          f"(controller.population), not {min(plan.populations)}")
    if plan.report_episodes < 1:
        raise ConfigError(f"--report-episodes must be >= 1, not {plan.report_episodes}")
    c = cfg.controller
    if c.restarts != 1:
        raise ConfigError("config key 'controller.restarts': the population experiment runs "
                          "one CMA-ES search per (M, population, seed); leave it at 1")
    if c.final_candidates:
        raise ConfigError("config key 'controller.final_candidates': the population "
                          "experiment scores each search's own selected controller; leave "
                          "it at 0")
    generations = [generations_for(plan.dream_episodes, p, c.rollouts)
                   for p in plan.populations]  # every budget first, then every selection
    for gens in generations:
        selection_interval(plan, gens, c.eval_every)
    report_seeds = set(evaluation_seeds(plan.report_seed, plan.report_episodes))
    for seed in plan.seeds:
        if report_seeds & set(selection_seeds(seed, c.selection_size)):
            raise ConfigError(f"seed {seed}'s selection seeds meet the report seeds of "
                              f"--report-seed {plan.report_seed}: pick another report seed")


def jobs_of(plan: Plan) -> list[tuple[str, int, int]]:
    """Every (variant, population, seed) of ``plan`` in the order they run: seed by seed,
    population by population, every M at each, so that the runs finished at any point
    cover the Ms equally (a stopped experiment still compares them)."""
    return [(v, p, s) for s in plan.seeds for p in plan.populations for v in plan.variants]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if absent): shards of one plan train
    each M once, one after the other, never two at once into the same files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _claimed(path: Path) -> Iterator[bool]:
    """Try to take an exclusive lock on ``path`` (created if absent) without waiting:
    True while held, False if another process holds it (that process runs the job)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def job_lock(run: RunDir, variant: str, population: int, seed: int) -> Path:
    """The lock file a process holds while it runs this job (beside the run's home)."""
    home = run.controller_compare.run_home(variant, population, seed)
    return home.parent / f".{home.name}.lock"


def population_experiment(cfg: ExperimentConfig, run: RunDir, plan: Plan,
                          progress: bool = True, report_only: bool = False,
                          ) -> list[dict[str, Any]]:
    """Every run of ``plan`` (see the module's docstring) of this process's shard, in
    :func:`jobs_of`'s order, resumed or skipped; a run another process is running (its
    :func:`job_lock` held) is left to it, so several processes of one shard share its
    runs, each taking the next free one; each M first trained, or its training
    finished (an M killed mid-way is not used half-trained), in ``memory_compare``.
    ``cfg``: the base run's config with the CMA-ES runs' keys (:data:`OPEN_KEYS`)
    changed. Returns the rows of every finished run of the plan, this shard's and the
    others', in :func:`jobs_of`'s order. ``report_only``: train and run nothing, only
    gather the finished runs' rows (an experiment still running elsewhere)."""
    run.refuse_shipped()
    check_open_keys(run, cfg)
    check_plan(run, cfg, plan)
    jobs = jobs_of(plan)
    if report_only:
        trained = [v for v in plan.variants
                   if MemoryFiles.at(run.memory_variant(v, plan.memory_seed)).weights().exists()]
        return [row for job in jobs if job[0] in trained
                and (row := finished_row(run, cfg, plan, *job)) is not None]
    base = run.load_config()
    for variant in plan.variants:  # resumes an unfinished M; a finished one is only read
        where = run.memory_variant(variant, plan.memory_seed)
        with _locked(where.parent / f".{where.name}.lock"):
            compare(base, run, [variant], [plan.memory_seed], progress=progress)
    mine = jobs[plan.shard::plan.shards]
    rows: dict[tuple[str, int, int], dict[str, Any]] = {}
    bar = tqdm(mine, desc="population runs", unit="run", disable=not progress)
    for variant, population, seed in bar:
        bar.set_postfix_str(f"{variant} p{population} s{seed}")
        with _claimed(job_lock(run, variant, population, seed)) as ours:
            if ours:  # else another process of the same shard runs it: go on
                rows[variant, population, seed] = one_run(run, cfg, plan, variant,
                                                          population, seed, progress=progress)
    for job in jobs:  # the other shards' runs that have finished
        if job not in rows and (row := finished_row(run, cfg, plan, *job)) is not None:
            rows[job] = row
    return [rows[job] for job in jobs if job in rows]


def spread(values: list[float]) -> dict[str, float]:
    """Median, min, max and the quartiles (inclusive method; one value: all equal)."""
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") \
        if len(values) > 1 else (values[0],) * 3
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "q1": q1, "q3": q3}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: the settings, one line per (M, population) over seeds, then every run."""
    first = rows[0]
    lines = [
        f"Every run: {first['dream_episodes']} dream episodes (generations x population x "
        f"{first['rollouts']} rollouts); selection every `eval_every` generations on "
        f"{first['select_episodes']} real episodes (the best candidate and the search "
        f"mean, so up to 2 x {first['select_episodes']} real episodes each time: counted "
        f"below); score: the selected C's mean return over {first['report_episodes']} real "
        f"episodes (report seed {first['report_seed']}, the same for every run).", "",
        "| M | population | generations | seeds | real score: median | min – max | IQR "
        "| per seed | selection real episodes / run | wall time / run (median) |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        for population in sorted({r["population"] for r in rows if r["variant"] == variant}):
            rs = sorted((r for r in rows if (r["variant"], r["population"])
                         == (variant, population)), key=lambda r: r["seed"])
            s = spread([r["report_mean"] for r in rs])
            wall = statistics.median(r["wall_seconds"] for r in rs)
            lines.append(
                f"| {variant} | {population} | {rs[0]['generations']} | {len(rs)} "
                f"| {s['median']:.1f} | {s['min']:.1f} – {s['max']:.1f} "
                f"| {s['q1']:.1f} – {s['q3']:.1f} "
                f"| {', '.join(format(r['report_mean'], '.1f') for r in rs)} "
                f"| {statistics.median(r['selection_real_episodes'] for r in rs):g} "
                f"| {_duration(wall)} |")
    lines += ["", "| M | population | seed | generations | eval every | selected (source, "
              "generation, selection mean) | real score (mean ± std) | dream fitness at the "
              "end (best / mean) | selection real episodes | CMA-ES time | report time |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['population']} | {r['seed']} | {r['generations']} "
            f"| {r['eval_every']} | {r['selected_source']}, {r['selected_generation']}, "
            f"{r['selection_mean']:.1f} | {r['report_mean']:.1f} ± {r['report_std']:.1f} "
            f"| {r['final_dream_best']:.1f} / {r['final_dream_mean']:.1f} "
            f"| {r['selection_real_episodes']} | {_duration(r['cmaes_seconds'])} "
            f"| {_duration(r['report_seconds'])} |")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def write_results(run: RunDir, rows: list[dict[str, Any]]) -> str:
    """``controller_compare/results.json`` (every run's row), ``results.md`` (the table,
    returned), ``population.png`` (real score against population, one line per M:
    the median over seeds with min–max bars) and ``transfer.png`` (each run's real score
    against its last generation's mean dream fitness)."""
    files = run.controller_compare
    text = table(rows)
    write_json_atomic(files.results, rows)
    write_text_atomic(files.table, text + "\n")
    series = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        pops = sorted({r["population"] for r in rows if r["variant"] == variant})
        stats = [spread([r["report_mean"] for r in rows
                         if (r["variant"], r["population"]) == (variant, p)]) for p in pops]
        series[variant] = ([float(p) for p in pops], [s["median"] for s in stats],
                           ([s["median"] - s["min"] for s in stats],
                            [s["max"] - s["median"] for s in stats]))
    pops = sorted({r["population"] for r in rows})
    plot_errorbars(files.plot, series,
                   f"C's real score against CMA-ES population\n({rows[0]['dream_episodes']} "
                   "dream episodes a run; median over seeds, min–max bars)",
                   "population", f"mean return, {rows[0]['report_episodes']} real episodes",
                   logx=len(pops) > 1 and max(pops) >= 4 * min(pops),
                   xticks=[float(p) for p in pops])
    variants = dict.fromkeys(r["variant"] for r in rows)
    plot_points(files.transfer,
                {v: ([r["final_dream_mean"] for r in rows if r["variant"] == v],
                     [r["report_mean"] for r in rows if r["variant"] == v]) for v in variants},
                "Does the dream's score carry over to the real env?\n(one point a run; "
                "y: its selected C)",
                "mean fitness in the dream, last generation",
                f"mean return, {rows[0]['report_episodes']} real episodes", diagonal=True)
    return text

