"""Roll out data policies in an env and write one shard per episode.

``collect(cfg)`` fills ``<run>/rollouts/`` up to ``collect.episodes`` shards. Episode
``i`` is seeded from ``(seed, i)`` only, so the same config gives the same shards
whatever the number of workers, and a rerun after a crash collects just what is missing.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from agents.parallel import run_tasks
from agents.policies import make_policy
from agents.vmc import VMCAgent
from envs.factory import make_env_from_config
from worldmodels.atomic import check_writable
from worldmodels.checkpoint import file_digest, load_weights
from worldmodels.config import ConfigError, EnvConfig, ExperimentConfig, policy_schedule
from worldmodels.controller import build_controller
from worldmodels.run_dir import RunDir, file_stamp
from worldmodels.shards import (
    RolloutShard,
    ShardError,
    describe_action_space,
    list_shards,
    read_meta,
    remove_partial_files,
    shard_index,
    shard_name,
)


@dataclass(frozen=True)
class EpisodeTask:
    """Everything a worker needs to collect episode ``index`` (plain data, cheap to send)."""

    index: int
    seed: int
    out_dir: str
    env: dict
    policy: str
    brownian_dt: float
    linear_std: float
    compress_level: int
    run_dir: str = ""  # the controller policy's V, M and C
    controller_weights: str = "selected"
    controller_epsilon: float = 0.0
    controller_algo: str = "cmaes"  # the SB3 policy's algorithm for controller_weights=sb3
    controller_environment: str = "real"  # where that policy trained (its files differ)
    hold_max: int = 10  # the held policy's longest hold


def episode_seeds(seed: int, index: int) -> tuple[int, np.random.Generator]:
    """(env reset seed, policy generator) for episode ``index`` of a run seeded ``seed``."""
    rng = np.random.default_rng([seed, index])
    return int(rng.integers(2**31 - 1)), rng


def policy_settings(policy: str, brownian_dt: float, linear_std: float, hold_max: int,
                    ) -> dict[str, float | int]:
    """The setting of data policy ``policy`` that its shards record, so a resume with
    another value is refused: ``brownian_dt``, ``linear_std`` or ``hold_max``."""
    return {"brownian": {"brownian_dt": brownian_dt}, "linear": {"linear_std": linear_std},
            "held": {"hold_max": hold_max}}.get(policy, {})


def run_episode(env: gym.Env, policy_name: str, seed: int, index: int,
                brownian_dt: float = 0.02, linear_std: float = 0.5, agent: Any = None,
                epsilon: float = 0.0, hold_max: int = 10) -> RolloutShard:
    """Play one episode to its end (the env's TimeLimit caps its length). ``agent`` and
    ``epsilon``: the ``controller`` policy's V-M-C agent and random-action chance;
    ``hold_max``: the ``held`` policy's longest hold."""
    env_seed, rng = episode_seeds(seed, index)
    env.action_space.seed(env_seed)
    policy = make_policy(policy_name, env.action_space, rng, brownian_dt, linear_std,
                         agent, epsilon, hold_max)
    obs, _ = env.reset(seed=env_seed)
    frames, actions, rewards, terms, truncs = [obs], [], [], [], []
    while True:
        action = policy.act(obs)
        obs, reward, terminated, truncated, _ = env.step(action)
        frames.append(obs)
        actions.append(action)
        rewards.append(reward)
        terms.append(terminated)
        truncs.append(truncated)
        if terminated or truncated:
            break
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    return RolloutShard(
        obs=np.stack(frames).astype(np.uint8),
        action=np.asarray(actions, dtype=np.int64 if discrete else np.float32),
        reward=np.asarray(rewards, dtype=np.float32),
        terminated=np.asarray(terms, dtype=bool),
        truncated=np.asarray(truncs, dtype=bool),
        meta={"env_id": env.spec.id if env.spec else "", "env_seed": env_seed,
              "seed": seed, "index": index, "policy": policy_name,
              "action_space": describe_action_space(env.action_space),
              **policy_settings(policy_name, brownian_dt, linear_std, hold_max)},
    )


_WORKER_ENVS: dict[str, gym.Env] = {}


def _worker_env(env_cfg: dict) -> gym.Env:
    """One env per worker process, made on first use and reused for every episode."""
    key = json.dumps(env_cfg, sort_keys=True)
    if key not in _WORKER_ENVS:
        _WORKER_ENVS[key] = make_env_from_config(EnvConfig(**env_cfg))
    return _WORKER_ENVS[key]


_WORKER_AGENTS: dict[tuple[Any, ...], tuple[Any, dict[str, Any]]] = {}


def controller_weights_path(run: RunDir, weights: str, algo: str = "cmaes",
                            environment: str = "real", index: int = 0) -> Path:
    """The trained controller the ``controller`` data policy plays in episode ``index``:
    CMA-ES's ``weights``; for ``finalists``, finalist ``index mod K`` of the run's second
    selection stage; or for ``sb3`` the run's SB3 policy of ``algo`` trained in
    ``environment`` (the real env or the dream); a clear error if the run has none yet."""
    if weights == "finalists":
        paths = run.controller.finalist_weights()
        return paths[index % len(paths)]
    if weights == "sb3":
        path = run.controller.sb3(algo, environment)[0]
        if not path.exists():
            where = "" if environment == "real" else f" controller.environment={environment}"
            raise ConfigError(f"collect.controller_weights=sb3 plays {path}, which does not "
                              f"exist: train the run's policy first (train_controller.py "
                              f"--algo {algo}{where})")
        return path
    path = run.controller.weights(weights)
    if weights == "selected" and not path.exists():  # CMA-ES ran no selection evaluation
        path = run.controller.weights(run.controller.default_weights())
    if not path.exists():
        raise ConfigError(f"collect.policy=controller plays {path}, which does not exist: "
                          "train the run's controller first (train_controller.py)")
    return path


def _worker_agent(task: EpisodeTask, env: gym.Env) -> tuple[VMCAgent, dict[str, Any]]:
    """The run's V-M-C agent and the shard meta naming its weights, loaded once per
    worker process."""
    run = RunDir(task.run_dir)
    path = controller_weights_path(run, task.controller_weights, task.controller_algo,
                                   task.controller_environment, task.index)
    # the stamps: a later round of iterative training replaces V-M-C's weights, and this
    # process (the serial engine) may have loaded the earlier ones
    key = (task.run_dir, task.controller_weights, run.models_stamp(), path.name,
           file_stamp(path))
    if key not in _WORKER_AGENTS:
        for old in [k for k in _WORKER_AGENTS  # weights since replaced (V, M or this C)
                    if k[:2] == key[:2] and (k[2] != key[2] or k[3] == key[3])]:
            del _WORKER_AGENTS[old]
        torch.set_num_threads(1)  # one frame a step: threads only contend
        cfg = run.load_config()
        if task.controller_weights == "sb3":
            from agents.sb3 import sb3_controller  # SB3 loads only when played

            policy = sb3_controller(run, cfg, task.controller_algo,
                                    task.controller_environment)
            policy.deterministic = True  # its mean action; exploration is the epsilon
            agent = VMCAgent.from_run(run, cfg, env.action_space, controller=policy)
        elif task.controller_weights == "finalists":
            controller = run.new_controller(cfg, env.action_space, run.load_memory())
            load_weights(path, controller)
            agent = VMCAgent.from_run(run, cfg, env.action_space, controller=controller.eval())
        else:
            agent = VMCAgent.from_run(run, cfg, env.action_space, path.stem)
        meta = {"weights": path.stem, "digest": file_digest(path),
                "epsilon": task.controller_epsilon}
        _WORKER_AGENTS[key] = (agent, meta)
    return _WORKER_AGENTS[key]


def collect_episode(task: EpisodeTask) -> int:
    """Worker entry point: collect and atomically write one shard; returns its steps."""
    env = _worker_env(task.env)
    agent, controller_meta = None, None
    if task.policy == "controller":
        agent, controller_meta = _worker_agent(task, env)
    shard = run_episode(env, task.policy, task.seed, task.index, task.brownian_dt,
                        task.linear_std, agent, task.controller_epsilon, task.hold_max)
    shard.meta["env_id"] = task.env["id"]
    shard.meta["env"] = env_settings(task.env)
    if controller_meta is not None:
        shard.meta["controller"] = controller_meta
    shard.save(Path(task.out_dir) / shard_name(task.index), compress_level=task.compress_level)
    return len(shard)


def policy_for(segments: list[tuple[str, int]], index: int) -> str:
    """The data policy of episode ``index`` under a parsed ``collect.policy``
    (:func:`worldmodels.config.policy_schedule`); past the last segment, its policy."""
    start = 0
    for name, n in segments:
        if n < 0 or index < start + n:
            return name
        start += n
    return segments[-1][0]


def probe_env(cfg: ExperimentConfig, run: RunDir) -> None:
    """Make the env and the data policies once here, so a bad env id, a missing package
    or a policy that does not fit the action space fails before any worker starts; and
    an untrained C, so ``controller.*`` keys that do not fit the actions (``clip_dims``
    of a dim the env lacks) fail before the stages that come before C's."""
    env = make_env_from_config(cfg.env)
    try:
        # a rendered picture's height is known only at its first frame: env.crop_bottom
        # is checked here, not in a worker after config.yaml is written
        env.reset(seed=cfg.seed)
        build_controller(cfg.controller, 1, env.action_space)
        for name, _ in policy_schedule(cfg.collect.policy):
            if name == "controller":  # its weights must exist; the agent loads in workers
                controller_weights_path(run, cfg.collect.controller_weights,
                                        cfg.controller.algo, cfg.controller.environment)
                continue
            make_policy(name, env.action_space, np.random.default_rng(0),
                        cfg.collect.brownian_dt, cfg.collect.linear_std,
                        hold_max=cfg.collect.hold_max)
    finally:
        env.close()


def env_settings(env: dict[str, Any]) -> dict[str, Any]:
    """The ``env.*`` settings a shard records beside its env id (what changes its frames,
    rewards or lengths): all but ``fast_render``, whose frames are Gymnasium's."""
    return {k: v for k, v in env.items() if k not in ("id", "fast_render")}


def check_compatible(shards: list[Path], cfg: ExperimentConfig, env_settings_too: bool = True,
                     ) -> None:
    """Refuse to resume into shards collected with another env, seed or policy, and (with
    ``env_settings_too``: when episodes are to be added) other ``env.*`` settings; a
    collection with nothing to add mixes nothing (``run.py env.max_episode_steps=10``
    evaluates under another cap). With ``data.skip_corrupt`` an unreadable shard is kept
    as it is (and counted as collected): the later stages skip it and list it in
    ``skipped_shards.json``."""
    schedule = policy_schedule(cfg.collect.policy)
    unreadable = []
    for path in shards:
        try:
            meta = read_meta(path)
        except ShardError as err:
            if not cfg.data.skip_corrupt:
                raise
            unreadable.append(str(err))
            continue
        policy = policy_for(schedule, shard_index(path))
        c = cfg.collect
        setting = policy_settings(policy, c.brownian_dt, c.linear_std, c.hold_max)
        want = {"env_id": cfg.env.id, "seed": cfg.seed, "policy": policy, **setting}
        for key, value in want.items():
            # shards from before brownian_dt and linear_std were recorded lack them
            if key in ("brownian_dt", "linear_std") and key not in meta:
                continue
            if meta.get(key) != value:
                raise ShardError(
                    f"{path}: collected with {key}={meta.get(key)!r}, this run asks for "
                    f"{key}={value!r}; use another run name (name=...) or directory")
        # shards from before the env settings were recorded lack them
        recorded = (meta.get("env") or {}) if env_settings_too else {}
        asked = env_settings(asdict(cfg.env))
        differ = sorted(k for k in recorded if k in asked and recorded[k] != asked[k])
        if differ:
            raise ShardError(
                f"{path}: collected with " + ", ".join(
                    f"env.{k}={recorded[k]!r}" for k in differ) + ", this run asks for "
                + ", ".join(f"env.{k}={asked[k]!r}" for k in differ)
                + "; use another run name (name=...) or directory")
    if unreadable:
        print(f"{len(unreadable)} unreadable rollout shard(s) kept as they are "
              f"(data.skip_corrupt: later stages skip them); first: {unreadable[0]}")


@dataclass
class CollectReport:
    episodes_total: int
    episodes_new: int
    steps_new: int
    seconds: float
    #: (seconds since start, steps) as each episode finished, in completion order
    timeline: list[tuple[float, int]] = field(default_factory=list, repr=False)

    @property
    def steps_per_second(self) -> float:
        return self.steps_new / self.seconds if self.seconds > 0 else 0.0


def collect(cfg: ExperimentConfig, run: RunDir | None = None, out_dir: Path | None = None,
            progress: bool = True) -> CollectReport:
    """Collect shards until the run's ``rollouts/`` (or ``out_dir``) holds
    ``cfg.collect.episodes`` of them; the run is ``cfg``'s default directory unless
    given."""
    run = run or RunDir.for_config(cfg)
    probe_env(cfg, run)
    out = Path(out_dir) if out_dir is not None else run.rollouts
    existing = list_shards(out)
    have = {shard_index(p) for p in existing}
    todo = [i for i in range(cfg.collect.episodes) if i not in have]
    check_compatible(existing, cfg, env_settings_too=bool(todo))
    if out_dir is None:
        run.write_config(cfg, outputs=(out,))  # inputs accepted
    else:
        check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_partial_files(out)
    if len(have) > cfg.collect.episodes:  # collect never deletes an episode
        print(f"note: {out} holds {len(have)} episodes, more than collect.episodes="
              f"{cfg.collect.episodes}; the later stages use all {len(have)}",
              file=sys.stderr)
    c = cfg.collect
    schedule = policy_schedule(c.policy)
    tasks = [EpisodeTask(i, cfg.seed, str(out), asdict(cfg.env), policy_for(schedule, i),
                         c.brownian_dt, c.linear_std, c.compress_level, str(run.path),
                         c.controller_weights, c.controller_epsilon, cfg.controller.algo,
                         cfg.controller.environment, c.hold_max)
             for i in todo]
    start = time.perf_counter()
    steps = 0
    timeline: list[tuple[float, int]] = []
    bar = tqdm(total=cfg.collect.episodes, initial=len(have), desc=f"collect {cfg.env.id}",
               unit="ep", disable=not progress)
    with bar:
        for _, n in run_tasks(collect_episode, tasks, c.engine, c.workers, c.ray_address):
            timeline.append((time.perf_counter() - start, n))
            steps += n
            bar.update(1)
            bar.set_postfix(steps_per_s=f"{steps / (time.perf_counter() - start):.0f}")
    return CollectReport(len(have) + len(todo), len(todo), steps,
                         time.perf_counter() - start, timeline)


def describe(report: CollectReport) -> dict[str, Any]:
    summary = {**asdict(report), "steps_per_second": report.steps_per_second}
    summary.pop("timeline")
    return summary
