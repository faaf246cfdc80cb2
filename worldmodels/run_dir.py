"""A run is its directory: :class:`RunDir` owns every path of one experiment and loads
its config, V, M and C.

    runs/CarRacing-v3/quick/
        config.yaml            the resolved config (config.prev.yaml: the one before)
        rollouts/ep_*.npz      collect          latents/ep_*.npz   encode
        vae/                   train_vae        memory/            train_frmdn
        controller/            train_controller eval/              evaluate (and checks)
        dreams/                dream.py         tensorboard/<stage>/
        memory_compare/        compare_memory.py
        controller_compare/    compare_controllers.py: CMA-ES runs in the dreams of
                               memory_compare's Ms (:class:`ControllerCompareFiles`,
                               each run seen through a :class:`RunView`)
        iterations/round_<r>/  run.py with run.iterations > 1: what each round left
                               (:class:`RoundFiles`); iterations/agent.json: the
                               round in memory/, controller/ and eval/ when
                               run.agent_round=best picked an earlier one

M's ``memory/`` keeps the last epoch's weights (``model.safetensors``, which training
resumes from) and the best held-out epoch's (``best.safetensors``); later stages (the
dream check, C, dreams, evaluation) load the best (:meth:`MemoryFiles.weights`).

A run is located by the directory it is given, wherever it is and whatever the working
directory: a run copied elsewhere, or shipped under ``pretrained/<name>/``, works
unchanged. Only :meth:`RunDir.for_config` derives a directory from a config (its
``root``, env and ``name``): the default place of a new run.

A command writes the run's ``config.yaml`` (:meth:`RunDir.write_config`) only once its
inputs have been checked, so a refused command leaves the run as it was.

A shipped agent (``tools/export_pretrained.py``: ``config.yaml``, V, M, one C and
``shipped.json``) is a run that is only read: evaluate.py and dream.py play it, their
default outputs go to ``runs/pretrained/<its directory's name>/`` under the working
directory (:attr:`RunDir.output_dir`), and training entry points refuse it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import yaml

# the package's memory models: importing them registers them (memory.kind, checkpoints)
from worldmodels import frmdn, gru_mdn, mdn_rnn  # noqa: F401
from worldmodels.atomic import check_writable
from worldmodels.checkpoint import (
    CheckpointError,
    file_digest,
    load_model,
    load_weights,
    read_header,
    write_text_atomic,
)
from worldmodels.config import (
    CONFIG_FILE_KEYS,
    RUN_CONFIG,
    SB3_ALGOS,
    ConfigError,
    ExperimentConfig,
    config_from_args,
    env_slug,
    exit_on_help_config,
    load_config,
    parse_override,
    preset_names,
    preset_overrides,
    read_yaml,
    refuse_missing_engines,
    to_dict,
)
from worldmodels.controller import FlatPolicy, build_controller
from worldmodels.errors import current_command, on_refusal
from worldmodels.memory import Memory, checkpoint_kinds
from worldmodels.shards import ShardError, action_space_from_meta, list_shards, read_meta
from worldmodels.vae import ConvVAE

#: config sections a command may change for an already trained run (the rest are fixed
#: by the files the run's stages wrote): the env it plays, its dream, and how to run
TRAINED_RUN_SECTIONS = ("env", "dream")
#: the file that marks a shipped agent (written by tools/export_pretrained.py)
SHIPPED_FILE = "shipped.json"
#: the file that makes a run train controllers on another run's (or a shipped agent's) V
#: and M (``train_controller.py --world-model``; :func:`borrow_world_model`)
WORLD_MODEL_FILE = "world_model.json"
RUNTIME_KEYS = ("seed", "device", "root", "name", "controller.engine", "controller.workers",
                "controller.ray_address", "controller.eval_episodes",
                "controller.agent_precision", "controller.sb3_deterministic")


@dataclass(frozen=True)
class VAEFiles:
    dir: Path
    model: Path
    state: Path
    mean: Path  # the mean training frame, the MSE baseline
    grid: Path  # reconstruction grid PNG
    metrics: Path

    @classmethod
    def at(cls, d: Path) -> VAEFiles:
        return cls(d, d / "model.safetensors", d / "train_state.safetensors",
                   d / "mean_frame.npy",
                   d / "recon.png", d / "metrics.json")


@dataclass(frozen=True)
class MemoryFiles:
    dir: Path
    model: Path
    state: Path
    metrics: Path
    best: Path  # the chosen epoch's weights (frmdn_training.selection_key)
    tensorboard: Path

    def epoch_weights(self, epoch: int) -> Path:
        """The weights kept of scored epoch ``epoch`` (``memory.keep_epochs``)."""
        return self.dir / "epochs" / f"epoch_{epoch:03d}.safetensors"

    @property
    def held_check_png(self) -> Path:
        """The held-action check of every epoch, drawn (``memory.select_max_held``)."""
        return self.dir / "held_check.png"

    @classmethod
    def at(cls, d: Path) -> MemoryFiles:
        """The files of an M trained into ``d`` (a run's ``memory/``, or a variant's
        directory under ``memory_compare/``): ``model`` holds the last epoch's weights
        (training resumes from them), ``best`` the best held-out epoch's; its TensorBoard
        log is ``tensorboard/<d's name>`` beside ``d``."""
        d = Path(d)
        return cls(d, d / "model.safetensors", d / "train_state.safetensors",
                   d / "metrics.json", d / "best.safetensors", d.parent / "tensorboard" / d.name)

    def weights(self, which: str = "best") -> Path:
        """The weights later stages load: ``best`` (the default; the last epoch's for an M
        trained without early selection) or ``last``."""
        if which not in ("best", "last"):
            raise ConfigError(f"M's weights must be best or last, not '{which}'")
        return self.best if which == "best" and self.best.exists() else self.model


#: the controller files a run can have: ``best`` (CMA-ES's luckiest candidate), ``mean``
#: (its search mean), ``selected`` (whichever scored higher on the selection seeds)
CONTROLLER_WEIGHTS = ("selected", "best", "mean")


def finalist_stem(search: int, source: str, generation: int) -> str:
    """A finalist's file stem, in ``controller/finalists/`` and in report files."""
    return f"finalist_{search}_{source}_{generation}"


@dataclass(frozen=True)
class ControllerFiles:
    dir: Path
    history: Path  # CMA-ES fitness values, replayed on resume
    best: Path
    mean: Path
    selected: Path  # best or mean, whichever had the higher selection mean ever seen
    log: Path
    fitness_plot: Path

    @classmethod
    def at(cls, d: Path) -> ControllerFiles:
        return cls(d, d / "cmaes_history.npz", d / "best.safetensors", d / "mean.safetensors",
                   d / "selected.safetensors", d / "generations.json", d / "fitness.png")

    @property
    def searches(self) -> Path:
        """``controller.restarts`` > 1: every search's figures and the winner
        (:mod:`agents.searches`)."""
        return self.dir / "searches.json"

    @property
    def final(self) -> Path:
        """``controller.final_candidates`` > 0: the finalists' scores on the second
        selection stage (:mod:`agents.finalists`)."""
        return self.dir / "final.json"

    @property
    def finalists(self) -> Path:
        """``controller.final_candidates`` > 0: every finalist's weights,
        ``finalist_<search>_<source>_<generation>.safetensors``, first stage's ranking
        order in their meta (what ``collect.controller_weights=finalists`` plays)."""
        return self.dir / "finalists"

    def finalist_weights(self) -> list[Path]:
        """The finalists' weights files, first stage's ranking order; a clear error when
        the run's C had no second selection stage, or when the folder does not hold
        exactly the finalists its ``selected`` C was chosen among (a kill mid-write, a C
        trained again since)."""
        folder = self.finalists
        paths = {p.name.removesuffix(".safetensors"): p
                 for p in folder.glob("finalist_*.safetensors")} if folder.is_dir() else {}
        if not paths:
            raise ConfigError(
                f"{folder}: no finalists' weights. The second selection stage writes them: "
                "train the run's C with controller.final_candidates and "
                "controller.final_episodes (for a C trained before the stage wrote them, "
                "run train_controller.py again: it plays nothing new and writes them)")
        meta = read_header(self.selected).get("meta", {}) if self.selected.exists() else {}
        final = meta.get("final") if isinstance(meta.get("final"), dict) else {}
        wanted = [finalist_stem(f["search"], f["source"], f["generation"])
                  for f in final.get("finalists", [])]
        if sorted(wanted) != sorted(paths):
            raise ConfigError(
                f"{folder}: holds {', '.join(sorted(paths))}, but {self.selected} was "
                f"chosen among {', '.join(wanted) or 'no finalists'}; run "
                "train_controller.py again, which plays nothing new and writes them")
        return [paths[stem] for stem in wanted]

    def search(self, k: int) -> ControllerFiles:
        """The files of CMA-ES search ``k`` of several: ``searches/<k>/``."""
        return ControllerFiles.at(self.dir / "searches" / str(k))

    def weights(self, which: str) -> Path:
        """``best`` (CMA-ES's best candidate), ``mean`` (its search mean) or ``selected``
        (the one of them with the highest mean on the selection seeds)."""
        if which not in CONTROLLER_WEIGHTS:
            raise ConfigError("controller weights must be "
                              f"{', '.join(CONTROLLER_WEIGHTS)}, not '{which}'")
        return getattr(self, which)

    def default_weights(self) -> str:
        """The run's controller when none is named: ``selected`` if CMA-ES wrote it, else
        ``best`` (else ``mean``: a shipped agent may hold only that one)."""
        return next((w for w in CONTROLLER_WEIGHTS if self.weights(w).exists()), "best")

    @staticmethod
    def _sb3_stem(algo: str, environment: str) -> str:
        return f"sb3_{algo}" + ("" if environment == "real" else f"_{environment}")

    def sb3(self, algo: str, environment: str = "real") -> tuple[Path, Path]:
        """(weights, meta) of an SB3 policy, the one evaluation plays (the best on the
        selection seeds when training evaluated it there, else the last); one trained
        in the dream has its own files."""
        stem = self._sb3_stem(algo, environment)
        return self.dir / f"{stem}.safetensors", self.dir / f"{stem}.json"

    def sb3_checkpoint(self, algo: str, environment: str = "real") -> Path:
        """SB3 training state (policy, optimizers, step count, reward statistics, the
        episode log and the selected policy), which a rerun resumes from."""
        return self.dir / f"{self._sb3_stem(algo, environment)}_checkpoint.safetensors"

    def sb3_curve(self, algo: str, environment: str = "real") -> Path:
        """SB3 learning curve PNG: training episode returns (and selection means)."""
        return self.dir / f"{self._sb3_stem(algo, environment)}_curve.png"


@dataclass(frozen=True)
class RoundFiles:
    """What one round of iterative training (``run.iterations`` > 1) keeps, under
    ``iterations/round_<r>/``: copies of the files the round's stages left in the run's
    ``memory/``, ``controller/`` and ``eval/`` (which the next round changes), and its
    figures. ``summary`` is written last: a round with one is finished, and a rerun
    reads it instead of playing the round again."""

    dir: Path
    number: int
    summary: Path  # the round's stage figures (as the run's summary.json has them)
    state: Path  # progress marks inside the round (C's files cleared for its CMA-ES)
    progress: Path  # figures of the stages a killed invocation finished (until summary)
    memory: MemoryFiles  # best.safetensors and metrics.json: M as the round left it
    controller: ControllerFiles  # C's weights, CMA-ES history, log and plot
    eval_dir: Path  # eval/*.json and *.csv: the round's evaluations and dream check

    @classmethod
    def at(cls, d: Path, number: int) -> RoundFiles:
        return cls(d, number, d / "summary.json", d / "state.json", d / "progress.json",
                   MemoryFiles.at(d / "memory"), ControllerFiles.at(d / "controller"),
                   d / "eval")


@dataclass(frozen=True)
class ControllerCompareFiles:
    """The population experiment (``compare_controllers.py``): one CMA-ES run per (M
    variant, population, seed) in its own directory, and the tables and plot over them."""

    dir: Path
    results: Path  # results.json: one row per run
    table: Path  # results.md
    plot: Path  # population.png: real score against population, one line per M
    transfer: Path  # transfer.png: each run's real score against its final dream fitness

    @classmethod
    def at(cls, d: Path) -> ControllerCompareFiles:
        return cls(d, d / "results.json", d / "results.md", d / "population.png",
                   d / "transfer.png")

    def run_home(self, variant: str, population: int, seed: int) -> Path:
        """The directory of one CMA-ES run: its config, controller, evaluations and logs
        (the home of a :class:`RunView`)."""
        return self.dir / variant / f"p{population}_s{seed}"


def file_stamp(*paths: Path) -> tuple[tuple[str, int, int, int], ...]:
    """(path, inode, mtime in ns, size) of each existing file: a cheap identity for
    weights that are only ever replaced whole (atomic writes), so a cache of loaded
    models (a worker's V and M) notices when a later round replaces them."""
    out = []
    for path in paths:
        if path.exists():
            st = path.stat()
            out.append((str(path), st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


class RunDir:
    """One experiment's directory (kept absolute, so a later ``chdir`` or a worker
    process with another working directory finds the same run)."""

    def __init__(self, path: str | Path, follow_marker: bool = True):
        """``follow_marker=False``: a :data:`WORLD_MODEL_FILE` in ``path`` is not read
        (:func:`borrow_world_model` on a directory whose marker's source is gone)."""
        self.path = Path(path).expanduser().absolute()
        #: where the config, summary, C's files and TensorBoard logs live, and M's
        #: directory: the run's own, except in a :class:`RunView`
        self.home = self.path
        self.memory_dir = self.path / "memory"
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"{self.path}: a run directory, but this is a file")
        for parent in self.path.parents:  # a file where a directory of the path belongs
            if parent.exists():
                if not parent.is_dir():
                    raise ConfigError(f"{parent}: a file, so the run directory {self.path} "
                                      "cannot be made under it")
                break
        agent = shipped_agent_holding(self.path.parent)
        if agent is not None:  # (the agent itself is a run, played and never written)
            raise ConfigError(f"{self.path}: inside the shipped agent {agent}, which is only "
                              "read; put the run outside it")
        marker = self.path / WORLD_MODEL_FILE
        # C's run on another run's V and M: its paths are theirs
        if follow_marker and marker.is_file():
            self.path = world_model_source(marker)
            self.memory_dir = self.path / "memory"

    @classmethod
    def for_config(cls, cfg: ExperimentConfig) -> RunDir:
        """The default directory of a run: ``<root>/<env slug>/<name>``."""
        root = Path(cfg.root).expanduser()
        if root.exists() and not root.is_dir():
            raise ConfigError(f"config key 'root' is {cfg.root!r}, a file: root must be a "
                              "directory (that holds run directories)")
        return cls(root / env_slug(cfg.env.id) / (cfg.name or "paper"))

    def __repr__(self) -> str:
        if self.borrows_world_model:
            return f"RunDir('{self.home}', world model '{self.path}')"
        return f"RunDir('{self.path}')"

    def __str__(self) -> str:
        return str(self.home)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other._key() == self._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[Path, Path, Path]:
        return self.path, self.home, self.memory_dir

    # ------------------------------------------------------------------ paths
    @property
    def config_file(self) -> Path:
        return self.home / RUN_CONFIG

    @property
    def prev_config_file(self) -> Path:
        return self.home / "config.prev.yaml"

    @property
    def summary_file(self) -> Path:
        return self.home / "summary.json"

    @property
    def progress_file(self) -> Path:
        """The figures of the stages a killed run.py job finished; gone once its
        summary is written (see ``run.run_stages``)."""
        return self.home / "progress.json"

    @property
    def skipped_shards_file(self) -> Path:
        return self.path / "skipped_shards.json"

    @property
    def rollouts(self) -> Path:
        return self.path / "rollouts"

    @property
    def latents(self) -> Path:
        return self.path / "latents"

    @property
    def vae(self) -> VAEFiles:
        return VAEFiles.at(self.path / "vae")

    @property
    def memory(self) -> MemoryFiles:
        return MemoryFiles.at(self.memory_dir)

    @property
    def controller(self) -> ControllerFiles:
        return ControllerFiles.at(self.home / "controller")

    def world_model_digests(self) -> dict[str, str]:
        """Short SHA-256s of the V and M a policy of this run reads (M: the weights
        :meth:`load_memory` loads), as ``{"vae": ..., "memory": ...}``."""
        files = {"vae": self.vae.model, "memory": self.memory.weights()}
        for path in files.values():
            if not path.is_file():
                raise CheckpointError(f"{path}: no such file; is {self.home} a trained run?")
        return {part: file_digest(path) for part, path in files.items()}

    @property
    def dream_starts(self) -> Path:
        """Dream start latents (``mu``, ``logvar`` (N, z)): the first frames of the
        training episodes. A shipped agent has them here; a run reads them from its latent
        shards, unless ``run.agent_round=best`` put an earlier round's here."""
        return self.path / "dream_starts.npz"

    @property
    def shipped_file(self) -> Path:
        return self.home / SHIPPED_FILE

    def shipped_info(self) -> dict[str, Any]:
        """What ``shipped.json`` says (empty for a run that is not shipped)."""
        if not self.is_shipped:
            return {}
        try:
            info = json.loads(self.shipped_file.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"{self.shipped_file}: unreadable ({err})") from None
        if not isinstance(info, dict):
            raise ConfigError(f"{self.shipped_file}: must hold a mapping")
        return info

    @property
    def world_model_file(self) -> Path:
        return self.home / WORLD_MODEL_FILE

    @property
    def borrows_world_model(self) -> bool:
        """A run that trains only controllers, on the V and M of the run (or shipped
        agent) its :data:`WORLD_MODEL_FILE` names: :attr:`path` (V, shards, dream
        starts) and M are that run's, :attr:`home` is this one."""
        return self.world_model_file.is_file()

    def data_seed(self, cfg: ExperimentConfig) -> int:
        """The seed that split this run's episodes into training and held-out: the one V's
        training recorded (``data_seed``, or ``seed`` in older checkpoints), so that a
        later ``seed=N`` changes what it seeds (M's initialisation, CMA-ES, the evaluation
        seeds) and never which episodes V, M and a dream's starts count as held out. With
        no V yet: ``cfg.seed``, or for a run on another run's world model
        (``--world-model``) that run's own ``seed``."""
        if self.vae.model.exists():
            meta = read_header(self.vae.model).get("meta", {})
            recorded = meta.get("data_seed", meta.get("seed"))
            if recorded is not None:
                return int(recorded)
        if not self.borrows_world_model:
            return cfg.seed
        source = RunDir(self.path)
        return source.load_config().seed if source.has_config() else cfg.seed

    def refuse_borrowed(self) -> None:
        """The data, V and M stages would write into the borrowed run: refused."""
        if self.borrows_world_model:
            raise ConfigError(f"{self.home} trains controllers on the V and M of {self.path} "
                              f"({WORLD_MODEL_FILE}): its data, V and M are that run's; "
                              "only train_controller.py, evaluate.py and dream.py use it")

    @property
    def plays_rounds(self) -> bool:
        """Can this run play rounds of iterative training? Not a shipped agent, nor a run
        on another run's V and M: their ``run.*`` and ``collect.*`` keys only record
        how that V and M were made."""
        return not (self.borrows_world_model or self.is_shipped)

    @property
    def is_shipped(self) -> bool:
        """A shipped agent (``shipped.json``): read, never written."""
        return self.shipped_file.is_file()

    @property
    def world_model_shipped(self) -> bool:
        """Are the V and M this run reads a shipped agent's (the agent itself, or the
        source of a run on its world model)?"""
        return (self.path / SHIPPED_FILE).is_file()

    @property
    def output_dir(self) -> Path:
        """Where evaluations and dreams go by default: the run itself, or for a shipped
        agent ``runs/pretrained/<name>`` under the current working directory."""
        if self.is_shipped:
            out = Path.cwd().absolute() / "runs" / "pretrained" / self.home.name
            if out.resolve().is_relative_to(self.home.resolve()):
                raise ConfigError(f"{self.home} is a shipped agent, only read, and its "
                                  f"outputs would go to {out}, inside it: run from outside "
                                  "it, or give --out")
            return out
        return self.home

    @property
    def eval_dir(self) -> Path:
        return self.output_dir / "eval"

    @property
    def dreams_dir(self) -> Path:
        return self.output_dir / "dreams"

    def refuse_shipped(self) -> None:
        """Training writes into a run: a shipped agent is refused (one-line error)."""
        if self.is_shipped:
            raise ConfigError(f"{self.home} is a shipped agent ({SHIPPED_FILE}), which is "
                              "only read: evaluate or dream it, or train in a run directory")

    @property
    def memory_compare_dir(self) -> Path:
        return self.path / "memory_compare"

    def memory_variant(self, variant: str, seed: int) -> Path:
        """Where ``compare_memory.py`` trains M ``variant`` with ``seed``."""
        return self.memory_compare_dir / f"{variant}__s{seed}"

    @property
    def controller_compare(self) -> ControllerCompareFiles:
        return ControllerCompareFiles.at(self.path / "controller_compare")

    @property
    def iterations_dir(self) -> Path:
        return self.path / "iterations"

    @property
    def agent_round_file(self) -> Path:
        """``iterations/agent.json``: which finished round's files the run's places hold,
        when it is not the latest (``run.agent_round``; agents/agent_round.py)."""
        return self.iterations_dir / "agent.json"

    def round(self, number: int) -> RoundFiles:
        """The kept files of round ``number`` (from 1) of iterative training."""
        if number < 1:
            raise ConfigError(f"rounds count from 1, not {number}")
        return RoundFiles.at(self.iterations_dir / f"round_{number}", number)

    def models_stamp(self) -> tuple[tuple[str, int, int, int], ...]:
        """:func:`file_stamp` of the V and M weights later stages load: changes when
        either is replaced (M after a round of iterative training)."""
        return file_stamp(self.vae.model, self.memory.weights())

    def tensorboard(self, stage: str = "") -> Path:
        """TensorBoard log directory of a stage (``vae``, ``memory``, ``controller``)."""
        return self.home / "tensorboard" / stage if stage else self.home / "tensorboard"

    # ------------------------------------------------------------------ config
    def has_config(self) -> bool:
        return self.config_file.is_file()

    def load_config(self, overrides: tuple[str, ...] | list[str] = (),
                    trained: bool = True, rounds: bool | None = None) -> ExperimentConfig:
        """The run's resolved ``config.yaml`` (checked like any config) with ``overrides``.

        ``trained``: the overrides may only change what a trained run leaves open:
        :data:`TRAINED_RUN_SECTIONS` (play the agent in another variant of its env, say
        ``env.direct_render=false``, or dream at another ``dream.temperature``) and
        :data:`RUNTIME_KEYS`. Overrides that restate the run's own values are fine; any
        other change is refused, since the files of the run's stages fix it.
        ``rounds`` (:func:`~worldmodels.config.validate`): by default false for a run on
        another run's V and M and for a shipped agent, which play no rounds.
        """
        if rounds is None:
            rounds = self.plays_rounds
        if not self.has_config():
            raise ConfigError(f"{self.config_file}: no such file; is {self.home} a run "
                              "directory (made by collect.py or run.py)?")
        if not read_yaml(self.config_file):  # (defaults would silently stand in for it)
            raise ConfigError(f"{self.config_file}: empty; a run's config is written whole by "
                              "its first stage (an earlier one may be in config.prev.yaml)")
        cfg = load_config(str(self.config_file), [], list(overrides), rounds)
        if overrides:
            saved_cfg = load_config(str(self.config_file), rounds=rounds)
            if trained:
                saved = _flatten(to_dict(saved_cfg))
                fixed = fixed_changes(cfg, saved, TRAINED_RUN_SECTIONS)
                if fixed:
                    allowed = ", ".join([f"{s}.*" for s in TRAINED_RUN_SECTIONS]
                                        + list(RUNTIME_KEYS))
                    raise ConfigError(
                        f"{self.home} is a trained run: '{fixed[0]}' is fixed by its files "
                        f"({saved.get(fixed[0])!r}); only {allowed} can change")
            if cfg.env.id != saved_cfg.env.id or cfg.env.kwargs != saved_cfg.env.kwargs:
                self._refuse_other_actions(
                    cfg, "env.id" if cfg.env.id != saved_cfg.env.id else "env.kwargs")
        return cfg

    def _refuse_other_actions(self, cfg: ExperimentConfig, key: str) -> None:
        """A run with an M or episodes, played or trained on in another env (``key``:
        env.id or env.kwargs changed), must act in the same action space as its files
        (was: a traceback from the env or from C's size, an error blaming C's file, or a
        CarRacing agent scored in Pendulum). Spaces compare as their descriptions, with
        float32 tolerance on a Box's bounds (M records them in float32)."""
        from envs.factory import make_env_from_config  # (envs imports this module)

        trained = self.known_action_space()
        if trained is None:
            return  # nothing trained or collected yet: the env is the run's to choose
        env = make_env_from_config(cfg.env)
        try:
            actions = env.action_space
        finally:
            env.close()
        if not same_actions(actions, trained):
            raise ConfigError(f"config key '{key}': {cfg.env.id} (env.kwargs={cfg.env.kwargs}) "
                              f"acts in {actions}, but {self.home}'s M and C were trained on "
                              f"{trained}: play the run in an env with the same actions")

    def changed_keys(self, cfg: ExperimentConfig) -> list[str]:
        """The dotted keys whose values in ``cfg`` differ from the run's ``config.yaml``
        (every key of ``cfg`` when the run has none)."""
        now = _flatten(to_dict(cfg))
        if not self.has_config():
            return sorted(now)
        saved = _flatten(to_dict(load_config(
            str(self.config_file), rounds=self.plays_rounds)))
        return sorted(k for k in set(now) | set(saved) if now.get(k) != saved.get(k))

    def write_config(self, cfg: ExperimentConfig, outputs: tuple[Path, ...] = ()) -> None:
        """Save ``cfg`` as the run's ``config.yaml``, once a command has accepted it.

        First the run's directory and the stage's ``outputs`` (directories) are made
        and a probe file written in each: a read-only place or a full disk stops the
        command here, before any work (:func:`worldmodels.atomic.check_writable`).
        If a different config is there, the changed keys are printed (a rerun with,
        say, more epochs is a normal way to continue a run) and the old file becomes
        ``config.prev.yaml``. Before all that, the run's trained V and M must be what
        ``cfg`` builds (:func:`worldmodels.preflight.refuse_other_models`), so no stage
        leaves a config its files contradict (compare_memory.py writes the run's own
        ``memory.*``, not its variants': :func:`worldmodels.memory_compare.run_config`).
        """
        self.refuse_shipped()
        # (preflight builds M with M's stage, which imports this module)
        from worldmodels.preflight import refuse_other_models

        refuse_other_models(cfg, self)
        text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
        old_text = self.config_file.read_text() if self.config_file.exists() else None
        changed = None  # (no config yet: a new run)
        if old_text is not None:
            old = read_yaml(self.config_file)
            new, before = _flatten(to_dict(cfg)), _flatten(old if isinstance(old, dict) else {})
            changed = sorted(k for k in set(new) | set(before) if new.get(k) != before.get(k))
        refuse_missing_engines(cfg, None if changed is None else set(changed))
        for directory in (self.config_file.parent, *outputs):
            check_writable(directory)
        if old_text == text:
            return
        old_prev = (self.prev_config_file.read_text()
                    if self.prev_config_file.is_file() else None)
        files = _file_times(self)
        if changed is not None:
            print(f"{self.config_file}: config changed since the last run: "
                  + ", ".join(f"{k}: {before.get(k)!r} -> {new.get(k)!r}" for k in changed),
                  file=sys.stderr)
            write_text_atomic(self.prev_config_file, old_text)
        write_text_atomic(self.config_file, text)
        _LAST_WRITTEN[0] = _WrittenConfig(self, old_text, old_prev, files, current_command())

    # ------------------------------------------------------------------ parts
    def action_space(self) -> gym.Space:
        """The env's action space: as M's checkpoint recorded it, else from the metadata
        of the run's first latent (or rollout) shard."""
        space = self.known_action_space()
        if space is None:
            raise ShardError(f"{self.path}: no trained M and no shards, so the action space "
                             "is unknown (run collect.py)")
        return space

    def known_action_space(self) -> gym.Space | None:
        """:meth:`action_space`, or None for a run with neither M nor shards yet."""
        if self.memory.model.exists():
            info = self.memory_meta().get("action_space")
            if info:
                return action_space_from_meta(info, self.memory.model)
        found = self._episodes_action_space()
        return None if found is None else action_space_from_meta(found[1], found[0])

    def _episodes_action_space(self) -> tuple[Path, dict[str, Any]] | None:
        """(first readable shard, its recorded action space) of the run's latents, else
        rollouts; None without shards. An unreadable shard is passed over (every shard
        records the same space; the stages that read its data refuse or skip it by
        ``data.skip_corrupt``); with none readable, the first one's error."""
        for directory in (self.latents, self.rollouts):
            shards = list_shards(directory)
            first: ShardError | None = None
            for shard in shards:
                try:
                    meta = read_meta(shard)
                except ShardError as err:
                    first = first or err
                    continue
                info = meta.get("action_space")
                if not info:
                    raise ShardError(f"{shard}: meta has no action_space")
                return shard, info
            if first is not None:
                raise first
        return None

    def load_vae(self, z_dim: int | None = None, device: str = "cpu") -> ConvVAE:
        """The run's trained V (in eval mode); ``z_dim`` checks its latent size."""
        path = self.vae.model
        if not path.exists():
            raise CheckpointError(f"{path}: no trained V (run train_vae.py for {self.path})")
        self._check_borrowed(path)
        model = load_model(path, expect={"z_dim": z_dim} if z_dim else None,
                           map_location=device, kinds=("ConvVAE",))
        assert isinstance(model, ConvVAE)
        return model.eval()

    def load_memory(self, device: str = "cpu", directory: Path | None = None,
                    weights: str = "best") -> Memory:
        """The run's trained M (in eval mode), or the one trained into ``directory``: any
        registered memory model (:data:`worldmodels.memory.MEMORY_KINDS`), by the kind its
        checkpoint records; the best held-out epoch's weights by default,
        ``weights="last"`` for the last epoch's (see :meth:`MemoryFiles.weights`)."""
        files = self.memory if directory is None else MemoryFiles.at(directory)
        path = files.weights(weights)
        if not path.exists():
            raise CheckpointError(f"{path}: no trained M (run train_frmdn.py for {self.path})")
        self._check_borrowed(path)
        memory: Any = load_model(path, map_location=device, kinds=checkpoint_kinds())
        self.check_memory_fits(path, memory)
        return memory.eval()

    def _check_borrowed(self, path: Path) -> None:
        """For a run on another run's world model: refuse V or M weights (at ``path``)
        other than those its :data:`WORLD_MODEL_FILE` recorded when its C was trained, so
        that C never plays with a V or M it did not learn on (the source may have moved on:
        a later round, or ``run.agent_round`` putting another round in place)."""
        if not self.borrows_world_model:
            return
        try:
            recorded = json.loads(self.world_model_file.read_text()).get("files", {})
        except (OSError, ValueError, AttributeError) as err:
            raise ConfigError(f"{self.world_model_file}: unreadable ({err})") from None
        key = f"{path.parent.name}/{path.name}"
        if key not in recorded:  # not a file C was trained on (e.g. M's last epoch)
            return
        found = file_digest(path)
        if found != recorded[key]:
            raise CheckpointError(
                f"{path}: not the weights {self.home}'s C was trained on (SHA-256 {found}, "
                f"{self.world_model_file} records {recorded[key]}); the run {self.path} has "
                "moved on (a later round, or run.agent_round put another round in place). "
                "Put those weights back there, or train C again on the new ones")

    def check_memory_fits(self, path: Path, memory: Memory) -> None:
        """Refuse an M (at ``path``) made for another V or env than this run's: its z size
        against the run's V; the V weights whose latents it was trained on (its
        ``meta.vae_digest``; older Ms have none) against the run's V file, so that M
        and C are never played or trained further on a V trained again after them; its
        action space against the run's shards."""
        meta = read_header(path).get("meta", {})
        if self.vae.model.exists():
            z_dim = read_header(self.vae.model).get("config", {}).get("z_dim")
            if z_dim is not None and memory.z_dim != z_dim:
                raise CheckpointError(
                    f"{path}: M reads latents of size {memory.z_dim}, but the run's V "
                    f"({self.vae.model}) makes latents of size {z_dim} (an M of another run?)")
            # (a shipped agent's V and M were checked together when it was exported, and
            # an fp16 export of an earlier version kept the source V's digest in M)
            if not self.world_model_shipped:
                refuse_memory_of_other_v(path, file_digest(self.vae.model), CheckpointError)
        space = meta.get("action_space")
        found = self._episodes_action_space() if space else None
        if found is not None and found[1] != space:
            raise CheckpointError(
                f"{path}: M was trained on actions {space}, but the run's episodes "
                f"({found[0]}) have actions {found[1]} (an M of another env?)")

    def memory_meta(self) -> dict[str, Any]:
        """What M's training recorded in its checkpoint (epoch, seed, done_pos_weight)."""
        return dict(read_header(self.memory.model).get("meta", {}))

    def done_pos_weight(self) -> float:
        """The ``memory.done_pos_weight`` M was trained with (its checkpoint's meta), which
        the dream's done probability undoes: a finite number > 0, else a
        :class:`CheckpointError` naming M's file."""
        value = self.memory_meta().get("done_pos_weight")
        try:
            weight = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            weight = math.nan
        if not (math.isfinite(weight) and weight > 0):
            raise CheckpointError(f"{self.memory.model}: meta.done_pos_weight is {value!r}, "
                                  "not a number > 0 (the dream's done probability needs the "
                                  "weight M's done head was trained with)")
        return weight

    def new_controller(self, cfg: ExperimentConfig, action_space: gym.Space,
                       memory: Memory) -> FlatPolicy:
        """An untrained C for ``action_space`` that reads M's features."""
        return build_controller(cfg.controller, memory.feature_size(cfg.controller.use_cell),
                                action_space)

    def trained_controller(self, weights: str | None = None) -> Path:
        """The path of C's ``weights`` (None: the default), which must exist."""
        path = self.controller.weights(weights or self.controller.default_weights())
        if not path.exists():
            have = sorted(w for w in CONTROLLER_WEIGHTS if self.controller.weights(w).exists())
            if self.is_shipped:
                sb3 = sorted(a for a in SB3_ALGOS
                             if self.controller.sb3(a, "real")[0].exists()
                             or self.controller.sb3(a, "dream")[0].exists())
                ships = ", ".join(have) or (f"no CMA-ES controller but an SB3 policy, "
                                            f"{', '.join(sb3)}: evaluate.py --policy {sb3[0]}"
                                            if sb3 else "none")
                raise CheckpointError(f"{path}: this shipped agent has no such controller "
                                      f"(it ships {ships})")
            if have:  # e.g. selected asked of a run trained without a selection
                why = (" (CMA-ES writes it when controller.eval_every > 0)"
                       if path == self.controller.weights("selected") else "")
                raise CheckpointError(f"{path}: no such controller{why}; this run has "
                                      f"{', '.join(have)}: choose one with --weights")
            raise CheckpointError(f"{path}: no trained controller (run train_controller.py "
                                  f"for {self.home})")
        return path

    def load_controller(self, cfg: ExperimentConfig, action_space: gym.Space, memory: Memory,
                        weights: str | None = None) -> FlatPolicy:
        """The trained C: ``controller/<weights>.safetensors`` (``selected``, ``best`` or
        ``mean``; None: :meth:`ControllerFiles.default_weights`)."""
        path = self.trained_controller(weights)
        controller = self.new_controller(cfg, action_space, memory)
        load_weights(path, controller)
        return controller.eval()


class RunView(RunDir):
    """A trained run seen with another M and another home for what a controller run
    writes, without copying or linking a file: only the paths differ.

    V, the shards, the start latents and the action space's shards are ``base``'s (its
    :attr:`path`); M is the one trained into ``memory_dir`` (e.g. a variant under
    ``memory_compare/``); the config (``config.yaml``), C's files (``controller/``),
    evaluations (``eval/``), dreams and TensorBoard logs are under ``home``. Every
    stage that takes a RunDir (CMA-ES, the dream, evaluation, rollout workers) works on
    a view unchanged. A view is plain paths, so a task sent to a worker process carries
    it whole (:class:`agents.rollouts.RolloutTask`).
    """

    def __init__(self, base: RunDir | str | Path, home: str | Path, memory_dir: str | Path):
        super().__init__(base.path if isinstance(base, RunDir) else base)
        self.home = Path(home).expanduser().absolute()
        self.memory_dir = Path(memory_dir).expanduser().absolute()

    def __repr__(self) -> str:
        return f"RunView('{self.path}', home='{self.home}', memory='{self.memory_dir}')"

    def __str__(self) -> str:
        return str(self.home)

    @property
    def output_dir(self) -> Path:
        return self.home

    @property
    def result_file(self) -> Path:
        """A finished experiment run's row and the settings it ran with
        (:mod:`agents.population`)."""
        return self.home / "result.json"


def as_run(run: str | Path | RunDir) -> RunDir:
    """``run`` itself when it is a RunDir (or a :class:`RunView`), else the run at that
    directory."""
    return run if isinstance(run, RunDir) else RunDir(run)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run_from_args(args: argparse.Namespace, trained: bool = False,
                  borrowed_ok: bool = False) -> tuple[ExperimentConfig, RunDir]:
    """An entry point's config and run from its command line (see
    :func:`worldmodels.config.cli_parser`).

    ``--run DIR``: the run at DIR, its ``config.yaml`` with the overrides on top; with
    ``--preset NAME`` (of ``--config``'s file, default the file of the run's env) the preset's
    ``controller.*`` keys come first (:func:`worldmodels.config.preset_overrides`: e.g.
    ``train_controller.py --run runs/CarRacing-v3/solve --preset ppo`` trains PPO on the
    solve run's V and M beside its CMA-ES controller).
    ``--config DIR/config.yaml`` (a run's resolved config) is the same as ``--run DIR``.
    Otherwise the config file with its presets and overrides, and the run at the
    config's default place. ``trained`` (evaluate, dream): the run's own config is the
    config, and overrides may change only what :meth:`RunDir.load_config` allows.
    A run on another run's world model (:func:`borrow_world_model`) is refused unless
    ``trained`` or ``borrowed_ok`` (train_controller.py): the other stages would write
    into the run it borrows from.
    """
    exit_on_help_config(args)
    run_path = args.run
    presets = preset_names(args)
    if run_path and args.config and not presets:
        raise ConfigError("give --run DIR or --config, not both (--config with --run only "
                          "names the file of the --preset)")
    if not run_path and args.config and is_run_config(args.config):
        run_path = str(Path(args.config).parent)
    if run_path:
        overrides = list(args.overrides)
        if presets:  # a controller preset over the run's own config (its V and M)
            if args.config and args.run and is_run_config(args.config):
                raise ConfigError(f"--config {args.config}: a run's config holds no presets")
            source = args.config if args.run else None
            overrides = preset_overrides(source, presets,
                                         Path(run_path) / RUN_CONFIG) + overrides
        run = RunDir(run_path)
        if not trained:
            run.refuse_shipped()
            if not borrowed_ok:
                run.refuse_borrowed()
        return run.load_config(overrides, trained=trained), run
    cfg = config_from_args(args)
    run = RunDir.for_config(cfg)
    if trained:
        cfg = run.load_config(args.overrides, trained=True)
    elif not borrowed_ok:
        run.refuse_borrowed()
    return cfg, run


def fixed_changes(cfg: ExperimentConfig, saved: dict[str, Any],
                  open_sections: tuple[str, ...]) -> list[str]:
    """The dotted keys where ``cfg`` differs from ``saved`` (a flattened config) outside
    ``open_sections`` and :data:`RUNTIME_KEYS`: what a run's files fix, sorted."""
    return sorted(k for k, v in _flatten(to_dict(cfg)).items()
                  if v != saved.get(k) and k.split(".", 1)[0] not in open_sections
                  and k not in RUNTIME_KEYS)


def world_model_source(marker: Path) -> Path:
    """The run directory a :data:`WORLD_MODEL_FILE` names (checked: it holds V and M)."""
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{marker}: unreadable ({err})") from None
    source = info.get("source") if isinstance(info, dict) else None
    if not isinstance(source, str) or not source:
        raise ConfigError(f"{marker}: needs 'source', the directory of the run whose V and "
                          "M this run uses")
    path = Path(source)
    if not path.is_absolute():  # relative to the run that names it
        path = (marker.parent / path).absolute()
    if not (path / "vae" / "model.safetensors").is_file() \
            or not (path / "memory" / "model.safetensors").is_file():
        raise ConfigError(f"{marker}: its source {path} holds no trained V and M "
                          "(vae/model.safetensors, memory/model.safetensors)")
    return path


def _world_model_hashes(source: RunDir) -> dict[str, str]:
    """:meth:`RunDir.world_model_digests` keyed by file (``vae/model.safetensors``), as
    :data:`WORLD_MODEL_FILE` records them."""
    files = {"vae": source.vae.model, "memory": source.memory.weights()}
    return {f"{k}/{files[k].name}": d for k, d in source.world_model_digests().items()}


def refuse_memory_of_other_v(model: Path, vae_digest: str,
                             error: type[Exception] = ConfigError) -> None:
    """Refuse (raise ``error``) the M checkpoint ``model`` when it was trained on latents
    of other V weights than ``vae_digest`` (its ``meta.vae_digest``; V was trained again
    after M): M, and the C trained on it, belong to the old V. An M saved before V
    digests were recorded is not checked."""
    trained_on = read_header(model).get("meta", {}).get("vae_digest")
    if trained_on and trained_on != vae_digest:
        raise error(
            f"{model}: M was trained on latents of V weights {trained_on}, but the run's V "
            f"is now {vae_digest} (V was trained again after M). M and the controller "
            f"belong to the old V: start a new run (or move {model.parent} and the "
            "controller's files aside) to train them on the new V")


def shipped_agent_holding(path: Path) -> Path | None:
    """The shipped agent (a directory holding :data:`SHIPPED_FILE`) that ``path`` is in or
    is, with ``..`` and links resolved (where a write would land); None if none."""
    resolved = Path(path).expanduser().resolve()
    return next((d for d in (resolved, *resolved.parents) if (d / SHIPPED_FILE).is_file()),
                None)


def refuse_output_in_shipped(out: Path | None) -> None:
    """An ``--out`` directory inside a shipped agent is refused: it is only read."""
    agent = None if out is None else shipped_agent_holding(out)
    if agent is not None:
        raise ConfigError(f"--out {out}: inside the shipped agent {agent}, which is "
                          "only read; give a directory outside it")


def borrow_world_model(source: str | Path, dest: str | Path,
                       overrides: list[str] | tuple[str, ...] = ()
                       ) -> tuple[ExperimentConfig, RunDir]:
    """A run at ``dest`` that trains controllers on the V and M of the trained run (or
    shipped agent) at ``source``, with nothing copied or linked: ``dest`` gets a
    :data:`WORLD_MODEL_FILE` naming ``source`` (absolute) and the SHA-256 of its V and
    M, and later its own config, controllers, evaluations and logs.

    The config is ``source``'s with ``overrides`` on top: ``controller.*`` keys and what
    a trained run leaves open (``env.*``, ``dream.*``, :data:`RUNTIME_KEYS`), e.g.
    ``env.direct_render=true`` to train in the fast renderer. A rerun on the same
    source resumes; another source, or V or M changed since, is refused.
    """
    src, home = RunDir(source), _borrowing_home(dest)
    # started: its config is written; a first command refused before that (a missing
    # engine, say) leaves only the marker, and the directory is still free for any source
    started = home.borrows_world_model and home.has_config()
    if started and home.path != src.path:  # before comparing configs
        raise ConfigError(f"{home.world_model_file}: this run uses the world model of "
                          f"{home.path}, not {src.path}; use another --run")
    # a rerun continues the run's own config (the overrides on top), a new run the source's
    # (a new run only: a started run's config is its own, and changing it is said)
    base = home if started else src
    off, said = ([], "") if started else sb3_search_settings_off(src, overrides)
    cfg = base.load_config([*off, *overrides], trained=False, rounds=False)
    saved = _flatten(to_dict(src.load_config()))
    fixed = fixed_changes(cfg, saved, (*TRAINED_RUN_SECTIONS, "controller"))
    if fixed:
        raise ConfigError(f"--world-model {src.home}: '{fixed[0]}' is fixed by its V and M "
                          f"({saved.get(fixed[0])!r}); change only controller.*, env.*, "
                          "dream.* or how to run")
    src.load_vae(cfg.vae.z_dim), src.load_memory()  # both load, before anything is written
    hashes = _world_model_hashes(src)
    if started:
        recorded = json.loads(home.world_model_file.read_text())
        if recorded.get("files") != hashes:
            raise ConfigError(f"{home.world_model_file}: V or M of {src.path} changed since "
                              "this run started (SHA-256 differs); use another --run")
    elif home.has_config() or VAEFiles.at(home.home / "vae").model.exists():
        raise ConfigError(f"{home.path}: already a run with its own config or V; a run on "
                          "another world model needs a new directory")
    else:
        check_writable(home.home)
        write_text_atomic(home.world_model_file, json.dumps(
            {"source": str(src.path), "config": str(src.config_file), "files": hashes},
            indent=2))
    if said:  # (once the command is accepted)
        print(said, file=sys.stderr)
    return cfg, RunDir(dest)


#: CMA-ES's search settings (several searches, a second selection stage) that a config
#: borrowed for an SB3 C may hold, and the values that turn them off
CMAES_SEARCH_SETTINGS = {"controller.restarts": 1, "controller.final_candidates": 0,
                         "controller.final_episodes": 0}


def sb3_search_settings_off(source: RunDir, overrides: list[str] | tuple[str, ...]
                            ) -> tuple[list[str], str]:
    """Overrides turning off the CMA-ES search settings of ``source``'s config (a run
    trained with ``controller.restarts: 3``, say) for an SB3 C on its V and M (a new run
    on them, or the run itself, whose ``config.yaml`` SB3 leaves as it is) when
    ``overrides`` switch ``controller.algo`` to an SB3 algorithm and do not set them:
    they belong to the source's CMA-ES, and SB3 refuses them. None when the command keeps
    CMA-ES or sets them itself (then the config's check names any that SB3 refuses).
    Returns them and the line that says so, for stderr once the config is accepted."""
    given: dict[str, Any] = {}  # dotted key -> value; the last one counts, and a whole
    for text in overrides:      # section (controller={"algo": "ppo"}) gives its keys
        try:
            given.update(_flatten(parse_override(text)))
        except ConfigError:
            continue  # (load_config names what is wrong with the command)
    algo = given.get("controller.algo")
    if algo is None or not source.has_config():
        return [], ""  # (load_config names what is wrong with the config)
    saved = read_yaml(source.config_file)
    if algo not in SB3_ALGOS or not isinstance(saved, dict):
        return [], ""
    saved = _flatten(saved)
    dropped = [f"{key}={off}" for key, off in CMAES_SEARCH_SETTINGS.items()
               if key not in given and saved.get(key, off) != off]
    said = (f"{source.config_file}: its CMA-ES search settings are not for "
            f"controller.algo={algo}; this run takes {' '.join(dropped)}") if dropped else ""
    return dropped, said


def _borrowing_home(dest: str | Path) -> RunDir:
    """``RunDir(dest)`` for :func:`borrow_world_model`; a directory that holds only a
    :data:`WORLD_MODEL_FILE` (no config: no C was started on it) whose source has since
    moved or gone is read as an empty directory, so a retry on any source takes it."""
    try:
        return RunDir(dest)
    except ConfigError:
        home = RunDir(dest, follow_marker=False)
        if not home.borrows_world_model or home.has_config():
            raise
        return home


def is_run_config(config: str) -> bool:
    """Is ``config`` the path of a run's resolved ``config.yaml`` (a file of that name
    holding the whole config, not ``include:``, ``defaults:`` and ``presets:``)? Another
    file of whole-config form is a config file of one layer, not a run."""
    path = Path(config)
    if not path.is_file() or path.name != RUN_CONFIG:
        return False
    data = read_yaml(path)
    return isinstance(data, dict) and bool(data) and not set(CONFIG_FILE_KEYS) & set(data)


@dataclass
class _WrittenConfig:
    """The last ``config.yaml`` this process wrote: the run, the texts of its
    ``config.yaml`` and ``config.prev.yaml`` before (None: no such file), and the run's
    other files then (:func:`_file_times`)."""

    run: RunDir
    old: str | None
    old_prev: str | None
    files: dict[Path, int]
    command: int  # worldmodels.errors.current_command() when it was written


#: the last config.yaml this process wrote (one slot; None once undone or never)
_LAST_WRITTEN: list[_WrittenConfig | None] = [None]


def same_actions(a: gym.Space, b: gym.Space) -> bool:
    """Do two action spaces take the same actions? Discrete: n and start; Box: shape and
    bounds (to float32 precision, whatever the dtypes)."""
    if isinstance(a, gym.spaces.Discrete) and isinstance(b, gym.spaces.Discrete):
        return int(a.n) == int(b.n) and int(a.start) == int(b.start)
    if isinstance(a, gym.spaces.Box) and isinstance(b, gym.spaces.Box):
        return a.shape == b.shape and all(
            np.allclose(x.astype(np.float32), y.astype(np.float32), rtol=1e-6, atol=0)
            for x, y in ((a.low, b.low), (a.high, b.high)))
    return False


def _file_times(run: RunDir) -> dict[Path, int]:
    """Every file under the run's own directory with its mtime (ns), but its configs,
    the ``progress.json`` bookkeeping run.py rewrites after every stage, done or skipped,
    and the TensorBoard logs (a skipped stage opens a new, empty event file). A file that
    goes while it is read is left out."""
    own = {run.config_file, run.prev_config_file}
    logs = run.tensorboard()
    times: dict[Path, int] = {}
    for top, dirs, names in os.walk(run.home):
        dirs[:] = [name for name in dirs if Path(top) / name != logs]
        for name in names:
            path = Path(top) / name
            if name == "progress.json" or path in own:
                continue
            try:
                times[path] = path.stat().st_mtime_ns
            except FileNotFoundError:
                continue
    return times


def undo_refused_config() -> None:
    """Put back the run's ``config.yaml`` and ``config.prev.yaml`` as they were before
    this process last wrote them, if nothing else in the run has been written since: a
    command refused on its inputs (a corrupt shard, a history scored with another M)
    leaves the run's config as its files were made with. Before, each refused command
    moved the config along, and after two of them the trained config was in neither
    file. Called by :func:`worldmodels.errors.run_cli` on a refusal."""
    written, _LAST_WRITTEN[0] = _LAST_WRITTEN[0], None
    if written is None or written.command != current_command():
        return  # none, or written by an earlier command of this process, which went through
    run = written.run
    if _file_times(run) != written.files:
        return  # the command wrote outputs with this config: it stands
    for path, text in ((run.config_file, written.old), (run.prev_config_file, written.old_prev)):
        if text is None:
            path.unlink(missing_ok=True)
        elif not path.is_file() or path.read_text() != text:
            write_text_atomic(path, text)
    print(f"{run.config_file}: put back as it was (the command was refused)", file=sys.stderr)


on_refusal(undo_refused_config)

