"""CMA-ES for the controller, with a resumable state that holds no pickle.

A ``cma.CMAEvolutionStrategy`` is fully determined by its seed and the fitness values
it was told, so the checkpoint is just those values: ``controller/cmaes_history.npz``
holds ``fitness`` float64 (G, P). A rerun rebuilds the strategy by replaying ask/tell,
then continues: bit for bit under the BLAS thread count the search ran with, and within
a float32 ulp or so of it under another (NumPy's OpenBLAS rounds its threaded linear
algebra differently; measured on a 1,731-parameter search: 284 of its weights one ulp
apart after 50 generations). CMA-ES draws from NumPy's global RNG; the strategy gets a
private copy of that state, swapped in around each ``ask``, so nothing else in the
process can perturb a replay.

Files under ``<run>/controller/`` (:class:`worldmodels.run_dir.ControllerFiles`):
``cmaes_history.npz``, ``best.safetensors`` (+ .json;
the best mean fitness so far), ``mean.safetensors`` (the search distribution's mean after
the last generation), ``selected.safetensors`` (see below), ``generations.json``
(per-generation best / mean / worst and the periodic evaluations), ``fitness.png``.

Selection: the best candidate's fitness is the luckiest of many noisy estimates, so it
is not what ships. Every ``eval_every`` generations the best candidate so far and the
search mean play the same fixed selection seeds (:func:`agents.seeds.selection_seeds`,
``select_episodes`` whole real episodes, also when C trains in the dream; apart from the
final report's seeds), and ``selected.safetensors`` keeps whichever had the highest
selection mean ever seen; its meta records the generation, the source and that mean,
which a resumed run compares against. ``target_return`` stops on that mean.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from agents.batched import Episode
from agents.dreams import DreamEvaluator
from agents.parallel import TaskPool, resolve_workers
from agents.rollouts import RolloutTask, describe_returns, play_settings, play_task
from agents.seeds import selection_seeds
from envs.dream_env import dream_training_settings
from worldmodels.checkpoint import (
    file_digest,
    load_weights,
    read_header,
    read_json,
    save_model,
    write_json_atomic,
)
from worldmodels.config import ConfigError, ExperimentConfig
from worldmodels.controller import FlatPolicy
from worldmodels.errors import InputError
from worldmodels.monitoring import summary_writer
from worldmodels.pictures import plot_curves
from worldmodels.run_dir import ControllerFiles, RunDir, RunView
from worldmodels.shards import ShardError, read_npz, write_npz_atomic

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # cma warns that matplotlib is absent
    import cma

#: candidates (P, n) and env seeds (R,) -> mean return per candidate (P,)
Evaluator = Callable[[np.ndarray, Sequence[int]], np.ndarray]


#: what every record of ``controller/generations.json`` holds
GENERATION_KEYS = ("generation", "best", "mean", "worst")


def generation_seeds(seed: int, generation: int, rollouts: int) -> list[int]:
    """Env seeds shared by every candidate of a generation (common random numbers)."""
    rng = np.random.default_rng([seed, 7919, generation])
    return [int(s) for s in rng.integers(0, 2**31 - 1, size=rollouts)]


class ProcessEvaluator:
    """Plays every (candidate, seed) episode on the chosen engine; V and M load once per
    worker process (serial: once in this process)."""

    def __init__(self, run: RunDir, engine: str = "process", workers: int = 0,
                 ray_address: str = "", max_steps: int = 0, stall_steps: int = 0,
                 overrides: tuple[str, ...] = (), batch: int = 1, vote: int = 0):
        # a view's paths differ from its directory's: the tasks carry the view itself
        # (a run on another run's world model is rebuilt from its home, which names it)
        self.run_dir: str | RunDir = run if isinstance(run, RunView) else str(run.home)
        self.engine, self.workers = engine, workers
        self.ray_address, self.max_steps, self.stall_steps = ray_address, max_steps, stall_steps
        self.overrides = tuple(overrides)  # env.* / dream.*: see RunDir.load_config
        self.batch = batch  # episodes a worker steps together
        self.vote = vote  # > 0: candidates are votes of that many controllers' weights
        self.pool = TaskPool(engine, workers, ray_address)  # kept: workers load V, M once

    def close(self) -> None:
        self.pool.close()

    def __call__(self, candidates: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        return self.returns(list(candidates), seeds)[0].mean(axis=1)

    def returns(self, candidates: Sequence[np.ndarray | None], seeds: Sequence[int],
                whole_episodes: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(returns, steps), each (P, R): every candidate on every seed, in seed order.

        A candidate of None plays uniform random actions. ``whole_episodes`` ignores the
        training caps (``max_steps``, ``stall_steps``), as evaluation must. Episodes go
        to the workers in tasks of up to ``batch``, the same tasks on every engine, so
        every engine gives the same figures.
        """
        caps = (0, 0) if whole_episodes else (self.max_steps, self.stall_steps)
        flat = [None if x is None else np.asarray(x, np.float32) for x in candidates]
        episodes = [(Episode(int(s), flat[i], *caps), (i, j))
                    for i in range(len(flat)) for j, s in enumerate(seeds)]
        # tasks of up to ``batch`` episodes, at least one per worker; the split depends
        # on the settings and the worker count (workers=0: this machine's cores), not on
        # the engine; an episode's return is the same in any batch up to float error
        size = max(1, min(self.batch, -(-len(episodes) // resolve_workers(self.workers))))
        tasks = [RolloutTask(self.run_dir, tuple(e for e, _ in chunk),
                             tuple(t for _, t in chunk), self.batch, self.overrides,
                             self.vote)
                 for chunk in (episodes[k:k + size] for k in range(0, len(episodes), size))]
        returns = np.zeros((len(candidates), len(seeds)))
        steps = np.zeros((len(candidates), len(seeds)), dtype=int)
        for task, results in self.pool.run(play_task, tasks):
            for (i, j), (ret, n) in zip(task.tags, results, strict=True):
                returns[i, j], steps[i, j] = ret, n
        return returns, steps


class CMAES:
    """``cma.CMAEvolutionStrategy`` with a private RNG and replayable history."""

    def __init__(self, x0: np.ndarray, sigma0: float, population: int, seed: int):
        saved = np.random.get_state()
        self.es = cma.CMAEvolutionStrategy(
            np.asarray(x0, float), sigma0,
            {"popsize": population, "seed": seed + 1, "verbose": -9})
        self._rng_state = np.random.get_state()
        np.random.set_state(saved)
        self.history: list[np.ndarray] = []

    @contextmanager
    def _private_rng(self):
        saved = np.random.get_state()
        np.random.set_state(self._rng_state)
        try:
            yield
        finally:
            self._rng_state = np.random.get_state()
            np.random.set_state(saved)

    def ask(self) -> np.ndarray:
        with self._private_rng():
            return np.asarray(self.es.ask())

    def tell(self, candidates: np.ndarray, fitness: np.ndarray) -> None:
        """``fitness``: higher is better (CMA-ES minimises, so it is told the negative)."""
        with self._private_rng():
            self.es.tell(list(candidates), list(-np.asarray(fitness, float)))
        self.history.append(np.asarray(fitness, float))

    def mean(self) -> np.ndarray:
        """The search distribution's mean (n,)."""
        return np.asarray(self.es.mean, float)

    def replay(self, history: np.ndarray) -> np.ndarray | None:
        """Tell the strategy ``history`` (G, P) again; returns the best candidate of it
        (the first of the highest fitness), None for no generation."""
        best, top = None, -np.inf
        for fitness in history:
            candidates = self.ask()
            if fitness.max() > top:
                best, top = candidates[int(np.argmax(fitness))], float(fitness.max())
            self.tell(candidates, fitness)
        return best


@dataclass
class CMAESReport:
    generations: int
    best_fitness: float
    last_eval: dict[str, Any] | None  # the last periodic evaluation (best and mean)
    seconds: float
    selected: dict[str, Any] | None = None  # the selected controller's meta
    searches: list[dict[str, Any]] | None = None  # controller.restarts > 1: every search
    search: int | None = None  # and the one kept (agents.searches)


def train_cmaes(cfg: ExperimentConfig, run: RunDir | None = None,
                evaluator: Evaluator | None = None, progress: bool = True,
                seed: int | None = None, selection_seed: int | None = None,
                files: ControllerFiles | None = None,
                tensorboard: str = "controller") -> CMAESReport:
    """Run (or resume) CMA-ES up to ``controller.generations`` generations; the run is
    ``cfg``'s default directory unless given.

    ``seed`` seeds CMA-ES and its generations' env (or dream) seeds (default
    ``cfg.seed``), ``selection_seed`` the selection seeds (default ``seed``); the data
    split (a dream's start latents) always follows :meth:`RunDir.data_seed`, so CMA-ES
    runs with different seeds dream from the same episodes. ``files``: where the search
    keeps its files (default the run's ``controller/``; :mod:`agents.searches` gives each
    of several searches its own), ``tensorboard`` its TensorBoard stage."""
    run = run or RunDir.for_config(cfg)
    seed = cfg.seed if seed is None else seed
    selection_seed = seed if selection_seed is None else selection_seed
    c = cfg.controller
    files = files or run.controller
    controller = run.new_controller(cfg, run.action_space(), run.load_memory())
    in_dream = c.environment == "dream"
    torch.manual_seed(seed)
    x0 = np.zeros(controller.num_parameters())
    es = CMAES(x0, c.sigma0, c.population, seed)
    run.load_vae(cfg.vae.z_dim)  # V fits the config
    world_model = run.world_model_digests()
    settings = cmaes_settings(cfg, len(x0), seed, world_model)
    history, saved_settings = read_history(files.history, settings, c.population)
    scored_with = saved_settings.get(WORLD_MODEL_KEY)
    log: list[dict[str, Any]] = read_json(files.log, [], GENERATION_KEYS)[: len(history)]
    select = {"episodes": c.selection_size, "seed": selection_seed}
    selected = read_selected(files.selected, select, len(history), c.select_episodes == 0)
    run.write_config(cfg, outputs=(files.dir,))  # inputs accepted
    files.dir.mkdir(parents=True, exist_ok=True)
    if evaluator is None:
        evaluator = make_evaluator(cfg, run)
    # periodic evaluations are real episodes, also when C trains in the dream
    real_evaluator = evaluator if isinstance(evaluator, ProcessEvaluator) else None
    best_params = es.replay(history)
    best = float(history.max()) if len(history) else -np.inf
    best_generation = int(np.argmax(history.max(axis=1))) + 1 if len(history) else 0
    if best_params is not None and best_generation != _saved_generation(files.best):
        # a kill after best.safetensors but before the history: the file holds a
        # candidate of a generation the history lacks (its rerun may score it otherwise)
        controller.set_flat(torch.as_tensor(best_params))
        save_model(files.best, controller,
                   meta={"generation": best_generation, "fitness": best, "rollouts": c.rollouts})
    # a search that met controller.target_return is finished: a rerun adds no generation
    reached = bool(c.target_return and selected
                   and selected["selection_mean"] >= c.target_return)
    last = len(history) if reached else c.generations
    if scored_with is not None and scored_with != world_model:
        # V or M changed since (M trained further): its fitness is another world model's
        if len(history) < last:
            raise ConfigError(
                f"{files.history}: scored with another V or M ({scored_with}; the run's are "
                f"now {world_model}: M trained further?), so its fitness cannot go on "
                f"with this world model's; move {files.dir} aside (or use a new run "
                "name) to train C on the world model as it is")
        print(f"{files.history}: C was trained on another V or M ({scored_with}; now "
              f"{world_model}); kept as it is, and scored on this one by evaluation (move "
              f"{files.dir} aside to train C on this world model)")
    changed_play = play_changes(saved_settings.get(PLAY_KEY), settings[PLAY_KEY])
    if changed_play and len(history) < last and (not in_dream or c.eval_every):
        # the real episodes (fitness, or the dream's periodic selection) would mix envs
        raise ConfigError(f"{files.history}: its real episodes were played with other "
                          f"settings ({', '.join(changed_play)}), so its fitness and "
                          "selection scores cannot go on with these: give the run's own "
                          "settings to train on (evaluate.py plays others), or use a new "
                          "run name")
    # (no purge on resume: later rounds of run.py log their generations from 1 again in
    # this directory, and a purge would hide the earlier rounds' curves)
    writer = summary_writer(run.tensorboard(tensorboard))
    started, session = time.perf_counter(), len(history) + 1  # the session's first generation
    last_eval = next((g["eval"] for g in reversed(log) if "eval" in g), None)
    bar = tqdm(range(len(history), last), initial=len(history), total=c.generations,
               desc="CMA-ES", unit="gen", disable=not progress)
    for gen in bar:
        candidates = es.ask()
        fitness = evaluator(candidates, generation_seeds(seed, gen, c.rollouts))
        refuse_non_finite(fitness, files.history, gen + 1)
        es.tell(candidates, fitness)
        entry: dict[str, Any] = {"generation": gen + 1, "best": float(fitness.max()),
                                 "mean": float(fitness.mean()), "worst": float(fitness.min()),
                                 "seconds": time.perf_counter() - started,
                                 "session": session}
        if fitness.max() > best:
            best, best_generation = float(fitness.max()), gen + 1
            controller.set_flat(torch.as_tensor(candidates[int(fitness.argmax())]))
            save_model(files.best, controller,
                       meta={"generation": gen + 1, "fitness": best, "rollouts": c.rollouts})
        # the search distribution's mean: on noisy fitness (stochastic dreams, a few
        # rollouts) often a better controller than the luckiest candidate
        controller.set_flat(torch.as_tensor(es.mean()))
        save_model(files.mean, controller, meta={"generation": gen + 1})
        if c.eval_every and (gen + 1) % c.eval_every == 0:
            if real_evaluator is None:
                real_evaluator = ProcessEvaluator(run, c.engine, c.workers, c.ray_address,
                                                  batch=c.batch_envs)
            last_eval = evaluate_for_selection(
                controller, files.best, best_generation, es.mean(), gen + 1,
                selection_seeds(selection_seed, select["episodes"]), real_evaluator, log)
            entry["eval"] = last_eval
            for source in ("best", "mean"):
                score = last_eval[source]
                writer.add_scalar(f"c/selection_{source}", score["mean"], gen + 1)
                if selected is None or score["mean"] > selected["selection_mean"]:
                    selected = selection_meta(score, source, selection_seed, gen + 1)
                    params = es.mean() if source == "mean" else None
                    if params is None:
                        load_weights(files.best, controller)
                    else:
                        controller.set_flat(torch.as_tensor(params))
                    save_model(files.selected, controller, meta=selected)
            entry["selected"] = selected
            writer.add_scalar("c/selected_mean", selected["selection_mean"], gen + 1)
        for key in ("best", "mean", "worst"):
            writer.add_scalar(f"c/fitness_{key}", entry[key], gen + 1)
        log.append(entry)
        # best weights, then the log, then the history that a resume replays: a kill
        # between them only makes the rerun redo this generation (same seeds, same values)
        write_json_atomic(files.log, log)
        plot_fitness(log, files.fitness_plot,
                     "CMA-ES fitness in the dream (evaluations: real env)" if in_dream
                     else "CMA-ES fitness")
        write_npz_atomic(files.history, {"fitness": np.stack(es.history),
                                            "settings": np.array(json.dumps(settings))},
                         compress_level=0)
        bar.set_postfix(best=f"{entry['best']:.1f}", mean=f"{entry['mean']:.1f}")
        if c.target_return and selected and selected["selection_mean"] >= c.target_return:
            break
    writer.close()
    if isinstance(evaluator, ProcessEvaluator):
        evaluator.close()
    if real_evaluator is not None and real_evaluator is not evaluator:
        real_evaluator.close()
    return CMAESReport(len(es.history), best, last_eval, time.perf_counter() - started,
                       selected)


def refuse_non_finite(fitness: np.ndarray, history: Path, generation: int) -> None:
    """A generation's fitness (P,) must be finite: a NaN would poison CMA-ES's update,
    and its history could not be replayed. Refused before it is told or kept, so the
    history on disk stops at the generation before (and a rerun resumes from there)."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(fitness, float)))
    if len(bad):
        raise InputError(f"{history}: generation {generation}'s fitness of candidate "
                         f"{int(bad[0]) + 1} is {float(fitness[bad[0]])} (a non-finite "
                         "return from the dream or the env: check M and the env); the "
                         f"history is kept up to generation {generation - 1}")


def play_changes(saved: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for each :func:`play_settings` key a history recorded (None:
    none recorded) that ``now`` plays otherwise."""
    if saved is None:
        return []
    old = {f"env.{k}": v for k, v in saved.get("env", {}).items()}
    old["controller.agent_precision"] = saved.get("agent_precision")
    new = {f"env.{k}": v for k, v in now["env"].items()}
    new["controller.agent_precision"] = now["agent_precision"]
    return [f"{k}: {v!r} -> {new.get(k)!r}" for k, v in old.items() if new.get(k) != v]


def cmaes_settings(cfg: ExperimentConfig, dim: int, seed: int,
                   world_model: dict[str, str] | None = None) -> dict[str, Any]:
    """What a CMA-ES history depends on (stored beside it; a replay under other settings
    would put the old fitness values on other candidates). ``world_model``: the digests
    of the V and M its fitness was scored with (:meth:`RunDir.world_model_digests`): M
    trained further (``memory.epochs`` raised) makes the recorded fitness, and the
    selected controller, another M's."""
    c = cfg.controller
    settings: dict[str, Any] = {
        "dim": dim, "population": c.population, "rollouts": c.rollouts, "sigma0": c.sigma0,
        "seed": seed, "max_episode_steps": c.max_episode_steps,
        "stall_steps": c.stall_steps, "cma": cma.__version__, "environment": c.environment}
    if c.clip_dims:  # (only when set: histories from before the option stay valid)
        settings["clip_dims"] = sorted(set(c.clip_dims))
    if c.environment == "dream":
        settings.update(dream_training_settings(cfg))
    settings[ARCHITECTURE_KEY] = controller_architecture(cfg)
    settings[PLAY_KEY] = play_settings(cfg)
    if world_model:
        settings[WORLD_MODEL_KEY] = dict(world_model)
    return settings


def controller_architecture(cfg: ExperimentConfig) -> dict[str, Any]:
    """The ``controller.*`` keys that fix what a flat parameter vector means: two
    controllers of one size may read it otherwise (another ``kind``, ``action_order``
    or ``discrete_head``)."""
    c = cfg.controller
    return {"kind": c.kind, "hidden": c.hidden, "use_cell": c.use_cell,
            "discrete_head": c.discrete_head, "action_order": list(c.action_order)}


#: the settings key of the V and M digests a history was scored with: not compared by
#: :func:`read_history` but by :func:`train_cmaes`, which keeps a finished search on a
#: changed M (evaluation scores it anew) and refuses one that would train on; histories
#: from before stop 52 lack it
WORLD_MODEL_KEY = "world_model"

#: the settings key of the controller's architecture (:func:`controller_architecture`),
#: compared when the history records it (histories from before stop 53 do not)
ARCHITECTURE_KEY = "controller"

#: the settings key of what a real episode's return depends on beyond C, V and M: the
#: ``env.*`` settings and V's precision (:func:`play_settings`); like
#: :data:`WORLD_MODEL_KEY` compared by :func:`train_cmaes` only where generations are to
#: be added (an evaluation may play other env settings); histories from before stop 54
#: lack it
PLAY_KEY = "play"



def _saved_generation(path: Path) -> int | None:
    """The generation in a controller file's meta, None without a file."""
    if not path.exists():
        return None
    return (read_header(path).get("meta") or {}).get("generation")


def replay_parameters(cfg: ExperimentConfig, files: ControllerFiles, dim: int, seed: int,
                      wanted: Sequence[tuple[str, int]]) -> dict[tuple[str, int], np.ndarray]:
    """Rebuild past controllers of a CMA-ES search by replaying its history: for each
    ``(source, generation)`` of ``wanted``, ``("best", g)`` the best candidate of
    generation g and ``("mean", g)`` the search mean after it, each (dim,) float64.
    The strategy is fixed by its seed and the fitness it was told, so these are the
    weights the search saved then (a test checks it against the saved files)."""
    c = cfg.controller
    history, _ = read_history(files.history, cmaes_settings(cfg, dim, seed), c.population)
    wanted_set = set(wanted)
    missing = [w for w in wanted_set if not 1 <= w[1] <= len(history)]
    if missing:
        raise ConfigError(f"{files.history}: has {len(history)} generations; no "
                          f"controller of generation {missing[0][1]} to rebuild")
    es = CMAES(np.zeros(dim), c.sigma0, c.population, seed)
    found: dict[tuple[str, int], np.ndarray] = {}
    for generation, fitness in enumerate(history, start=1):
        if len(found) == len(wanted_set):
            break
        candidates = es.ask()
        if ("best", generation) in wanted_set:
            found["best", generation] = candidates[int(np.argmax(fitness))]
        es.tell(candidates, fitness)
        if ("mean", generation) in wanted_set:
            found["mean", generation] = es.mean()
    return found


def make_evaluator(cfg: ExperimentConfig, run: RunDir) -> Evaluator:
    """Fitness in the real env (``controller.environment=real``: worker processes, Ray)
    or in M's batched dream (``dream``: this process)."""
    c = cfg.controller
    if c.environment == "dream":
        return DreamEvaluator(run, cfg)
    return ProcessEvaluator(run, c.engine, c.workers, c.ray_address,
                            c.max_episode_steps, c.stall_steps, batch=c.batch_envs)


def plot_fitness(log: list[dict[str, Any]], path: Path, title: str = "CMA-ES fitness") -> None:
    """Best / mean fitness per generation with the worst-to-best band, and the selected
    controller's selection mean at each periodic evaluation (a log written before
    selection existed: the best candidate's eval mean)."""
    gens = [g["generation"] for g in log]
    series = {"best": (gens, [g["best"] for g in log]),
              "mean": (gens, [g["mean"] for g in log])}
    selected = [(g["generation"], g["selected"]["selection_mean"]) for g in log
                if g.get("selected")]
    if selected:
        series["selected, selection mean"] = ([e[0] for e in selected],
                                              [e[1] for e in selected])
    evals = [(g["generation"], g["eval"]["mean"]) for g in log
             if "eval" in g and "best" not in g["eval"]]  # the old log layout
    if evals:
        series["best candidate, eval mean"] = ([e[0] for e in evals], [e[1] for e in evals])
    plot_curves(path, series, title, "generation", "return",
                band=([g["worst"] for g in log], [g["best"] for g in log]))


#: what a refused CMA-ES history's error advises
DELETE_HISTORY = "delete it (or the controller directory) to start CMA-ES anew"


def read_history_file(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """(fitness (G, P) float64, finite; the settings mapping) of an existing CMA-ES
    history, or a :class:`ConfigError` naming it (unreadable, another format, NaN)."""
    try:
        data = read_npz(path, ("fitness", "settings"))
        saved = json.loads(str(data["settings"]))
    except (ShardError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: unreadable CMA-ES history ({err}); {DELETE_HISTORY}") from None
    fitness = data["fitness"]
    if not isinstance(saved, dict) or fitness.dtype != np.float64 or fitness.ndim != 2:
        raise ConfigError(f"{path}: not a CMA-ES history (fitness {fitness.dtype} "
                          f"{fitness.shape}, float64 (generations, population) "
                          f"expected, and a settings mapping); {DELETE_HISTORY}")
    if not bool(np.isfinite(fitness).all()):
        raise ConfigError(f"{path}: fitness holds NaN or Inf (generation "
                          f"{int(np.argwhere(~np.isfinite(fitness))[0][0]) + 1}), so CMA-ES "
                          f"cannot replay it; {DELETE_HISTORY}")
    return fitness, saved


def read_history(path: Path, settings: dict[str, Any], population: int,
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """Recorded fitness (G, P) and the settings saved with it; refuses a history made with
    other CMA-ES settings, whose replay would put the old values on different candidates
    (all but :data:`WORLD_MODEL_KEY`, which the caller weighs)."""
    if not path.exists():
        return np.zeros((0, population)), {}
    fitness, saved = read_history_file(path)
    changed = {k: (saved.get(k), settings.get(k)) for k in {**saved, **settings}
               if saved.get(k) != settings.get(k) and k not in (WORLD_MODEL_KEY, PLAY_KEY)
               and (k != ARCHITECTURE_KEY or k in saved)}
    if changed:
        raise ConfigError(f"{path}: made with other CMA-ES settings "
                         + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
                         + "; use a new run name or delete the controller directory")
    if fitness.shape[1] != population:
        raise ConfigError(f"{path}: has {fitness.shape[1]} candidates a generation, the "
                          f"population is {population}; {DELETE_HISTORY}")
    return fitness, saved


def read_selected(path: Path, select: dict[str, int], generations: int | None = None,
                  size_from_eval_episodes: bool = False) -> dict[str, Any] | None:
    """The meta of a run's ``selected.safetensors`` (its selection mean is what a resumed
    run must beat), or None: no file, a score on other selection seeds (``select``:
    their ``episodes`` and ``seed``), which the next evaluation replaces, or one made at
    a generation past the ``generations`` its history holds (a kill before the history
    was written, or a history deleted by hand: that generation is redone).
    ``size_from_eval_episodes``: the selection's size is ``controller.eval_episodes``
    (``select_episodes`` 0), so another size is a report size given for the selection's:
    a ConfigError that says how to keep the selection."""
    if not path.exists():
        return None
    meta = dict(read_header(path).get("meta", {}))
    if isinstance(meta.get("final"), dict) and "stage1" in meta["final"]:
        meta = dict(meta["final"]["stage1"])  # the mean later evaluations must beat
    if generations is not None and int(meta.get("evaluated_at", 0)) > generations:
        print(f"{path}: chosen at generation {meta.get('evaluated_at')}, past the "
              f"{generations} its history holds; that generation is redone")
        return None
    if size_from_eval_episodes and meta.get("selection_seed") == select["seed"] \
            and meta.get("selection_episodes") != select["episodes"]:
        n = meta.get("selection_episodes")
        raise ConfigError(
            f"{path}: selected on {n} episodes, controller.eval_episodes's number while "
            f"controller.select_episodes is 0; controller.eval_episodes={select['episodes']} "
            f"would move the selection to other seeds: add controller.select_episodes={n} "
            "to keep it (the report then plays the new number)")
    if (meta.get("selection_episodes"), meta.get("selection_seed")) != \
            (select["episodes"], select["seed"]):
        print(f"{path}: scored on other selection seeds ({meta.get('selection_episodes')} "
              f"episodes, seed {meta.get('selection_seed')}); the next evaluation replaces it")
        return None
    return meta


def selection_meta(score: dict[str, Any], source: str, seed: int,
                   evaluated_at: int) -> dict[str, Any]:
    """The meta of ``selected.safetensors`` for a checkpoint's selection ``score`` (its
    ``generation``, ``mean``, ``std`` and ``episodes``) on the selection seeds of ``seed``,
    scored at generation ``evaluated_at``."""
    return {"generation": score["generation"], "source": source,
            "selection_mean": score["mean"], "selection_std": score["std"],
            "selection_episodes": score["episodes"], "selection_seed": seed,
            "evaluated_at": evaluated_at}


def evaluate_for_selection(controller: FlatPolicy, best: Path, best_generation: int,
                           mean: np.ndarray, generation: int, seeds: Sequence[int],
                           evaluator: ProcessEvaluator,
                           log: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The best candidate so far (the weights at ``best``) and the search ``mean`` on the
    selection ``seeds``, whole real episodes: ``{"best": {...}, "mean": {...},
    "episodes": n}``, each with the mean, spread and the generation it comes from. The
    best candidate's score is reused from ``log`` when the same weights already played
    the same seeds (the episodes are deterministic)."""
    load_weights(best, controller)
    digest = file_digest(best)
    reused = next((g["eval"]["best"] for g in reversed(log)
                   if "best" in g.get("eval", {}) and g["eval"]["best"].get("digest") == digest
                   and g["eval"].get("seeds") == seeds_key(seeds)), None)
    candidates = [mean] if reused else [controller.get_flat().numpy(), mean]
    returns = evaluator.returns(candidates, seeds, whole_episodes=True)[0]
    scores = {"best": reused or {**describe_returns(returns[0]), "generation": best_generation,
                                 "digest": digest},
              "mean": {**describe_returns(returns[-1]), "generation": generation}}
    return {**scores, "episodes": len(seeds), "seeds": seeds_key(seeds)}


def seeds_key(seeds: Sequence[int]) -> str:
    """A short digest of a seed list, to tell whether two evaluations played the same."""
    return hashlib.sha256(json.dumps([int(s) for s in seeds]).encode()).hexdigest()[:16]
