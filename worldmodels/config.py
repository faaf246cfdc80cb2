"""Experiment configuration: typed dataclasses are the source of truth.

A YAML file per environment fills them in layers (DreamerV3-style)::

    dataclass defaults  <-  file `defaults:`  <-  file `presets: {name: ...}`  <-  CLI `a.b=value`

Every key and type is checked before any work starts; an unknown key or a value of
the wrong type raises :class:`ConfigError` naming the key and where it came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from worldmodels.errors import InputError


class ConfigError(InputError, ValueError):
    """A config key is unknown, has the wrong type, or a preset/file is missing."""


def config_dir() -> Path:
    """The directory of the preset files: the package ``configs``, whose YAML files are
    package data, so a checkout, an editable install and a wheel all find them."""
    try:
        return Path(str(resources.files("configs")))
    except ModuleNotFoundError:
        raise ConfigError("the package 'configs' (the preset files) is not installed: "
                          "reinstall worldmodels (pip install ., or pip install -e . "
                          "in a checkout)") from None


def _opt(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse's name
    """A dataclass field with a help text (shown by ``--help-config``)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class EnvConfig:
    id: str = _opt("CarRacing-v3", "Gymnasium id of the raw pixel environment.")
    frame_size: int = _opt(64, "Frames are resized to frame_size x frame_size x 3 uint8.")
    max_episode_steps: int = _opt(-1, "Episode cap: -1 = the paper's cap, 0 = the env's own.")
    crop_bottom: int = _opt(-1, "Rows cut off the frame's bottom: -1 = the paper's choice.")
    kwargs: dict = _opt({}, "Extra keyword arguments for gymnasium.make.")
    fast_render: bool = _opt(True, "Use a pixel-identical faster renderer where there is one "
                             "(CarRacing-v3: envs/fast_car_racing.py); false = Gymnasium's.")
    direct_render: bool = _opt(False, "Draw frames straight at their final size where there is "
                               "such a renderer (CarRacing-v3: envs/direct_car_racing.py): "
                               "faster than fast_render, pixels differ slightly.")


@dataclass
class CollectConfig:
    episodes: int = _opt(10000, "Number of episodes (one shard each) to collect.")
    workers: int = _opt(2, "Parallel workers (0 = one per CPU core).")
    engine: str = _opt("process", "serial | process | ray.")
    ray_address: str = _opt("", "Ray cluster address for engine=ray ('' starts a local Ray).")
    policy: str = _opt("brownian", "Data policy: random | brownian | linear | controller (the "
                                   "run's trained V-M-C agent), or a schedule 'random:2000,"
                                   "linear' (episodes 0-1999 random, then linear).")
    brownian_dt: float = _opt(0.02, "Brownian policy step: a' = clip(a + sqrt(dt) N(0, I)).")
    linear_std: float = _opt(0.5, "Linear policy: weights ~ N(0, s^2), s ~ U(0, linear_std).")
    controller_weights: str = _opt("best", "Controller policy: the run's best | mean weights.")
    controller_epsilon: float = _opt(0.1, "Controller policy: chance of a uniform random action "
                                     "at each step.")
    compress_level: int = _opt(1, "zlib level of shards (0 = stored, 9 = smallest).")


@dataclass
class DataConfig:
    holdout_fraction: float = _opt(0.05, "Fraction of episodes held out (fixed by the seed).")
    shuffle_buffer: int = _opt(20000, "Frames held in memory for shuffling while streaming.")
    loader_workers: int = _opt(0, "DataLoader worker processes that read shards.")
    skip_corrupt: bool = _opt(False, "Skip unreadable or invalid shards (counted and listed "
                                     "in <run>/skipped_shards.json) instead of stopping.")


@dataclass
class VAEConfig:
    z_dim: int = _opt(32, "Latent size.")
    kl_tolerance: float = _opt(0.5, "Ha's free bits: KL is floored at kl_tolerance * z_dim nats.")
    kl_weight: float = _opt(1.0, "Weight of the KL term.")
    lr: float = _opt(1e-4, "Adam learning rate.")
    batch_size: int = _opt(100, "Frames per batch.")
    epochs: int = _opt(10, "Epochs over the training episodes.")
    max_frames_per_epoch: int = _opt(0, "Stop an epoch after this many frames (0 = all).")
    max_holdout_frames: int = _opt(20000, "Held-out frames scored each epoch (0 = all).")
    grid_frames: int = _opt(8, "Held-out frames in the reconstruction grid PNG (0: none).")


@dataclass
class EncodeConfig:
    batch_size: int = _opt(1000, "Frames per encoder batch.")


@dataclass
class MemoryConfig:
    hidden: int = _opt(256, "LSTM hidden size.")
    mixtures: int = _opt(5, "Mixture components K.")
    precision: str = _opt("square", "Tied precision U D_k U^T: diag | square | overcomplete.")
    overcomplete_m: int = _opt(0, "Columns m > d of an overcomplete U (0 = 2d).")
    flow: str = _opt("maf", "Flow f on z_{t+1}: none (RMDN) | maf | coupling.")
    flow_layers: int = _opt(2, "Flow transforms.")
    flow_hidden: int = _opt(64, "Hidden units of each flow transform's two hidden layers.")
    flow_conditional: bool = _opt(True, "Condition the flow on h_t.")
    reward_head: bool = _opt(True, "Predict the reward from h_t (Gaussian / MSE).")
    done_head: bool = _opt(True, "Predict episode termination from h_t (Bernoulli).")
    reward_weight: float = _opt(1.0, "Weight of the reward MSE in the loss.")
    done_weight: float = _opt(1.0, "Weight of the done BCE in the loss.")
    done_pos_weight: float = _opt(1.0, "Weight of terminal steps in the done BCE (Ha used 10 "
                                       "for Doom); dreams calibrate the probability back.")
    seq_len: int = _opt(100, "Truncated-BPTT window length.")
    batch_size: int = _opt(32, "Windows per batch.")
    lr: float = _opt(1e-3, "Adam learning rate.")
    grad_clip: float = _opt(1.0, "Gradient norm clip (0 = off).")
    epochs: int = _opt(20, "Epochs over the training episodes.")
    shuffle_buffer: int = _opt(2000, "Windows held in memory for shuffling.")
    nonfinite: str = _opt("raise", "On a NaN/Inf loss: raise (naming the step) | skip (count it).")


@dataclass
class ControllerConfig:
    algo: str = _opt("cmaes", "cmaes, or a Stable-Baselines3 algorithm: ppo | a2c | sac | td3.")
    sb3_timesteps: int = _opt(100_000, "Environment steps for an SB3 algorithm.")
    environment: str = _opt("real", "Where C trains: real (the env) | dream (M as the env; "
                                    "evaluation is always in the real env).")
    hidden: int = _opt(0, "Hidden units of C (0 = linear, as in the paper).")
    use_cell: bool = _opt(False, "Feed M's cell state too: [z, c, h] (the paper's Doom setup).")
    discrete_head: str = _opt("argmax", "Discrete actions: argmax (one logit per action) | "
                                        "ordinal (one tanh output cut into equal bins of "
                                        "[-1, 1], as the paper's Doom controller).")
    action_order: list = _opt([], "Ordinal head: the action of each bin from -1 to 1 "
                                  "(empty: 0..n-1). TakeCover: [2, 0, 1], left-stay-right.")
    population: int = _opt(64, "CMA-ES population size.")
    rollouts: int = _opt(16, "Episodes per candidate; fitness is their mean return.")
    sigma0: float = _opt(0.1, "CMA-ES initial step size.")
    generations: int = _opt(300, "Generations to run (a rerun resumes to this many).")
    target_return: float = _opt(0.0, "Stop once the best's eval mean reaches it (0: off).")
    eval_every: int = _opt(25, "Every N generations, evaluate the best candidate on more episodes.")
    eval_episodes: int = _opt(100, "Episodes of that evaluation.")
    engine: str = _opt("process", "Evaluator: serial | process | ray.")
    workers: int = _opt(0, "Evaluator workers (0 = one per core).")
    ray_address: str = _opt("", "Ray cluster address for engine=ray ('' starts a local Ray).")
    max_episode_steps: int = _opt(0, "Cap on training episodes (0 = the env's cap).")
    stall_steps: int = _opt(0, "End a training episode after N steps without positive reward "
                               "(0: off; evaluation always plays whole episodes).")


@dataclass
class DreamConfig:
    temperature: float = _opt(1.15, "tau: M's mixture logits / tau and covariance x tau "
                                    "(1.15 was the paper's best for Doom).")
    done: str = _opt("sample", "How M ends a dream: sample (a Bernoulli of its calibrated "
                               "P(done)) | threshold (P(done) > done_threshold).")
    done_threshold: float = _opt(0.5, "P(done) above which a dream ends, for done=threshold.")
    max_steps: int = _opt(0, "Cap on dream length (0 = the env's cap).")
    threads: int = _opt(0, "Torch threads for the batched dream (0 = torch's default).")
    check_episodes: int = _opt(30, "run.py, before C trains in the dream: real episodes per "
                                   "held action for the held-action check (0 = skip it).")
    max_held_ratio: float = _opt(0.0, "Gate: stop before CMA-ES when a held action lives "
                                      "more than this many times longer in the dream than "
                                      "in the real env (0 = report only).")


@dataclass
class ExperimentConfig:
    name: str = _opt("", "Run name; '' uses the preset names (or 'paper').")
    seed: int = _opt(0, "Seed for collection, splits, shuffling and initialisation.")
    root: str = _opt("runs", "Directory that holds run directories.")
    device: str = _opt("cpu", "Torch device: cpu | cuda | cuda:N.")
    env: EnvConfig = field(default_factory=EnvConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    dream: DreamConfig = field(default_factory=DreamConfig)

    @property
    def run_dir(self) -> Path:
        """``<root>/<env slug>/<name>``: every stage of one experiment lives here."""
        return Path(self.root) / env_slug(self.env.id) / (self.name or "paper")


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
    """Set the fields of dataclass ``obj`` from a nested dict, checking keys and types."""
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


def parse_override(text: str) -> dict:
    """``'vae.epochs=5'`` -> ``{'vae': {'epochs': 5}}`` (the value is read as YAML)."""
    if "=" not in text:
        raise ConfigError(f"command line: override '{text}' must look like key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"command line: cannot read value of '{key}': {err}") from err
    return _dotted_to_nested(key.strip(), value)


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML path, or the stem of a file in ``configs/`` (``carracing``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    folder = config_dir()
    candidate = folder / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
    raise ConfigError(f"config '{name_or_path}' not found (known in {folder}: {known})")


def load_config(
    config: str | None = "carracing",
    presets: list[str] | None = None,
    overrides: list[str] | None = None,
) -> ExperimentConfig:
    """Build the resolved config: defaults <- file <- presets <- overrides.

    ``config`` is a preset file (``defaults:`` and ``presets:``), or a run directory's
    resolved ``config.yaml``, which reproduces that run.
    """
    cfg = ExperimentConfig()
    presets = [p for p in (presets or []) if p]
    if config:
        path = resolve_config_path(config)
        with open(path) as fh:
            try:
                data = yaml.safe_load(fh) or {}
            except yaml.YAMLError as err:
                raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if data and not {"defaults", "presets"} & set(data):
            # a resolved config.yaml from a run directory: the whole file is the defaults
            data = {"defaults": data}
        unknown_top = set(data) - {"defaults", "presets"}
        if unknown_top:
            raise ConfigError(
                f"{path}: unknown top-level key(s) {sorted(unknown_top)} "
                "(a config file holds 'defaults' and 'presets')"
            )
        merge_into(cfg, data.get("defaults") or {}, f"{path} defaults")
        file_presets = data.get("presets") or {}
        for preset in presets:
            if preset not in file_presets:
                raise ConfigError(
                    f"{path}: no preset '{preset}' (known: {', '.join(sorted(file_presets))})"
                )
            merge_into(cfg, file_presets[preset] or {}, f"{path} preset '{preset}'")
    elif presets:
        raise ConfigError("presets need a config file")
    if not cfg.name:
        cfg.name = "+".join(presets) if presets else "paper"
    for text in overrides or []:
        merge_into(cfg, parse_override(text), f"command line '{text}'")
    validate(cfg)
    return cfg


def validate(cfg: ExperimentConfig) -> None:
    """Value checks that types alone cannot express."""
    checks = [
        (cfg.collect.engine in ("serial", "process", "ray"), "collect.engine",
         "must be serial, process or ray"),
        (_is_schedule(cfg.collect.policy), "collect.policy",
         "must be random, brownian, linear or controller, or a schedule like "
         "'random:2000,linear'"),
        (cfg.collect.controller_weights in ("best", "mean"), "collect.controller_weights",
         "must be best or mean"),
        (0.0 <= cfg.collect.controller_epsilon <= 1.0, "collect.controller_epsilon",
         "must be in [0, 1]"),
        (cfg.seed >= 0, "seed", "must be >= 0"),
        (cfg.collect.episodes >= 0, "collect.episodes", "must be >= 0"),
        (cfg.collect.workers >= 0, "collect.workers", "must be >= 0"),
        (0 <= cfg.collect.compress_level <= 9, "collect.compress_level", "must be 0..9"),
        (0.0 < cfg.data.holdout_fraction < 1.0, "data.holdout_fraction", "must be in (0, 1)"),
        (cfg.data.shuffle_buffer >= 1, "data.shuffle_buffer", "must be >= 1"),
        (cfg.env.frame_size == 64, "env.frame_size", "the ConvVAE takes 64x64 frames"),
        (cfg.vae.z_dim >= 1, "vae.z_dim", "must be >= 1"),
        (cfg.vae.batch_size >= 1, "vae.batch_size", "must be >= 1"),
        (cfg.vae.lr > 0, "vae.lr", "must be > 0"),
        (cfg.memory.precision in ("diag", "square", "overcomplete"), "memory.precision",
         "must be diag, square or overcomplete"),
        (cfg.memory.flow in ("none", "maf", "coupling"), "memory.flow",
         "must be none, maf or coupling"),
        (cfg.memory.nonfinite in ("raise", "skip"), "memory.nonfinite", "must be raise or skip"),
        (cfg.controller.algo in ("cmaes", "ppo", "a2c", "sac", "td3"), "controller.algo",
         "must be cmaes, ppo, a2c, sac or td3"),
        (cfg.controller.engine in ("serial", "process", "ray"), "controller.engine",
         "must be serial, process or ray"),
        (cfg.controller.population >= 2 and cfg.controller.rollouts >= 1,
         "controller.population", "must be >= 2 (and controller.rollouts >= 1)"),
        (cfg.memory.overcomplete_m == 0 or cfg.memory.overcomplete_m > cfg.vae.z_dim,
         "memory.overcomplete_m", "must be 0 or > vae.z_dim"),
        (cfg.memory.seq_len >= 1 and cfg.memory.batch_size >= 1, "memory.seq_len",
         "and memory.batch_size must be >= 1"),
        (cfg.memory.done_pos_weight > 0, "memory.done_pos_weight", "must be > 0"),
        (cfg.controller.environment in ("real", "dream"), "controller.environment",
         "must be real or dream"),
        (cfg.controller.discrete_head in ("argmax", "ordinal"), "controller.discrete_head",
         "must be argmax or ordinal"),
        (all(isinstance(a, int) and not isinstance(a, bool) and a >= 0
             for a in cfg.controller.action_order), "controller.action_order",
         "must be a list of action indices"),
        (cfg.dream.temperature > 0, "dream.temperature", "must be > 0"),
        (cfg.dream.done in ("sample", "threshold"), "dream.done", "must be sample or threshold"),
        (0 < cfg.dream.done_threshold < 1, "dream.done_threshold", "must be in (0, 1)"),
        (cfg.dream.max_steps >= 0 and cfg.dream.threads >= 0, "dream.max_steps",
         "and dream.threads must be >= 0"),
    ]
    for ok, key, why in checks:
        if not ok:
            raise ConfigError(f"config key '{key}' {why}")


DATA_POLICIES = ("random", "brownian", "linear", "controller")


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


def save_config(cfg: ExperimentConfig, path: Path) -> None:
    """Write the resolved config (atomically) so a run can be rebuilt from it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)


def config_help(obj: Any | None = None, prefix: str = "") -> list[str]:
    """One line per key: ``vae.epochs = 10  # Epochs over the training episodes.``"""
    obj = obj if obj is not None else ExperimentConfig()
    lines = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            lines += config_help(value, f"{prefix}{f.name}.")
        else:
            lines.append(f"{prefix}{f.name} = {value!r}  # {f.metadata.get('help', '')}")
    return lines


def cli_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every entry point shares: --config, --preset, key=value overrides."""
    parser = argparse.ArgumentParser(
        description=description,
        epilog="Overrides are dotted keys, e.g. vae.epochs=5 collect.workers=2. "
        "--help-config lists every key.",
    )
    parser.add_argument("--config", default="carracing",
                        help="config name in configs/ or a YAML path (default: carracing)")
    parser.add_argument("--preset", action="append", default=None,
                        help="named preset(s) layered over the file's defaults, e.g. quick")
    parser.add_argument("--help-config", action="store_true", help="list every config key")
    parser.add_argument("overrides", nargs="*", help="dotted overrides key=value")
    return parser


def parse_cli(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse options and ``key=value`` overrides in any order (``--algo ppo a.b=1`` too)."""
    return parser.parse_intermixed_args(argv)


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    if args.help_config:
        print("\n".join(config_help()))
        raise SystemExit(0)
    presets: list[str] = []
    for item in args.preset or []:
        presets += [p for p in item.split(",") if p]
    return load_config(args.config, presets, args.overrides)
