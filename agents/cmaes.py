"""CMA-ES for the controller, with a resumable state that holds no pickle.

A ``cma.CMAEvolutionStrategy`` is fully determined by its seed and the fitness values
it was told, so the checkpoint is just those values: ``controller/cmaes_history.npz``
holds ``fitness`` float64 (G, P). A rerun rebuilds the strategy by replaying ask/tell,
then continues. CMA-ES draws from NumPy's global RNG; the strategy gets a private copy
of that state, swapped in around each ``ask``, so nothing else in the process can
perturb a replay.

Files under ``<run>/controller/`` (:class:`worldmodels.run_dir.ControllerFiles`):
``cmaes_history.npz``, ``best.safetensors`` (+ .json;
the best mean fitness so far), ``mean.safetensors`` (the search distribution's mean after
the last generation), ``generations.json`` (per-generation best / mean / worst
and the periodic evaluations), ``fitness.png`` (the curve).
"""

from __future__ import annotations

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
from agents.rollouts import RolloutTask, describe_returns, play_task
from worldmodels.checkpoint import load_weights, read_json, save_model, write_json_atomic
from worldmodels.config import ConfigError, ExperimentConfig
from worldmodels.controller import FlatPolicy
from worldmodels.monitoring import summary_writer
from worldmodels.pictures import plot_curves
from worldmodels.run_dir import RunDir
from worldmodels.shards import ShardError, read_npz, write_npz_atomic

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # cma warns that matplotlib is absent
    import cma

#: candidates (P, n) and env seeds (R,) -> mean return per candidate (P,)
Evaluator = Callable[[np.ndarray, Sequence[int]], np.ndarray]


def generation_seeds(seed: int, generation: int, rollouts: int) -> list[int]:
    """Env seeds shared by every candidate of a generation (common random numbers)."""
    rng = np.random.default_rng([seed, 7919, generation])
    return [int(s) for s in rng.integers(0, 2**31 - 1, size=rollouts)]


class ProcessEvaluator:
    """Plays every (candidate, seed) episode on the chosen engine; V and M load once per
    worker process (serial: once in this process)."""

    def __init__(self, run: RunDir, engine: str = "process", workers: int = 0,
                 ray_address: str = "", max_steps: int = 0, stall_steps: int = 0,
                 overrides: tuple[str, ...] = (), batch: int = 1):
        self.run_dir, self.engine, self.workers = str(run.path), engine, workers
        self.ray_address, self.max_steps, self.stall_steps = ray_address, max_steps, stall_steps
        self.overrides = tuple(overrides)  # env.* / dream.*: see RunDir.load_config
        self.batch = batch  # episodes a worker steps together
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
        # on the settings only, not on the engine
        size = max(1, min(self.batch, -(-len(episodes) // resolve_workers(self.workers))))
        tasks = [RolloutTask(self.run_dir, tuple(e for e, _ in chunk),
                             tuple(t for _, t in chunk), self.batch, self.overrides)
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

    def replay(self, history: np.ndarray) -> None:
        for fitness in history:
            self.tell(self.ask(), fitness)


@dataclass
class CMAESReport:
    generations: int
    best_fitness: float
    last_eval: dict[str, Any] | None
    seconds: float


def train_cmaes(cfg: ExperimentConfig, run: RunDir | None = None,
                evaluator: Evaluator | None = None, progress: bool = True) -> CMAESReport:
    """Run (or resume) CMA-ES up to ``controller.generations`` generations; the run is
    ``cfg``'s default directory unless given."""
    run = run or RunDir.for_config(cfg)
    c = cfg.controller
    files = run.controller
    controller = run.new_controller(cfg, run.action_space(), run.load_memory())
    in_dream = c.environment == "dream"
    torch.manual_seed(cfg.seed)
    x0 = np.zeros(controller.num_parameters())
    es = CMAES(x0, c.sigma0, c.population, cfg.seed)
    settings = {"dim": len(x0), "population": c.population, "rollouts": c.rollouts,
                "sigma0": c.sigma0, "seed": cfg.seed, "max_episode_steps": c.max_episode_steps,
                "stall_steps": c.stall_steps, "cma": cma.__version__}
    settings["environment"] = c.environment
    if in_dream:
        settings.update(temperature=cfg.dream.temperature,
                        done=cfg.dream.done, done_threshold=cfg.dream.done_threshold,
                        dream_max_steps=cfg.dream.max_steps)
    run.load_vae(cfg.vae.z_dim)  # V fits the config
    history = read_history(files.history, settings, c.population)
    run.write_config(cfg, outputs=(files.dir,))  # inputs accepted
    files.dir.mkdir(parents=True, exist_ok=True)
    if evaluator is None:
        evaluator = make_evaluator(cfg, run)
    # periodic evaluations are real episodes, also when C trains in the dream
    real_evaluator = evaluator if isinstance(evaluator, ProcessEvaluator) else None
    es.replay(history)
    log: list[dict[str, Any]] = read_json(files.log, [])[: len(history)]
    best = float(history.max()) if len(history) else -np.inf
    writer = summary_writer(run.tensorboard("controller"))
    started = time.perf_counter()
    last_eval = next((g["eval"] for g in reversed(log) if "eval" in g), None)
    bar = tqdm(range(len(history), c.generations), initial=len(history), total=c.generations,
               desc="CMA-ES", unit="gen", disable=not progress)
    for gen in bar:
        candidates = es.ask()
        fitness = evaluator(candidates, generation_seeds(cfg.seed, gen, c.rollouts))
        es.tell(candidates, fitness)
        entry: dict[str, Any] = {"generation": gen + 1, "best": float(fitness.max()),
                                 "mean": float(fitness.mean()), "worst": float(fitness.min()),
                                 "seconds": time.perf_counter() - started}
        if fitness.max() > best:
            best = float(fitness.max())
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
            last_eval = evaluate_best(controller, files.best, c.eval_episodes,
                                      cfg.seed + 10_000 + gen, real_evaluator)
            entry["eval"] = last_eval
            writer.add_scalar("c/eval_mean", last_eval["mean"], gen + 1)
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
        if c.target_return and last_eval and last_eval["mean"] >= c.target_return:
            break
    writer.close()
    if isinstance(evaluator, ProcessEvaluator):
        evaluator.close()
    if real_evaluator is not None and real_evaluator is not evaluator:
        real_evaluator.close()
    return CMAESReport(len(es.history), best, last_eval, time.perf_counter() - started)


def make_evaluator(cfg: ExperimentConfig, run: RunDir) -> Evaluator:
    """Fitness in the real env (``controller.environment=real``: worker processes, Ray)
    or in M's batched dream (``dream``: this process)."""
    c = cfg.controller
    if c.environment == "dream":
        return DreamEvaluator(run, cfg)
    return ProcessEvaluator(run, c.engine, c.workers, c.ray_address,
                            c.max_episode_steps, c.stall_steps, batch=c.batch_envs)


def plot_fitness(log: list[dict[str, Any]], path: Path, title: str = "CMA-ES fitness") -> None:
    """Best / mean fitness per generation with the worst-to-best band, and the
    periodic evaluations of the best candidate."""
    gens = [g["generation"] for g in log]
    series = {"best": (gens, [g["best"] for g in log]),
              "mean": (gens, [g["mean"] for g in log])}
    evals = [(g["generation"], g["eval"]["mean"]) for g in log if "eval" in g]
    if evals:
        series["best candidate, eval mean"] = ([e[0] for e in evals], [e[1] for e in evals])
    plot_curves(path, series, title, "generation", "return",
                band=([g["worst"] for g in log], [g["best"] for g in log]))


def read_history(path: Path, settings: dict[str, Any], population: int) -> np.ndarray:
    """Recorded fitness (G, P); refuses a history made with other CMA-ES settings, whose
    replay would put the old values on different candidates."""
    if not path.exists():
        return np.zeros((0, population))
    delete = "delete it (or the controller directory) to start CMA-ES anew"
    try:
        data = read_npz(path, ("fitness", "settings"))
        saved = json.loads(str(data["settings"]))
    except (ShardError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: unreadable CMA-ES history ({err}); {delete}") from None
    fitness = data["fitness"]
    if not isinstance(saved, dict) or fitness.dtype != np.float64 or fitness.ndim != 2:
        raise ConfigError(f"{path}: not a CMA-ES history (fitness {fitness.dtype} "
                          f"{fitness.shape}, float64 (generations, population) "
                          f"expected, and a settings mapping); {delete}")
    changed = {k: (saved.get(k), settings.get(k)) for k in {**saved, **settings}
               if saved.get(k) != settings.get(k)}
    if changed:
        raise ConfigError(f"{path}: made with other CMA-ES settings "
                         + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
                         + "; use a new run name or delete the controller directory")
    if fitness.shape[1] != population:
        raise ConfigError(f"{path}: has {fitness.shape[1]} candidates a generation, the "
                          f"population is {population}; {delete}")
    return fitness


def evaluate_best(controller: FlatPolicy, weights: Path, episodes: int, seed: int,
                  evaluator: ProcessEvaluator) -> dict[str, Any]:
    """Mean and spread over ``episodes`` fresh, whole real episodes of the controller at
    ``weights`` (loaded into ``controller``), played by the evaluator's workers."""
    load_weights(weights, controller)
    params = controller.get_flat().numpy()
    seeds = [int(s) for s in
             np.random.default_rng([seed, 104729]).integers(0, 2**31 - 1, size=episodes)]
    return describe_returns(evaluator.returns([params], seeds, whole_episodes=True)[0][0])
