"""Evaluate a policy in the real env: fixed seeds, per-episode CSV, mean and std, video.

The policy is the run's trained controller (``controller/selected.safetensors`` when
CMA-ES selected one, else ``best``; or the weights named), a uniform random policy or an
SB3 policy, all scored on the same episodes (:func:`agents.seeds.evaluation_seeds`, never
the seeds CMA-ES selected the controller on).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from agents.cmaes import ProcessEvaluator
from agents.rollouts import RolloutWorker, describe_returns
from agents.sb3 import SB3_ALGORITHMS, play_policy_episodes, sb3_controller
from agents.seeds import check_report_seeds, evaluation_seeds, selection_of
from worldmodels.atomic import check_writable
from worldmodels.checkpoint import (
    file_digest,
    load_weights,
    read_header,
    read_json,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from worldmodels.config import ConfigError, ExperimentConfig, load_yaml
from worldmodels.pictures import recon_grid
from worldmodels.run_dir import CONTROLLER_WEIGHTS, RunDir

SB3_POLICIES = tuple(SB3_ALGORITHMS)
#: what ``evaluate`` can play: the CMA-ES controller, uniform random actions, SB3 policies
EVAL_POLICIES = ("controller", "random", *SB3_POLICIES)


#: what an evaluation's JSON must repeat for a new one under its name to replace it
#: losslessly (the same seeds, the same agent, the same returns)
_SAME_EVALUATION = ("episodes", "mean", "std", "min", "max", "digests")


def keep_replaced(out: Path, name: str, summary: dict[str, Any]) -> Path | None:
    """Move an earlier evaluation under ``name`` in ``out`` that ``summary`` does not
    reproduce (other episodes, another agent or other returns, say a 2-episode check
    after a 100-episode report) to ``out/replaced/<name>.<N>ep[.k].json`` and ``.csv``
    rather than overwrite it; returns where its JSON went, None if nothing moved."""
    old_json = out / f"{name}.json"
    if not old_json.is_file():
        return None
    try:
        old = json.loads(old_json.read_text())
    except (OSError, ValueError):
        old = {}  # unreadable: kept aside too, never overwritten
    old = old if isinstance(old, dict) else {}
    if old and all(old.get(k) == summary.get(k) for k in _SAME_EVALUATION):
        return None
    stem = f"{name}.{old.get('episodes', 'unknown')}ep"
    target, k = out / "replaced" / f"{stem}.json", 1
    while target.exists():
        k += 1
        target = out / "replaced" / f"{stem}.{k}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    old_csv = out / f"{name}.csv"
    if old_csv.is_file():
        old_csv.replace(target.with_suffix(".csv"))
    for gif in out.glob(f"{name}_episode*.gif"):  # its films go with it
        gif.replace(target.with_name(f"{target.stem}_{gif.name[len(name) + 1:]}"))
    old_json.replace(target)
    what = (f"{old.get('episodes', '?')} episodes, mean {old['mean']:.1f}"
            if isinstance(old.get("mean"), (int, float)) else "unreadable")
    print(f"kept the earlier evaluation {old_json.name} ({what}) as {target}")
    return target


def write_evaluation(out: Path, policy: str, rows: list[dict[str, Any]],
                     summary: dict[str, Any]) -> None:
    """``<out>/<policy>.csv`` (one row an episode) and ``.json``; an earlier evaluation
    under that name that this one does not reproduce is kept aside (:func:`keep_replaced`).
    One it reproduces keeps its ``key`` (what ``run.py`` checks to reuse it) when this
    one has none: evaluate.py on the run's own evaluation episodes plays them again, and
    ``run.py`` would otherwise play them a third time."""
    if keep_replaced(out, policy, summary) is None and "key" not in summary:
        old = read_json(out / f"{policy}.json", {})
        if isinstance(old, dict) and "key" in old:
            summary = {**summary, "key": old["key"]}
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / f"{policy}.csv", text.getvalue())
    write_json_atomic(out / f"{policy}.json", summary)


#: overrides of a trained run's config that change how its agent plays in the real env,
#: so each names its own result files (:func:`result_name`)
NAMED_OVERRIDES = ("env.", "controller.agent_precision=", "controller.sb3_deterministic=")
#: the overrides its workers read (the other runtime keys say how to run the evaluator)
PLAY_OVERRIDES = (*NAMED_OVERRIDES, "dream.")


def play_overrides(overrides: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The overrides (``key=value``) of :data:`PLAY_OVERRIDES`."""
    return tuple(o for o in overrides if o.startswith(PLAY_OVERRIDES))


def result_name(policy: str, weights: str = "best", overrides: tuple[str, ...] = (),
                sb3_environment: str = "real", seed: int | None = None) -> str:
    """The stem of an evaluation's files in ``eval/``: ``controller`` (its ``best``
    weights), ``controller_<weights>`` for others, ``<algo>_<environment>`` for an SB3
    policy trained in the dream; each ``env.*`` or ``controller.agent_precision``
    override adds its own suffix (e.g. ``controller_selected_direct_render-false``,
    ``controller_agent_precision-bfloat16``), so the run's own result stays; so does
    ``seed``, the report seed set when it is not the run's own (:func:`other_seed`).

    The suffixes are the values as the config reads them, sorted by key: ``=3`` and
    ``=03``, ``false`` and ``False``, any order, name one file. A whole mapping
    (``env.kwargs={...}``, which replaces the run's) and one entry of it
    (``env.kwargs.x=1``, which keeps the others) are different settings and name
    different files. Keys and values keep only characters safe in a file name
    (``env.id=ALE/Pong-v5``: ``id-ALE-Pong-v5``); a long value is a digest."""
    name = policy
    if policy == "controller" and weights != "best":
        name = f"controller_{weights}"
    elif policy in SB3_POLICIES and sb3_environment != "real":
        name = f"{policy}_{sb3_environment}"
    settings: dict[str, Any] = {}  # (a key given twice: the last, as the config reads it)
    for override in overrides:
        if override.startswith(NAMED_OVERRIDES):
            key, _, raw = override.partition("=")
            settings[key.strip().removeprefix("env.").removeprefix("controller.")] = \
                _read_value(raw)
    if settings:
        name += "_" + "_".join(f"{_safe_text(key)}-{_file_safe(settings[key])}"
                               for key in sorted(settings))
    return name if seed is None else f"{name}_seed{seed}"


def _read_value(raw: str) -> Any:
    """An override's value as the config reads it (YAML)."""
    try:
        return load_yaml(raw) if raw else ""
    except yaml.YAMLError:  # (the config refuses it before any file is named)
        return raw


def _file_safe(value: Any) -> str:
    """``value`` in a file name: YAML's spelling of it (``false``, ``0.9``), characters
    other than letters, digits, ``.``, ``+`` and ``-`` as ``-``; over 40 characters, the
    first 8 hex digits of its SHA-256."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    safe = _safe_text(text)
    return safe if len(safe) <= 40 else hashlib.sha256(text.encode()).hexdigest()[:8]


def _safe_text(text: str) -> str:
    """``text`` with each run of characters other than letters, digits, ``_``, ``.``,
    ``+`` and ``-`` as one ``-``."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-") or "empty"


def other_seed(run: RunDir, seed: int) -> int | None:
    """``seed`` when it is not the run's own ``seed`` (its evaluation seeds then name
    their own files, e.g. ``controller_selected_seed1``), else None."""
    return None if seed == run.load_config().seed else seed


def default_policy(run: RunDir) -> str:
    """What evaluate.py and dream.py play when no ``--policy`` is given: a shipped
    agent's own (``shipped.json``'s ``policy``), else the run's CMA-ES controller when it
    has one, else the first SB3 policy it trained in the real env, else ``controller``
    (whose absence the caller then reports)."""
    if run.is_shipped:
        policy = run.shipped_info().get("policy", "controller")
        if policy not in EVAL_POLICIES:
            raise ConfigError(f"{run.shipped_file}: policy '{policy}' is not one this version "
                              f"plays ({', '.join(EVAL_POLICIES)})")
        return policy
    if any(run.controller.weights(w).exists() for w in CONTROLLER_WEIGHTS):
        return "controller"
    environment = run.load_config().controller.environment
    return next((a for a in SB3_POLICIES
                 if all(p.exists() for p in run.controller.sb3(a, environment))), "controller")


def _selection(run: RunDir, policy: str, weights: str, sb3_environment: str,
               ) -> tuple[int, int] | None:
    """(seed, episodes) of the selection that chose the policy to be played, if any."""
    if policy == "controller":
        # best and mean come from the run whose selected C was chosen on those seeds (and
        # with several searches, from the search chosen there): the same seeds are kept
        # apart for every weights file of the run
        for path in (run.controller.weights(weights), run.controller.selected):
            chosen = selection_of(read_header(path).get("meta", {})) \
                if path.exists() else None
            if chosen is not None:
                return chosen
        return None
    if policy in SB3_POLICIES:
        meta = run.controller.sb3(policy, sb3_environment)[1]
        if meta.exists():
            try:
                return selection_of(json.loads(meta.read_text()))
            except (json.JSONDecodeError, TypeError, ValueError):
                return None  # (the policy's loader names the bad file)
    return None


def agent_digests(run: RunDir, weights: Path) -> dict[str, str]:
    """Short SHA-256s of what a trained policy's evaluation plays: C's ``weights`` and
    the V and M it reads (the policy sees [z, h]), as run.py's evaluation key names them;
    taken when the weights are loaded, before play."""
    return {"weights": file_digest(weights), **run.world_model_digests()}


def _evaluate_sb3(run: RunDir, cfg: ExperimentConfig, algo: str, environment: str,
                  seeds: list[int], out: Path, name: str, extra: dict[str, Any],
                  video_episodes: int, video_stride: int) -> dict[str, Any]:
    """An SB3 policy trained by ``train_controller.py --algo`` on the same seeds, played
    ``controller.batch_envs`` episodes at a time (V and M batched); GIFs of the first
    ``video_episodes``, recorded in the same batched play (the very episodes scored)."""
    started = time.perf_counter()
    controller = sb3_controller(run, cfg, algo, environment)
    played = agent_digests(run, run.controller.sb3(algo, environment)[0])
    results = play_policy_episodes(run, cfg, controller, seeds, cfg.controller.batch_envs,
                                   record=video_episodes)
    rows = [{"episode": i, "seed": s, "return": r.ret, "steps": r.steps}
            for i, (s, r) in enumerate(zip(seeds, results, strict=True))]
    summary = {"policy": name, **describe_returns(np.array([r.ret for r in results])),
               "seconds": time.perf_counter() - started, **extra, "digests": played}
    write_evaluation(out, name, rows, summary)  # (an earlier one's GIFs set aside first)
    if video_episodes:
        vae = run.load_vae(cfg.vae.z_dim)
        for i, result in enumerate(results[:video_episodes]):
            save_video(vae, np.stack(result.frames), out / f"{name}_episode{i}.gif",
                       video_stride)
    return summary


def evaluate(run: RunDir, episodes: int = 100, policy: str = "controller",
             seed: int | None = None, video_episodes: int = 0, engine: str = "process",
             workers: int = 0, ray_address: str = "", progress: bool = True,
             key: dict[str, Any] | None = None, weights: str | None = None,
             overrides: tuple[str, ...] = (), out_dir: Path | None = None,
             sb3_environment: str = "real", video_stride: int = 1) -> dict[str, Any]:
    """Play ``episodes`` real episodes of ``policy`` on the evaluator's workers.

    ``overrides`` (``env.<key>=<value>``) play the trained agent in another variant of
    the run's env, e.g. ``env.direct_render=false`` for Gymnasium's renderer; the
    summary records them and the files get their own names. ``seed``: whose report
    seeds to play (:func:`agents.seeds.evaluation_seeds`); None, the run's own
    ``seed``, as ``evaluate.py`` plays by default.

    Writes ``<out_dir>/<policy>.csv`` (episode, seed, return, steps) and ``<policy>.json``
    (mean, std, min, max, and ``key`` if given: what the caller checks to reuse it);
    GIFs of the first ``video_episodes`` (every ``video_stride``-th frame), named as the
    result (``<policy>_episode<i>.gif``). ``out_dir`` defaults to
    the run's ``eval/`` (for a shipped agent, ``runs/pretrained/<name>/eval`` under the
    working directory: :attr:`RunDir.eval_dir`). ``weights``: the controller's ``best``
    candidate, CMA-ES's ``mean`` or the ``selected`` one of them (files
    ``controller_<weights>.*``); None: the run's default
    (:meth:`ControllerFiles.default_weights`). ``sb3_environment``: where the SB3 policy
    was trained (``real`` or ``dream``). Every input is checked, and ``out_dir`` made,
    before the first episode.
    """
    if policy not in EVAL_POLICIES:
        raise ConfigError(f"policy must be one of {', '.join(EVAL_POLICIES)}, not '{policy}'")
    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}")
    cfg = run.load_config(overrides)
    seed = cfg.seed if seed is None else seed
    weights = weights or run.controller.default_weights()
    run.controller.weights(weights)  # a known name
    name = result_name(policy, weights, tuple(overrides), sb3_environment,
                       other_seed(run, seed))
    out = Path(out_dir) if out_dir is not None else run.eval_dir
    check_writable(out)
    seeds = evaluation_seeds(seed, episodes)
    check_report_seeds(seeds, _selection(run, policy, weights, sb3_environment),
                       f"the {policy}")
    if policy in SB3_POLICIES:
        env_overrides = [o for o in overrides if o.startswith("env.")]
        extra = {**({"key": key} if key else {}),
                 **({"env_overrides": env_overrides} if env_overrides else {})}
        return _evaluate_sb3(run, cfg, policy, sb3_environment, seeds, out, name, extra,
                             video_episodes, video_stride)
    params, worker = None, None
    with contextlib.ExitStack() as opened:  # the envs and worker processes, closed last
        if policy == "controller":  # (the random policy needs no V, M or env here)
            path = run.trained_controller(weights)
            worker = opened.enter_context(contextlib.closing(
                RolloutWorker(run, overrides=tuple(overrides))))
            load_weights(path, worker.controller)
            played = agent_digests(run, path)
            params = worker.controller.get_flat().numpy()
        started = time.perf_counter()
        if progress:
            print(f"evaluate {policy}: {episodes} episodes on {engine} workers")
        evaluator = opened.enter_context(contextlib.closing(ProcessEvaluator(
            run, engine, workers, ray_address, overrides=tuple(overrides),
            batch=cfg.controller.batch_envs)))
        returns, steps = evaluator.returns([params], seeds)
        # the GIFs carry the result's name: another evaluation's never overwrite them;
        # written after the result, which first sets an earlier one's aside with its GIFs
        films = [np.stack(worker.play_one(params, seeds[i], record=True).frames)
                 for i in range(min(video_episodes, episodes) if worker is not None else 0)]
    rows = [{"episode": i, "seed": s, "return": float(returns[0, i]), "steps": int(steps[0, i])}
            for i, s in enumerate(seeds)]
    env_overrides = [o for o in overrides if o.startswith("env.")]
    summary = {"policy": name, **describe_returns(returns[0]),
               "seconds": time.perf_counter() - started, **({"key": key} if key else {}),
               **({"weights": weights, "digests": played} if policy == "controller" else {}),
               **({"env_overrides": env_overrides} if env_overrides else {}),
               **({"agent_precision": cfg.controller.agent_precision}
                  if cfg.controller.agent_precision != "float32" else {})}
    write_evaluation(out, name, rows, summary)
    for i, frames in enumerate(films):
        assert worker is not None  # (films are the controller's)
        save_video(worker.agent.vae, frames, out / f"{name}_episode{i}.gif", video_stride,
                   device=worker.agent.device)
    return summary


@torch.no_grad()
def save_video(vae: Any, frames: np.ndarray, path: Path, stride: int = 1, fps: int = 30,
               device: str | torch.device = "cpu") -> None:
    """Real frames (left) beside V's reconstructions (right), as a GIF of every
    ``stride``-th frame (shown ``stride`` times as long, so the pace stays)."""
    import imageio.v3 as iio

    frames = frames[::stride]
    pictures = []
    for i in range(0, len(frames), 256):
        chunk = frames[i : i + 256]
        mu, _ = vae.encode(torch.from_numpy(chunk).to(device))
        recon = (vae.decode(mu).clamp(0, 1) * 255).byte().permute(0, 2, 3, 1).cpu().numpy()
        for real, fake in zip(chunk, recon, strict=True):
            pictures.append(recon_grid(real[None], fake[None], scale=2))
    write_bytes_atomic(path, iio.imwrite("<bytes>", np.stack(pictures), extension=".gif",
                                         duration=1000 * stride / fps, loop=0))
