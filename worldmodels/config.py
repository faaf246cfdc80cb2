"""Experiment configuration: typed dataclasses are the source of truth.

The dataclasses hold every default (Ha & Schmidhuber's recipe). A YAML file per
environment only overrides them, in layers (DreamerV3-style)::

    dataclass defaults  <-  file `defaults:`  <-  file `presets: {name: ...}`  <-  CLI `a.b=value`

A file can ``include:`` another (``configs/common.yaml``): its defaults and presets come
first, so a preset shared by every env is written once.

Every key, type, choice (``Literal``) and numeric range (field metadata) is checked
before any work starts; a bad value raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import math
import re
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from worldmodels.atomic import write_text_atomic
from worldmodels.errors import InputError, MissingPackageError


class ConfigError(InputError, ValueError):
    """A config key is unknown, has the wrong type, a choice not offered or a number out
    of range, or a preset/file is missing."""


#: the resolved config at the root of every run directory (worldmodels.run_dir.RunDir)
RUN_CONFIG = "config.yaml"


def config_dir() -> Path:
    """The directory of the preset files: the package ``configs``, whose YAML files are
    package data, so a checkout, an editable install and a wheel all find them."""
    try:
        return Path(str(resources.files("configs")))
    except ModuleNotFoundError:
        raise ConfigError("the package 'configs' (the preset files) is not installed: "
                          "reinstall worldmodels (pip install ., or pip install -e . "
                          "in a checkout)") from None


#: Choices shared with the models that take them (one source for both).
Precision = Literal["diag", "square", "overcomplete"]
Flow = Literal["none", "maf", "coupling"]
Engine = Literal["serial", "process", "ray"]
#: ``memory.kind``: the key each memory model registers (worldmodels.memory.MEMORY_KINDS)
MemoryKind = Literal["frmdn", "gru_mdn", "mdn_rnn"]
#: ``controller.agent_precision``: the dtype V's encoder computes in when the V-M-C agent acts
#: (``agents.vmc.VMCAgent``); latents are float32 either way
AgentPrecision = Literal["float32", "bfloat16"]
#: ``controller.kind``: the key each controller registers
#: (worldmodels.controller.CONTROLLER_KINDS)
ControllerKind = Literal["dense"]
#: ``controller.algo``: CMA-ES, or a Stable-Baselines3 algorithm (:data:`SB3_ALGOS`)
ControllerAlgo = Literal["cmaes", "ppo", "a2c", "sac", "td3"]
SB3_ALGOS: tuple[str, ...] = tuple(a for a in typing.get_args(ControllerAlgo) if a != "cmaes")

#: a seed reaches numpy's legacy RNG as seed + 1 (CMA-ES, via ``cma``), which takes
#: 0..2**32 - 1; torch.manual_seed and np.random.default_rng take more
SEED_MAX = 2**32 - 2
#: the smallest CMA-ES population: ``cma``'s mirrored sampling fails at 2 for controllers
#: of a few hundred weights
MIN_POPULATION = 3

_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _opt(default: Any, help: str, finite: bool = False,  # noqa: A002 - argparse's name
         **bounds: float) -> Any:
    """A dataclass field with a help text (shown by ``--help-config``) and, for a number,
    its range (checked by :func:`check_ranges`): ``ge`` / ``gt`` / ``le`` / ``lt`` bounds,
    or ``finite=True`` for a float that may be any finite number. A number must declare one.
    """
    unknown = set(bounds) - set(_BOUNDS)
    if unknown:
        raise TypeError(f"unknown bound(s) {sorted(unknown)}")
    numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
    if numeric and not (bounds or (finite and isinstance(default, float))):
        raise TypeError(f"the option '{help}' needs a range (ge/gt/le/lt, or finite=True)")
    metadata = {"help": help, "range": bounds}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class EnvConfig:
    id: str = _opt("CarRacing-v3", "Gymnasium id of the raw pixel environment.")
    frame_size: int = _opt(64, "Frames are resized to frame_size x frame_size x 3 uint8 (the "
                           "ConvVAE takes 64).", ge=64, le=64)
    max_episode_steps: int = _opt(-1, "Episode cap: -1 = the paper's cap, 0 = the env's own.",
                                  ge=-1)
    crop_bottom: int = _opt(-1, "Rows cut off the frame's bottom: -1 = the paper's choice.",
                            ge=-1)
    kwargs: dict = _opt({}, "Extra keyword arguments for gymnasium.make.")
    fast_render: bool = _opt(True, "Use a pixel-identical faster renderer where there is one "
                             "(CarRacing-v3: envs/fast_car_racing.py); false = Gymnasium's.")
    direct_render: bool = _opt(False, "Draw frames straight at their final size where there is "
                               "such a renderer (CarRacing-v3: envs/direct_car_racing.py): "
                               "faster than fast_render, pixels differ slightly.")


@dataclass
class CollectConfig:
    episodes: int = _opt(10000, "Number of episodes (one shard each) to collect.", ge=0)
    workers: int = _opt(0, "Parallel workers (0 = one per CPU core).", ge=0)
    engine: Engine = _opt("process", "Where episodes run.")
    ray_address: str = _opt("", "Ray cluster address for engine=ray ('' starts a local Ray).")
    policy: str = _opt("brownian", "Data policy: random | held | brownian | linear | controller "
                                   "(the run's trained V-M-C agent), or a schedule "
                                   "'random:2000,linear' (episodes 0-1999 random, then linear).")
    brownian_dt: float = _opt(0.02, "Brownian policy step: a' = clip(a + sqrt(dt) N(0, I)).",
                              gt=0)
    linear_std: float = _opt(0.5, "Linear policy: weights ~ N(0, s^2), s ~ U(0, linear_std).",
                             ge=0)
    hold_max: int = _opt(10, "Held policy: a uniform random action held for k ~ U{1..hold_max} "
                             "steps, then another (Ha's Doom data policy: 10).", ge=1)
    controller_weights: Literal["selected", "best", "mean", "sb3", "finalists"] = _opt(
        "selected", "Controller policy: the run's selected weights (its best candidate "
        "when CMA-ES selected none), best or mean; finalists: the controllers of the run's "
        "second selection stage (controller.final_candidates), episode i played by "
        "finalist i mod K; or sb3: the run's SB3 policy of controller.algo (trained where "
        "controller.environment says), by its mean action.")
    controller_epsilon: float = _opt(0.1, "Controller policy: chance of a uniform random action "
                                     "at each step.", ge=0, le=1)
    compress_level: int = _opt(1, "zlib level of shards (0 = stored, 9 = smallest).",
                               ge=0, le=9)


@dataclass
class DataConfig:
    holdout_fraction: float = _opt(0.05, "Fraction of episodes held out (fixed by the seed).",
                                   gt=0, lt=1)
    holdout_min_episodes: int = _opt(5, "Hold out at least this many episodes whatever the "
                                     "fraction (fewer only when there are not enough; a "
                                     "warning says so).", ge=0)
    shuffle_buffer: int = _opt(20000, "Frames held in memory for shuffling while streaming.",
                               ge=1)
    loader_workers: int = _opt(0, "DataLoader worker processes that read shards. Each "
                                  "worker shuffles its own share of the shards in a buffer "
                                  "of its own (memory: workers x shuffle_buffer), so the "
                                  "worker count changes the batches, and the trained "
                                  "weights: keep it fixed to reproduce a run.", ge=0)
    skip_corrupt: bool = _opt(False, "Skip unreadable or invalid shards (counted and listed "
                                     "in <run>/skipped_shards.json, one list per stage) "
                                     "instead of stopping: collect keeps them as they "
                                     "are, encode, V and M leave them out.")


@dataclass
class VAEConfig:
    z_dim: int = _opt(32, "Latent size.", ge=1)
    kl_tolerance: float = _opt(0.5, "Ha's free bits: KL is floored at kl_tolerance * z_dim "
                               "nats.", ge=0)
    kl_weight: float = _opt(1.0, "Weight of the KL term.", ge=0)
    lr: float = _opt(1e-4, "Adam learning rate.", gt=0)
    batch_size: int = _opt(100, "Frames per batch.", ge=1)
    epochs: int = _opt(10, "Epochs over the training episodes.", ge=1)
    max_frames_per_epoch: int = _opt(0, "Stop an epoch after this many frames (0 = all).", ge=0)
    max_holdout_frames: int = _opt(20000, "Held-out frames scored each epoch (0 = all).", ge=0)
    grid_frames: int = _opt(8, "Held-out frames in the reconstruction grid PNG (0: none).",
                            ge=0)
    pretrained: str = _opt("", "A trained run's or shipped agent's directory whose V this run "
                               "uses instead of training one: train_vae.py scores it on this "
                               "run's held-out frames and saves it as the run's V, its SHA-256 "
                               "recorded (same vae.z_dim). '' = train V.")


@dataclass
class EncodeConfig:
    batch_size: int = _opt(1000, "Frames per encoder batch.", ge=1)


@dataclass
class MemoryConfig:
    kind: MemoryKind = _opt("frmdn", "The memory model: frmdn (LSTM + flow + tied-precision "
                                     "mixture; flow=none is the RMDN) | gru_mdn (GRU + "
                                     "diagonal mixture; reads no precision or flow key) | "
                                     "mdn_rnn (Ha's MDN-RNN: LSTM + a mixture of 1-D "
                                     "Gaussians per dimension of z, each dimension "
                                     "drawing its own component).")
    hidden: int = _opt(256, "Recurrent hidden size (LSTM or GRU).", ge=1)
    mixtures: int = _opt(5, "Mixture components K.", ge=1)
    # the FRMDN (square U, MAF conditioned on h_t); against the RMDN (precision=diag,
    # flow=none) by held-out NLL: docs/experiments/m-nll-data-curve.md
    precision: Precision = _opt("square", "Tied precision U D_k U^T.")
    overcomplete_m: int = _opt(0, "Columns m > d of an overcomplete U (0 = d + max(4, d // 4)).",
                               ge=0)
    flow: Flow = _opt("maf", "Flow f on z_{t+1} (none: the RMDN).")
    flow_layers: int = _opt(2, "Flow transforms.", ge=1)
    flow_hidden: int = _opt(64, "Hidden units of each flow transform's two hidden layers.",
                            ge=1)
    flow_conditional: bool = _opt(True, "Condition the flow on h_t.")
    reward_head: bool = _opt(True, "Predict the reward from h_t (Gaussian / MSE).")
    done_head: bool = _opt(True, "Predict episode termination from h_t (Bernoulli).")
    reward_weight: float = _opt(1.0, "Weight of the reward MSE in the loss.", ge=0)
    done_weight: float = _opt(1.0, "Weight of the done BCE in the loss.", ge=0)
    done_pos_weight: float = _opt(1.0, "Weight of terminal steps in the done BCE (Ha used 10 "
                                       "for Doom); dreams calibrate the probability back.", gt=0)
    seq_len: int = _opt(100, "Truncated-BPTT window length.", ge=1)
    batch_size: int = _opt(100, "Windows per batch.", ge=1)
    lr: float = _opt(1e-3, "Adam learning rate.", gt=0)
    grad_clip: float = _opt(1.0, "Gradient norm clip (0 = off).", ge=0)
    epochs: int = _opt(20, "Epochs over the training episodes.", ge=1)
    patience: int = _opt(0, "Stop after this many epochs without a better held-out NLL, "
                         "judged at scored epochs (memory.eval_every) (0 = off; the best "
                         "epoch's weights are kept either way).", ge=0)
    eval_every: int = _opt(1, "Score the held-out episodes every this many epochs, and at "
                           "the last (the best epoch is chosen among the scored ones); the "
                           "data curve's small sets use it to keep the scoring per gradient "
                           "step the same.", ge=1)
    eval_draws: int = _opt(5, "Fixed z draws the held-out NLL is averaged over (its standard "
                           "error is across them).", ge=1)
    shuffle_buffer: int = _opt(2000, "Windows held in memory for shuffling.", ge=1)
    nonfinite: Literal["raise", "skip"] = _opt(
        "raise", "On a NaN/Inf loss: raise (naming the step) or skip (count it).")
    keep_epochs: bool = _opt(False, "Keep every scored epoch's weights in memory/epochs/ "
                                    "(about 2.4 MB each for TakeCover's M), to choose M's "
                                    "epoch later by another measure (tools/export_pretrained.py "
                                    "--memory-epoch N ships one).")
    select_max_held: float = _opt(0.0, "Choose M's epoch by its dream too (0 = by held-out "
                                  "NLL alone): run the held-action check (dream.* settings, "
                                  "dream.check_episodes real episodes per policy) after every "
                                  "scored epoch, and keep the lowest-NLL epoch among those "
                                  "whose worst held action lives at most this many times "
                                  "longer in the dream than in the real env (if none, the "
                                  "lowest NLL). Discrete actions.", ge=0)


@dataclass
class ControllerConfig:
    algo: ControllerAlgo = _opt(
        "cmaes", "cmaes, or a Stable-Baselines3 algorithm.")
    sb3_timesteps: int = _opt(100_000, "Environment steps for an SB3 algorithm.", ge=1)
    sb3_kwargs: dict = _opt({}, "Keyword arguments for the SB3 algorithm, e.g. {n_steps: 512, "
                                "batch_size: 128} (rl-zoo's hyperparameters go here; "
                                "learning_rate/clip_range 'lin_<x>' are linear schedules, "
                                "policy_kwargs.activation_fn a torch.nn name like GELU).")
    sb3_envs: int = _opt(8, "Envs an SB3 algorithm steps together: real envs with V and M "
                            "batched, or dreams in one batch (controller.environment).", ge=1)
    sb3_deterministic: bool = _opt(True, "SB3 policies play (select, evaluate) their mean "
                                         "action; false: they sample as in training, a gSDE "
                                         "policy redrawing its noise every sde_sample_freq "
                                         "steps.")
    sb3_normalize_reward: bool = _opt(False, "SB3: scale training rewards by a running std "
                                             "of the discounted return (VecNormalize, "
                                             "norm_reward only, as rl-zoo's CarRacing); "
                                             "evaluation plays raw rewards.")
    sb3_checkpoint_steps: int = _opt(50_000, "SB3: save the policy, optimizer and counters "
                                             "every N env steps (0: only at the end); a rerun "
                                             "resumes from the last save, close to but not "
                                             "bit-identical with an unbroken run (the envs "
                                             "start new episodes; V, M and CMA-ES resume "
                                             "exactly).", ge=0)
    sb3_eval_steps: int = _opt(0, "SB3: every N env steps play the policy on the selection "
                                  "seeds (controller.select_episodes); the shipped policy is "
                                  "the best seen there (0: off, the last policy).", ge=0)
    sb3_init: str = _opt("", "SB3: start a new training from this policy rather than a "
                             "random one: a run directory holding controller/sb3_<algo>."
                             "safetensors (real env), e.g. pretrained/carracing, or such a "
                             "file; same algo and network, on the same V and M (its SHA-256 "
                             "joins the training's settings). Empty: random start.")
    environment: Literal["real", "dream"] = _opt(
        "real", "Where C trains: real (the env) | dream (M as the env; evaluation is in the "
                "real env, unless evaluate.py --in-dream asks for the dream's score).")
    kind: ControllerKind = _opt("dense", "The controller: dense (linear, or one tanh hidden "
                                         "layer with controller.hidden; squashed Box actions, "
                                         "argmax or ordinal Discrete ones).")
    hidden: int = _opt(0, "Hidden units of C (0 = linear, as in the paper).", ge=0)
    use_cell: bool = _opt(False, "Feed M's cell state too: [z, c, h] (the paper's Doom setup; "
                                 "an LSTM memory only).")
    discrete_head: Literal["argmax", "ordinal"] = _opt(
        "argmax", "Discrete actions: argmax (one logit per action) | ordinal (one tanh output "
                  "cut into equal bins of [-1, 1], as the paper's Doom controller).")
    action_order: list = _opt([], "Ordinal head (discrete_head=ordinal, which it needs): the "
                                  "action of each bin from -1 to 1 (empty: 0..n-1). "
                                  "TakeCover: [2, 0, 1], left-stay-right.")
    clip_dims: list = _opt([], "Box action dims (bounds within [-1, 1]) mapped by "
                               "clip(tanh(y), low, high) instead of low + (tanh(y) + 1) / 2 "
                               "(high - low): exactly low (off) for y <= 0. Ha & "
                               "Schmidhuber's CarRacing brake: [2].")
    population: int = _opt(64, "CMA-ES population size.", ge=MIN_POPULATION)
    rollouts: int = _opt(16, "Episodes per candidate; fitness is their mean return.", ge=1)
    sigma0: float = _opt(0.1, "CMA-ES initial step size.", gt=0)
    generations: int = _opt(300, "Generations to run (a rerun resumes to this many).", ge=1)
    target_return: float = _opt(0.0, "Stop once the selected controller's selection mean "
                                     "reaches it (0: off).", finite=True)
    eval_every: int = _opt(25, "Every N generations, evaluate the best candidate and the "
                           "CMA-ES mean on the selection seeds, whole real episodes "
                           "(0: never).", ge=0)
    restarts: int = _opt(1, "CMA-ES searches from scratch, each with its own seed (search "
                            "0: the run's); the run's C is the one with the highest mean "
                            "on the run's selection seeds (needs algo cmaes and a "
                            "selection: 0 < eval_every <= generations). Search k keeps "
                            "its files in controller/searches/<k>/.", ge=1)
    final_candidates: int = _opt(0, "A second selection stage (0: off): when the searches "
                                    "are done, the K checkpoints with the highest selection "
                                    "means (across searches) play controller.final_episodes "
                                    "more selection seeds, and the run's C is the one with "
                                    "the highest mean over all (agents/finalists.py).", ge=0)
    final_episodes: int = _opt(0, "Episodes each finalist of the second selection stage plays "
                                  "beyond the first stage's (the next seeds of the same "
                                  "selection stream).", ge=0)
    eval_episodes: int = _opt(100, "Episodes of that evaluation (and of run.py's final "
                                   "evaluation).", ge=1)
    select_episodes: int = _opt(0, "Size of the fixed selection seed set on which every "
                                   "periodic evaluation plays the best candidate and the "
                                   "CMA-ES mean (controller/selected.safetensors keeps the "
                                   "higher mean ever seen; 0 = eval_episodes).", ge=0)
    engine: Engine = _opt("process", "Evaluator back-end.")
    workers: int = _opt(0, "Evaluator workers (0 = one per core).", ge=0)
    batch_envs: int = _opt(16, "Real episodes a worker steps together: V encodes their frames "
                              "in one call, M and C step them in one call.", ge=1)
    agent_precision: AgentPrecision = _opt(
        "float32", "V's encoder when an agent reads the real env (CMA-ES workers, SB3's "
                   "[z, h] envs, evaluation): float32, or bfloat16 (latents stay float32; "
                   "V about 2.5x faster at batch 16 on CPUs with AMX-BF16; a trained V's "
                   "latents move by under 1% of their spread on average: "
                   "docs/performance.md).")
    ray_address: str = _opt("", "Ray cluster address for engine=ray ('' starts a local Ray).")
    max_episode_steps: int = _opt(0, "Cap on training episodes (0 = the env's cap).", ge=0)
    stall_steps: int = _opt(0, "End a training episode after N steps without positive reward "
                               "(0: off; evaluation always plays whole episodes).", ge=0)

    @property
    def selection_size(self) -> int:
        """Episodes of the first selection stage: ``select_episodes``, else
        ``eval_episodes``."""
        return self.select_episodes or self.eval_episodes


@dataclass
class DreamConfig:
    temperature: float = _opt(1.15, "tau: M's mixture logits / tau and covariance x tau "
                                    "(1.15 was the paper's best for Doom; above 100 "
                                    "the dream is noise, and float32 overflows).",
                              gt=0, le=100)
    done: Literal["sample", "threshold"] = _opt(
        "sample", "How M ends a dream: sample (a Bernoulli of its calibrated P(done)) | "
                  "threshold (P(done) > done_threshold).")
    done_threshold: float = _opt(0.5, "P(done) above which a dream ends, for done=threshold.",
                                 gt=0, lt=1)
    max_steps: int = _opt(0, "Cap on dream length (0 = the env's cap).", ge=0)
    ensemble: str = _opt("", "Comma-separated trained runs' or shipped agents' directories "
                             "whose Ms dream beside this run's M on the same V (a pessimistic "
                             "ensemble, worldmodels/dream_ensemble.py): C reads this run's "
                             "M, a dream ends with the highest P(done) of any M, and z comes "
                             "from dream.ensemble_z. '' = this run's M alone.")
    ensemble_z: Literal["first", "random"] = _opt(
        "random", "With dream.ensemble, whose sample the next z is: first (this run's M) | "
                  "random (an M drawn uniformly per dream and step).")
    threads: int = _opt(0, "Torch threads for the batched dream, in CMA-ES and SB3 (0 = "
                           "torch's default; 1 for runs side by side).", ge=0)
    check_episodes: int = _opt(30, "run.py, before C trains in the dream: real episodes per "
                                   "held action for the held-action check (0 = skip it).", ge=0)
    max_held_ratio: float = _opt(0.0, "Gate: stop before CMA-ES when a held action lives "
                                      "more than this many times longer in the dream than "
                                      "in the real env (0 = report only).", ge=0)


@dataclass
class RunConfig:
    iterations: int = _opt(1, "run.py: rounds of Ha's iterative training (1 = the pipeline "
                              "once). Each later round collects run.iteration_episodes "
                              "played by the last round's controller (collect.controller_*), "
                              "trains M run.iteration_memory_epochs more epochs on all the "
                              "data, and trains C anew: CMA-ES, or with "
                              "collect.controller_weights=sb3 the SB3 algorithm "
                              "(docs/experiments/takecover-iterations.md).", ge=1)
    iteration_episodes: int = _opt(1000, "Episodes a later round collects with the controller "
                                         "policy (indices after the run's earlier ones).", ge=1)
    iteration_memory_epochs: int = _opt(5, "Epochs a later round trains M on all the data, "
                                           "from the last round's last weights.", ge=1)
    agent_round: Literal["last", "best"] = _opt(
        "last", "run.py, after the last round: which round is the run's agent (its M, C "
                "and evaluations in the run's memory/, controller/ and eval/): last | best "
                "(the round whose winning controller has the highest selection mean; "
                "needs CMA-ES with a selection, controller.eval_every > 0).")


@dataclass
class ExperimentConfig:
    name: str = _opt("", "Run name; '' uses the preset names (or 'paper').")
    seed: int = _opt(0, "Seed for collection, splits, shuffling, initialisation, CMA-ES "
                        "and evaluation seeds (the held-out split stays the one V was "
                        "trained with).",
                     ge=0, le=SEED_MAX)
    root: str = _opt("runs", "Directory that holds run directories.")
    device: str = _opt("cpu", "Torch device of V's and M's training and of encoding: cpu | "
                              "cuda | cuda:N | mps (agents act, and C trains, on the CPU).")
    env: EnvConfig = field(default_factory=EnvConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    dream: DreamConfig = field(default_factory=DreamConfig)
    run: RunConfig = field(default_factory=RunConfig)


def env_slug(env_id: str) -> str:
    """A file-system friendly name for an env id: ``ALE/Pong-v5`` -> ``ALE-Pong-v5``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", env_id).strip("-")


# --------------------------------------------------------------------------- merging


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is Literal:
        allowed = typing.get_args(tp)
        # `type(...) is` too: YAML's `true` must not pass for a choice 1, nor 1 for True
        if not any(value == a and type(value) is type(a) for a in allowed):
            raise ConfigError(f"{source}: key '{key}' must be one of "
                              f"{' | '.join(map(str, allowed))}, got {value!r}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    check = origin or tp
    # bool is a subclass of int, but `epochs: true` is a mistake, not 1
    ok = isinstance(value, check) and not (check is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(
            f"{source}: key '{key}' must be {_type_name(check)}, "
            f"got {type(value).__name__} {value!r}"
        )
    return value


def merge_into(obj: Any, values: dict, source: str, prefix: str = "") -> None:
    """Set the fields of dataclass ``obj`` from a nested dict, checking keys and types
    (a field that holds a mapping, such as ``controller.sb3_kwargs``, is replaced whole;
    see :func:`parse_override` for one key inside it)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: '{prefix or '<root>'}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(
                f"{source}: unknown key '{dotted}' (known here: {', '.join(sorted(names))})"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            merge_into(current, value, source, prefix=f"{dotted}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], dotted, source))


def _dotted_to_nested(key: str, value: Any) -> dict:
    out: dict = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


#: keys naming a path; given on the command line, a relative one is made absolute
#: against the working directory, so that the run's ``config.yaml`` works from anywhere
PATH_KEYS = ("vae.pretrained", "controller.sb3_init")
#: keys holding comma-separated paths, each made absolute as :data:`PATH_KEYS`' are
PATH_LIST_KEYS = ("dream.ensemble",)


def parse_override(text: str, cfg: Any = None) -> dict:
    """``'vae.epochs=5'`` -> ``{'vae': {'epochs': 5}}`` (the value is read as YAML; a
    :data:`PATH_KEYS` value becomes an absolute path, each path of a
    :data:`PATH_LIST_KEYS` value too).

    A key that goes on inside a field holding a mapping (``controller.sb3_kwargs.gamma``)
    changes that one entry of ``cfg``'s mapping and keeps the others; a whole mapping
    (``controller.sb3_kwargs={n_steps: 512}``) replaces it."""
    if "=" not in text:
        raise ConfigError(f"command line: override '{text}' must look like key=value")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"command line: cannot read value of '{key}': {err}") from err
    if key.strip() in PATH_KEYS and isinstance(value, str) and value:
        value = str(Path(value).expanduser().absolute())  # the run works from anywhere
    if key.strip() in PATH_LIST_KEYS and isinstance(value, str) and value:
        value = ",".join(str(Path(p.strip()).expanduser().absolute())
                         for p in value.split(",") if p.strip())
    parts, obj = key.strip().split("."), cfg
    for i, part in enumerate(parts[:-1]):
        if obj is None or not dataclasses.is_dataclass(obj) or not hasattr(obj, part):
            break  # (an unknown key: merge_into names it)
        obj = getattr(obj, part)
        if isinstance(obj, dict):  # into a mapping field: change one entry of a copy
            mapping = copy.deepcopy(obj)
            inner = mapping
            for name in parts[i + 1 : -1]:
                if not isinstance(inner.get(name), dict):
                    inner[name] = {}
                inner = inner[name]
            inner[parts[-1]] = value
            return _dotted_to_nested(".".join(parts[: i + 1]), mapping)
    return _dotted_to_nested(key.strip(), value)


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2's floats without a dot (``1e-3``, ``3E+4``),
    which YAML 1.1 reads as strings: ``lr: 3e-4`` is a float, as a user expects; and a
    key given twice in one mapping is an error (PyYAML keeps the last, so a second
    ``vae:`` block would silently drop the first's keys). Keys a ``<<`` merge brings in
    may still be overridden, as YAML means."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    again = key in first
                except TypeError:  # an unhashable key: the constructor below says so
                    continue
                if again:
                    where = f"line {line}" if first[key] == line else \
                        f"lines {first[key]} and {line}"
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key '{key}' is given twice ({where}); merge the two "
                        "into one")
                first[key] = line
        return super().construct_mapping(node, deep=deep)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(text: str) -> Any:
    """``text`` read as YAML safely (no Python tags), ``1e-3`` as a float."""
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 (a SafeLoader subclass)


def read_yaml(path: Path) -> Any:
    """A YAML file read safely: invalid YAML, a ``!!python/...`` tag or an unreadable
    file is a :class:`ConfigError` naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except IsADirectoryError:
        raise ConfigError(f"{path}: a directory, not a YAML file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: unreadable ({err})") from None
    try:
        return load_yaml(text)
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path}: not valid YAML ({first})") from None


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML path, or the stem of a file in ``configs/`` (``carracing``). Another
    existing file is read as YAML whatever its suffix; a directory is refused, naming it."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    folder = config_dir()
    candidate = folder / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    if path.is_file():
        return path
    if path.is_dir():
        if (path / RUN_CONFIG).is_file():
            raise ConfigError(f"--config {path}: a run directory, not a config file; give "
                              f"--run {path} (or --config {path / RUN_CONFIG})")
        raise ConfigError(f"--config {path}: a directory, not a config file (a .yaml file "
                          "or a name in configs/)")
    known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
    raise ConfigError(f"config '{name_or_path}' not found (known in {folder}: {known})")


CONFIG_FILE_KEYS = ("include", "defaults", "presets")


def _config_layers(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """``path`` and the files it includes, as (path, contents), included files first.

    ``include:`` names files next to ``path`` (``common`` or ``common.yaml``) whose
    ``defaults`` and ``presets`` the file extends: a preset of the same name in both is
    applied included part first. A run's resolved ``config.yaml`` (no ``defaults``,
    ``presets`` or ``include``) is one layer of defaults.
    """
    if path.resolve() in chain:
        raise ConfigError(f"{path}: include cycle ({' -> '.join(map(str, chain))} -> {path})")
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping, got {type(data).__name__}")
    if data and not set(CONFIG_FILE_KEYS) & set(data):
        return [(path, {"defaults": data})]
    unknown_top = set(data) - set(CONFIG_FILE_KEYS)
    if unknown_top:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown_top)} "
                          f"(a config file holds {', '.join(map(repr, CONFIG_FILE_KEYS))})")
    if not isinstance(data.get("presets") or {}, dict):
        raise ConfigError(f"{path}: 'presets' must map preset names to settings")
    includes = data.get("include") or []
    layers: list[tuple[Path, dict]] = []
    for name in [includes] if isinstance(includes, str) else includes:
        included = path.parent / (name if str(name).endswith(".yaml") else f"{name}.yaml")
        if not included.is_file():
            raise ConfigError(f"{path}: include '{name}' not found (looked for {included})")
        layers += _config_layers(included, chain + (path.resolve(),))
    return layers + [(path, data)]


def load_config(
    config: str | None = "carracing",
    presets: list[str] | None = None,
    overrides: list[str] | None = None,
    rounds: bool = True,
) -> ExperimentConfig:
    """Build the resolved config: dataclass defaults <- file (and what it includes)
    <- presets <- overrides.

    ``config`` is a preset file (``include:``, ``defaults:``, ``presets:``), or a run
    directory's resolved ``config.yaml``, which reproduces that run. ``rounds``: see
    :func:`validate`.
    """
    cfg = ExperimentConfig()
    presets = [p for p in (presets or []) if p]
    if config:
        path = resolve_config_path(config)
        layers = _config_layers(path)
        for layer_path, data in layers:
            merge_into(cfg, data.get("defaults") or {}, f"{layer_path} defaults")
        known = {name for _, data in layers for name in data.get("presets") or {}}
        for preset in presets:
            if preset not in known:
                raise ConfigError(
                    f"{path}: no preset '{preset}' (known: {', '.join(sorted(known))})"
                )
            for layer_path, data in layers:
                if preset in (data.get("presets") or {}):
                    merge_into(cfg, data["presets"][preset] or {},
                               f"{layer_path} preset '{preset}'")
    elif presets:
        raise ConfigError("presets need a config file")
    if not cfg.name:
        cfg.name = "+".join(presets) if presets else "paper"
    for text in overrides or []:
        merge_into(cfg, parse_override(text, cfg), f"command line '{text}'")
    validate(cfg, rounds)
    return cfg


#: config sections a preset may set when it layers over a run's own config (``--run DIR
#: --preset NAME``): a run's stages fix the rest
RUN_PRESET_SECTIONS = ("controller",)


def env_preset_file(env_id: str) -> Path | None:
    """The file in ``configs/`` whose ``defaults`` set ``env.id`` to ``env_id``
    (``VizdoomTakeCover-v1``: doom_takecover.yaml), or None when no file or several do."""
    found = []
    for path in sorted(config_dir().glob("*.yaml")):
        try:
            data = read_yaml(path)
        except ConfigError:
            continue
        env = ((data or {}).get("defaults") or {}).get("env") if isinstance(data, dict) else None
        if isinstance(env, dict) and env.get("id") == env_id:
            found.append(path)
    return found[0] if len(found) == 1 else None


def run_env_id(run_config: Path) -> str:
    """``env.id`` of a run's ``config.yaml`` (the dataclass default when the file does not
    say: the run's own loading reports a file it cannot read)."""
    try:
        data = read_yaml(run_config)
    except (ConfigError, OSError):
        data = None
    env = data.get("env") if isinstance(data, dict) else None
    env_id = env.get("id") if isinstance(env, dict) else None
    return env_id if isinstance(env_id, str) else EnvConfig().id


def preset_overrides(config: str | None, presets: list[str],
                     run_config: Path | None = None) -> list[str]:
    """``presets`` of the preset file ``config`` as ``key=value`` overrides, to layer over
    a run's own config (``--run DIR --preset ppo``): such presets may set only
    :data:`RUN_PRESET_SECTIONS` (a controller to train on the run's V and M); one that
    sets another section is refused, naming it. Without ``config``: the file of the env
    of ``run_config`` (a run's ``config.yaml``; :func:`env_preset_file`), so a TakeCover
    run does not take CarRacing's presets; carracing's when no file is that env's."""
    chosen = ""
    if config is None:
        env_id = run_env_id(run_config) if run_config is not None else EnvConfig().id
        by_env = env_preset_file(env_id)
        path = by_env or resolve_config_path("carracing")
        chosen = (f"; the preset file of the run's env {env_id}: give --config FILE for "
                  "another file's" if by_env else "")
    else:
        path = resolve_config_path(config)
    layers = _config_layers(path)
    known = {name for _, data in layers for name in data.get("presets") or {}}
    out: list[str] = []
    for preset in presets:
        if preset not in known:
            raise ConfigError(f"{path}: no preset '{preset}' (known: "
                              f"{', '.join(sorted(known))}){chosen}")
        for layer_path, data in layers:
            values = (data.get("presets") or {}).get(preset) or {}
            if not isinstance(values, dict):
                raise ConfigError(f"{layer_path}: preset '{preset}' must be a mapping")
            for section, keys in values.items():
                if section not in RUN_PRESET_SECTIONS or not isinstance(keys, dict):
                    raise ConfigError(
                        f"--preset {preset} with --run: a run's config fixes all but "
                        f"{', '.join(s + '.*' for s in RUN_PRESET_SECTIONS)}, and preset "
                        f"'{preset}' ({layer_path}) sets '{section}'; give it without --run")
                out += [f"{section}.{k}={json.dumps(v)}" for k, v in keys.items()]
    return out


def walk_fields(obj: Any = None, prefix: str = "",
                ) -> Iterator[tuple[str, dataclasses.Field, Any, Any]]:
    """(dotted key, field, annotation, value) of every leaf key of a config, in order."""
    obj = obj if obj is not None else ExperimentConfig()
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from walk_fields(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hints[f.name], value


def numeric_fields(obj: Any = None) -> list[tuple[str, dataclasses.Field]]:
    """Every int and float key, dotted (``memory.hidden``), with its dataclass field."""
    return [(key, f) for key, f, hint, _ in walk_fields(obj) if hint in (int, float)]


def _range_text(bounds: dict) -> str:
    if "ge" in bounds and bounds.get("le") == bounds["ge"]:
        return f"{bounds['ge']}"
    return " and ".join(f"{_BOUNDS[name]} {bound}" for name, bound in bounds.items())


def check_ranges(cfg: ExperimentConfig) -> None:
    """Every number within its field's declared range, every float finite."""
    for key, f in numeric_fields(cfg):
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key '{key}' must be a finite number, got {value}")
        bounds = f.metadata.get("range", {})
        ok = all({"ge": value >= b, "gt": value > b, "le": value <= b, "lt": value < b}[name]
                 for name, b in bounds.items())
        if not ok:
            raise ConfigError(f"config key '{key}' must be {_range_text(bounds)}, got {value}")


DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?|mps")

#: memory kinds with no cell state to feed C (``controller.use_cell``)
CELLLESS_MEMORY_KINDS = ("gru_mdn",)


def torch_device(name: str) -> Any:
    """The ``torch.device`` of config key ``device``; a ConfigError if this machine's
    torch cannot use it (a CPU-only build and ``cuda``, a missing GPU index, no MPS)."""
    import torch

    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(f"config key 'device': {name} is not available here (torch "
                              f"{torch.__version__} sees {count} CUDA device(s)); use "
                              f"device=cpu")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("config key 'device': mps is not available here; use device=cpu")
    return device


def validate(cfg: ExperimentConfig, rounds: bool = True) -> None:
    """Value checks beyond the types (choices are checked as the values are merged):
    every number's declared range, then what spans keys or needs parsing.

    ``rounds=False`` for a config that will never play a round of iterative training: a
    run that trains controllers on another run's V and M, or a shipped agent. There
    ``run.*`` and ``collect.*`` only record how V and M were made, so the check that
    later rounds collect with what C trains is left out (say CMA-ES rounds made M, and
    PPO now trains on it)."""
    check_ranges(cfg)
    # CMA-ES with a selection: candidates compared on the selection seeds
    cmaes_selects = (cfg.controller.algo == "cmaes"
                     and 0 < cfg.controller.eval_every <= cfg.controller.generations)
    checks = [
        (cfg.name not in (".", "..") and "/" not in cfg.name and "\\" not in cfg.name, "name",
         f"must name a directory inside root, not {cfg.name!r}"),
        (DEVICE_PATTERN.fullmatch(cfg.device) is not None, "device",
         f"must be cpu, cuda, cuda:N or mps, got {cfg.device!r}"),
        (_is_schedule(cfg.collect.policy), "collect.policy",
         f"must be one of {', '.join(DATA_POLICIES)}, or a schedule like "
         "'random:2000,linear'"),
        (cfg.memory.overcomplete_m == 0 or cfg.memory.overcomplete_m > cfg.vae.z_dim,
         "memory.overcomplete_m", "must be 0 or > vae.z_dim"),
        (all(isinstance(a, int) and not isinstance(a, bool) and a >= 0
             for a in cfg.controller.action_order), "controller.action_order",
         "must be a list of action indices"),
        (not (cfg.controller.use_cell and cfg.memory.kind in CELLLESS_MEMORY_KINDS),
         "controller.use_cell", f"is true, but memory.kind={cfg.memory.kind} has no cell "
         "state to feed C; set controller.use_cell=false or use another memory.kind"),
        (cfg.controller.environment == "real" or cfg.memory.reward_head,
         "controller.environment", "=dream needs M's reward head: the dream's reward "
         "(memory.reward_head=true)"),
        (cfg.collect.controller_weights != "sb3" or cfg.controller.algo != "cmaes"
         or "controller" not in cfg.collect.policy,
         "collect.controller_weights", "=sb3 plays the run's SB3 policy: set controller.algo "
         "to its algorithm (ppo, a2c, sac or td3)"),
        (cfg.collect.controller_weights != "finalists" or "controller" not in cfg.collect.policy
         and (cfg.run.iterations == 1 or not rounds) or cfg.controller.final_candidates > 0,
         "collect.controller_weights", "=finalists plays the finalists of the run's second "
         "selection stage: set controller.final_candidates and controller.final_episodes"),
        (cfg.run.iterations == 1 or not rounds
         or (cfg.controller.algo == "cmaes") == (cfg.collect.controller_weights != "sb3"),
         "run.iterations", "above 1: later rounds collect with the controller data policy, "
         "which must play what the controller stage trains: CMA-ES's weights "
         "(controller.algo=cmaes) or, with collect.controller_weights=sb3, the SB3 "
         "policy (controller.algo=ppo, a2c, sac or td3)"),
        (cfg.run.agent_round == "last" or cfg.run.iterations == 1 or not rounds
         or cmaes_selects,
         "run.agent_round", "=best compares the rounds' controllers on the selection "
         "episodes: it needs controller.algo=cmaes and a selection "
         "(0 < controller.eval_every <= controller.generations)"),
        (not cfg.controller.sb3_init or cfg.controller.algo != "cmaes",
         "controller.sb3_init", "starts an SB3 training: set controller.algo to its "
         "algorithm (ppo, a2c, sac or td3)"),
        (cfg.controller.restarts == 1 or cmaes_selects,
         "controller.restarts", "above 1 needs controller.algo=cmaes and a selection "
         "(0 < controller.eval_every <= controller.generations): the searches are "
         "compared on the selection seeds"),
        ((cfg.controller.final_candidates > 0) == (cfg.controller.final_episodes > 0),
         "controller.final_candidates",
         "and controller.final_episodes go together: both 0 (no second selection stage) "
         "or both above 0"),
        (cfg.memory.select_max_held == 0 or cfg.dream.check_episodes > 0,
         "memory.select_max_held", "above 0 runs the held-action check on every epoch of "
         "M: it needs dream.check_episodes > 0"),
        (cfg.controller.final_candidates == 0 or cmaes_selects,
         "controller.final_candidates", "above 0 needs controller.algo=cmaes and a "
         "selection (0 < controller.eval_every <= controller.generations): the finalists "
         "are the checkpoints it scored"),
    ]
    for ok, key, why in checks:
        if not ok:
            raise ConfigError(f"config key '{key}' {why}")
    reserved = sorted(set(cfg.env.kwargs) & set(ENV_KWARGS_OWNED))
    if reserved:
        raise ConfigError(f"config key 'env.kwargs' holds '{reserved[0]}', which "
                          f"{ENV_KWARGS_OWNED[reserved[0]]}")


#: keywords of gymnasium.make that the env's own keys give (in env.kwargs as well, make
#: got them twice: a TypeError)
ENV_KWARGS_OWNED = {
    "id": "is env.id",
    "max_episode_steps": "is env.max_episode_steps",
}


DATA_POLICIES = ("random", "held", "brownian", "linear", "controller")


def holdout_base(cfg: ExperimentConfig) -> int:
    """Episodes whose train / held-out split follows :func:`worldmodels.datasets.split_episodes`'s
    full rule (threshold and minimum); 0 means all. With ``run.iterations`` > 1 that is
    the first round's ``collect.episodes``: later rounds' episodes are held out by the
    threshold alone, so adding them never moves an earlier episode."""
    return cfg.collect.episodes if cfg.run.iterations > 1 else 0


def policy_schedule(spec: str) -> list[tuple[str, int]]:
    """``collect.policy``: ``"random"`` or ``"random:2000,linear"``, as (policy, episodes)
    segments in episode order; a segment without a count (only the last may lack one)
    takes the rest (-1)."""
    segments = []
    parts = [x.strip() for x in spec.split(",")]
    for i, part in enumerate(parts):
        name, sep, count = part.partition(":")
        if name not in DATA_POLICIES:
            raise ConfigError(f"collect.policy '{spec}': unknown policy '{name}'")
        if not sep and i < len(parts) - 1:
            raise ConfigError(f"collect.policy '{spec}': only the last segment may omit ':N'")
        if sep and not (count.isdigit() and int(count) > 0):
            raise ConfigError(f"collect.policy '{spec}': counts must be integers >= 1")
        segments.append((name, int(count) if sep else -1))
    return segments


def _is_schedule(spec: str) -> bool:
    try:
        policy_schedule(spec)
    except ConfigError:
        return False
    return True


def to_dict(cfg: ExperimentConfig) -> dict:
    return dataclasses.asdict(cfg)


def has_package(name: str) -> bool:
    """Whether ``name`` can be imported (without importing it)."""
    return importlib.util.find_spec(name) is not None


def refuse_missing_engines(cfg: ExperimentConfig, changed: set[str] | None = None) -> None:
    """``engine=ray`` without the ``ray`` package, named by its key: checked before a
    command saves the config that asks for it (:meth:`RunDir.write_config`). With
    ``changed`` (the keys the command changes in a run's config) only an engine it sets
    is checked: a run made on a Ray cluster still trains V or M where ray is absent."""
    for key, section in (("collect", cfg.collect), ("controller", cfg.controller)):
        if changed is not None and f"{key}.engine" not in changed:
            continue
        if section.engine == "ray" and not has_package("ray"):
            raise MissingPackageError(f"config key '{key}.engine': engine=ray needs the "
                                      "package 'ray': pip install 'worldmodels[ray]'")


def save_config(cfg: ExperimentConfig, path: Path) -> None:
    """Write the resolved config (atomically) so a run can be rebuilt from it."""
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_help(obj: Any | None = None) -> list[str]:
    """One line per key: ``vae.epochs = 10  # Epochs over the training episodes.``"""
    return [f"{key} = {value!r}  # {f.metadata.get('help', '')}"
            f"{_allowed_text(hint, f.metadata.get('range'))}"
            for key, f, hint, value in walk_fields(obj)]


def _allowed_text(tp: Any, bounds: dict | None) -> str:
    """`` [a | b]`` for a choice, `` [>= 1]`` for a range, else ''."""
    if typing.get_origin(tp) is Literal:
        return f" [{' | '.join(map(str, typing.get_args(tp)))}]"
    return f" [{_range_text(bounds)}]" if bounds else ""


class _Parser(argparse.ArgumentParser):
    """An argument error (``--policy bogus``, ``--episodes x``) is a :class:`ConfigError`:
    one line naming the option, exit status 2 through ``run_cli``, not argparse's
    usage block."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message} (--help lists the options)")


def comma_list(text: str) -> list[str]:
    """A comma-separated option's items, blanks dropped: ``"a, b,"`` -> ``["a", "b"]``."""
    return [s.strip() for s in text.split(",") if s.strip()]


def _no_repeats(items: list[Any], option: str, required: bool) -> None:
    if required and not items:
        raise ConfigError(f"{option}: give at least one value")
    repeated = sorted({str(x) for x in items if items.count(x) > 1})
    if repeated:  # a repeat would count one run twice (a standard error of 0)
        raise ConfigError(f"{option}: {', '.join(repeated)} given more than once")


def comma_names(text: str, option: str) -> list[str]:
    """A comma-separated option's names: at least one, none twice (a ConfigError naming
    ``option`` otherwise)."""
    names = comma_list(text)
    _no_repeats(names, option, required=True)
    return names


def comma_integers(text: str, option: str, low: int | None = None, high: int | None = None,
                   required: bool = False) -> list[int]:
    """A comma-separated option's integers, none twice, each in [low, high] where given
    (and at least one if ``required``); a ConfigError naming ``option`` otherwise."""
    try:
        values = [int(s) for s in comma_list(text)]
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated integers, not '{text}'") \
            from None
    _no_repeats(values, option, required)
    for value in values:
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(f"{option}: {value} is outside "
                              f"[{'' if low is None else low}, {'' if high is None else high}]")
    return values


def comma_seeds(text: str, option: str = "--seeds") -> list[int]:
    """A comma-separated list of seeds: at least one, none twice, each in [0, SEED_MAX]
    (what the seeded libraries take)."""
    return comma_integers(text, option, low=0, high=SEED_MAX, required=True)


def check_seed(value: int, option: str) -> int:
    """``value`` if it is a seed the seeded libraries take, else a ConfigError."""
    if not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{option}: {value} is outside [0, {SEED_MAX}]")
    return value


def doc_summary(doc: str | None) -> str:
    """A command's --help description: its docstring's first paragraph, on one line."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def command_parser(doc: str | None) -> argparse.ArgumentParser:
    """A tool's argument parser, its --help description the first paragraph of ``doc``
    (the module's docstring); an argument error is one line, as for every entry point."""
    return _Parser(description=doc_summary(doc))


def cli_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every entry point shares: --config, --preset, key=value overrides."""
    parser = _Parser(
        description=description,
        epilog="Overrides are dotted keys, e.g. vae.epochs=5 collect.workers=2. "
        "--help-config lists every key.",
    )
    parser.add_argument("--config", default=None,
                        help="config name in configs/ or a YAML path (default: carracing); "
                             "a run's DIR/config.yaml is the run at DIR")
    parser.add_argument("--preset", action="append", default=None,
                        help="named preset(s) layered over the file's defaults, e.g. quick")
    parser.add_argument("--run", default=None, metavar="DIR",
                        help="the run's directory, wherever it is: its config.yaml is the "
                             "config (overrides on top), instead of --config; with --preset, "
                             "that preset's controller.* keys over the run's config")
    parser.add_argument("--help-config", action="store_true", help="list every config key")
    parser.add_argument("overrides", nargs="*", help="dotted overrides key=value")
    return parser


def parse_cli(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse options and ``key=value`` overrides in any order (``--algo ppo a.b=1`` too).
    A key given twice is said on stderr: the last value is the one used."""
    args = parser.parse_intermixed_args(argv)
    keys = [text.split("=", 1)[0].strip() for text in getattr(args, "overrides", None) or []]
    for key in sorted({k for k in keys if keys.count(k) > 1}):
        last = [t for t in args.overrides if t.split("=", 1)[0].strip() == key][-1]
        print(f"command line: {key} is given {keys.count(key)} times; the last, {last}, "
              "is used", file=sys.stderr)
    return args


def exit_on_help_config(args: argparse.Namespace) -> None:
    """``--help-config``: print every key with its default, choices and range, exit 0."""
    if args.help_config:
        print("\n".join(config_help()))
        raise SystemExit(0)


def preset_names(args: argparse.Namespace) -> list[str]:
    """The ``--preset`` names, in order (each option may list several, comma-separated)."""
    return [p for item in args.preset or [] for p in item.split(",") if p]


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    exit_on_help_config(args)
    return load_config(args.config or "carracing", preset_names(args), args.overrides)
