"""Stable-Baselines3 on [z, h]: a wrapper that gives any real pixel env observations
made by frozen V and M, and a training route that saves without pickle.

SB3's own ``.zip`` holds cloudpickled objects that ``load`` would execute, so the policy
is saved as ``controller/sb3_<algo>.safetensors`` (its state dict; trained in the dream:
``sb3_<algo>_dream.safetensors``) with a JSON sidecar, and rebuilt by constructing the
same algorithm and loading the weights.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    VecEnv,
    VecEnvWrapper,
    VecMonitor,
    VecNormalize,
)
from torch import nn

from agents.rollouts import play_settings
from agents.seeds import selection_seeds
from agents.vmc import agent_encoder
from envs.dream_env import action_batch, dream_training_settings, dream_vec_env
from envs.factory import make_env_from_config
from worldmodels.atomic import check_writable
from worldmodels.checkpoint import (
    CheckpointError,
    file_digest,
    load_state,
    read_json,
    refuse_non_finite,
    save_state,
    write_bytes_atomic,
    write_text_atomic,
)
from worldmodels.config import AgentPrecision, ConfigError, ExperimentConfig, to_dict
from worldmodels.memory import Memory, State, zero_rows
from worldmodels.pictures import plot_curves
from worldmodels.run_dir import RUNTIME_KEYS, TRAINED_RUN_SECTIONS, RunDir
from worldmodels.vae import ConvVAE

if TYPE_CHECKING:
    from agents.batched import EpisodeResult


class LatentObservation(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Observations: M's features ``[z_t, h_t]`` float32 (``memory.feature_size()``,) from
    a frozen V and M (``[z_t, c_t, h_t]`` with ``use_cell``, as
    :class:`envs.dream_env.DreamEnv` gives).

    z_t is V's mean for the frame; h_t is M's hidden state after reading
    (z_{t-1}, a_{t-1}); ``reset`` starts M from zeros. Actions pass through unchanged.

    V and M are given, or loaded from ``run_dir`` when they are not. ``env.spec`` records
    the run directory rather than the models, so ``env.spec.make()`` rebuilds the env
    (and the spec stays plain data); given models without a ``run_dir`` are recorded
    by reference instead. V reads frames in ``precision`` (``controller.agent_precision``,
    :func:`agents.vmc.agent_encoder`), as the agent that plays the policy does.
    """

    def __init__(self, env: gym.Env, vae: ConvVAE | None = None, memory: Memory | None = None,
                 device: str = "cpu", use_cell: bool = False,
                 run_dir: str | Path | None = None, precision: AgentPrecision = "float32"):
        if run_dir is not None:
            run_dir = str(Path(run_dir).absolute())  # the spec may be made elsewhere
            gym.utils.RecordConstructorArgs.__init__(
                self, device=str(device), use_cell=use_cell, run_dir=run_dir,
                precision=precision)
        elif vae is None or memory is None:
            raise ValueError("LatentObservation needs V and M, or the run_dir to load them")
        else:
            gym.utils.RecordConstructorArgs.__init__(
                self, _disable_deepcopy=True, vae=vae, memory=memory, device=str(device),
                use_cell=use_cell, precision=precision)
        gym.Wrapper.__init__(self, env)
        if vae is None or memory is None:
            run = RunDir(run_dir)
            vae = run.load_vae(run.load_config().vae.z_dim, device) if vae is None else vae
            memory = run.load_memory(device) if memory is None else memory
        self.vae, self.memory = vae.eval(), memory.eval()
        self.encoder = agent_encoder(self.vae, precision)
        self.device = torch.device(device)
        self.use_cell = use_cell
        size = memory.feature_size(use_cell)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)
        self._z: torch.Tensor | None = None
        self._state: State | None = None

    @torch.no_grad()
    def _encode(self, frame: np.ndarray) -> torch.Tensor:
        return self.encoder(torch.from_numpy(frame[None]).to(self.device))

    def _observation(self) -> np.ndarray:
        assert self._z is not None and self._state is not None
        return self.memory.features(self._z, self._state, self.use_cell)[0].cpu().numpy()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        frame, info = self.env.reset(seed=seed, options=options)
        self._state = self.memory.initial_state(1, self.device)
        self._z = self._encode(frame)
        return self._observation(), info

    @torch.no_grad()
    def step(self, action: Any):
        a = action_batch([action], self.action_space).to(self.device)
        _, self._state = self.memory.step(self._z, a, self._state)
        frame, reward, terminated, truncated, info = self.env.step(action)
        self._z = self._encode(frame)
        return self._observation(), reward, terminated, truncated, info


class LatentVecEnv(VecEnvWrapper):
    """N real envs with observations M's features [z, h] ([z, c, h] with ``use_cell``),
    as :class:`LatentObservation` gives for one, V and M batched: each step V encodes
    the N frames in one call and M steps the N states in one call.

    ``venv`` holds the pixel envs (e.g. SB3's ``DummyVecEnv``, which resets an ended
    env at once); an env that starts anew starts M from zeros, and its last observation
    is in ``info["terminal_observation"]`` as features too. V reads frames in
    ``precision``, as :class:`LatentObservation` does.
    """

    def __init__(self, venv: VecEnv, vae: ConvVAE, memory: Memory, device: str = "cpu",
                 use_cell: bool = False, precision: AgentPrecision = "float32"):
        size = memory.feature_size(use_cell)
        super().__init__(venv, gym.spaces.Box(-np.inf, np.inf, (size,), np.float32))
        self.vae, self.memory = vae.eval(), memory.eval()
        self.encoder = agent_encoder(self.vae, precision)
        self.device, self.use_cell = torch.device(device), use_cell
        self._z: torch.Tensor | None = None
        self._state: State | None = None
        self._actions: Any = None

    @torch.no_grad()
    def _encode(self, frames: np.ndarray) -> torch.Tensor:
        return self.encoder(torch.from_numpy(np.ascontiguousarray(frames)).to(self.device))

    def _features(self, z: torch.Tensor, state: State) -> np.ndarray:
        return self.memory.features(z, state, self.use_cell).cpu().numpy()

    @torch.no_grad()
    def reset(self) -> np.ndarray:
        frames = self.venv.reset()
        self._state = self.memory.initial_state(self.num_envs, self.device)
        self._z = self._encode(frames)
        return self._features(self._z, self._state)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions
        self.venv.step_async(actions)

    @torch.no_grad()
    def step_wait(self):
        assert self._z is not None and self._state is not None, "reset first"
        a = action_batch(self._actions, self.action_space).to(self.device)
        _, state = self.memory.step(self._z, a, self._state)
        frames, rewards, dones, infos = self.venv.step_wait()
        for i in np.flatnonzero(dones):  # the ended episode's last frame, before M restarts
            if "terminal_observation" in infos[i]:
                last = self._encode(infos[i]["terminal_observation"][None])
                row = tuple(s[:, i : i + 1] for s in state)
                infos[i]["terminal_observation"] = self._features(last, row)[0]
        self._state = zero_rows(state, torch.as_tensor(dones, device=self.device))
        self._z = self._encode(frames)
        return self._features(self._z, self._state), rewards, dones, infos


def latent_vec_env(run: RunDir, cfg: ExperimentConfig, n: int,
                   device: str = "cpu") -> LatentVecEnv:
    """``n`` envs of ``cfg.env`` in one process, with the run's V and M batched. Sets
    torch to one thread for the whole process, as :func:`latent_env` does."""
    torch.set_num_threads(1)
    venv = DummyVecEnv([lambda: make_env_from_config(cfg.env)] * n)
    return LatentVecEnv(venv, run.load_vae(cfg.vae.z_dim, device), run.load_memory(device),
                        device, cfg.controller.use_cell, cfg.controller.agent_precision)


def make_latent_env(run_dir: str | Path | RunDir, device: str = "cpu",
                    overrides: tuple[str, ...] = ()) -> LatentObservation:
    """The real env of the trained run at ``run_dir``, wrapped with the run's V and M.
    ``overrides``: ``env.*`` keys (another variant of its env; see RunDir.load_config)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    return latent_env(run, run.load_config(overrides), device)


def latent_env(run: RunDir, cfg: ExperimentConfig, device: str = "cpu") -> LatentObservation:
    """The env of ``cfg.env`` wrapped with the run's V and M. Sets torch to one thread
    for the whole process (one frame a step: more threads only contend); a caller that
    needs more afterwards sets them back."""
    torch.set_num_threads(1)
    vae = run.load_vae(cfg.vae.z_dim, device)
    memory = run.load_memory(device)
    return LatentObservation(make_env_from_config(cfg.env), vae, memory, device,
                             cfg.controller.use_cell, run_dir=run.home,
                             precision=cfg.controller.agent_precision)


#: the policy sidecar's key for the digests of the V and M it was trained on
WORLD_MODEL_META = "world_model"

#: ``controller.algo`` -> the name of its Stable-Baselines3 class
SB3_ALGORITHMS = {"ppo": "PPO", "a2c": "A2C", "sac": "SAC", "td3": "TD3"}
#: SB3 keyword arguments that take a schedule: a number, or ``"lin_<x>"`` (rl-zoo's
#: notation: x at the start, falling linearly to 0 at the end of training)
SCHEDULE_KEYS = ("learning_rate", "clip_range", "clip_range_vf")
#: ``policy_kwargs.activation_fn`` names (``"GELU"`` or ``"nn.GELU"``) -> torch.nn classes
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "GELU": nn.GELU, "Tanh": nn.Tanh, "ReLU": nn.ReLU, "ELU": nn.ELU, "SiLU": nn.SiLU,
    "LeakyReLU": nn.LeakyReLU}
#: training episodes whose mean return is one point of the learning curve
CURVE_WINDOW = 20


def algorithm_class(name: str) -> Any:
    import stable_baselines3 as sb3

    if name not in SB3_ALGORITHMS:
        raise ConfigError(f"unknown SB3 algorithm '{name}' (known: {', '.join(SB3_ALGORITHMS)})")
    return getattr(sb3, SB3_ALGORITHMS[name])


def _schedule(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    number = value.removeprefix("lin_")
    try:
        start = float(number)
    except ValueError:
        start = float("nan")
    if number == value or not start > 0:
        raise ConfigError(f"config key 'controller.sb3_kwargs.{key}' must be a number or "
                          f"'lin_<x>' with x > 0 (a linear schedule from x to 0), got {value!r}")
    return LinearSchedule(start, 0.0, 1.0)


def sb3_model_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``controller.sb3_kwargs`` (JSON values, as saved in a policy's meta) -> the keyword
    arguments of the SB3 class: ``"lin_<x>"`` for a key of :data:`SCHEDULE_KEYS` is a
    linear schedule from x to 0 (rl-zoo's ``lin_1e-4``), ``policy_kwargs.activation_fn``
    a name of :data:`ACTIVATIONS`; the rest (``net_arch`` dicts too) passes through.
    Training and loading both build the model through this."""
    out = {k: _schedule(k, v) if k in SCHEDULE_KEYS else v for k, v in kwargs.items()}
    policy_kwargs = out.get("policy_kwargs")
    if policy_kwargs is not None:
        if not isinstance(policy_kwargs, dict):
            raise ConfigError("config key 'controller.sb3_kwargs.policy_kwargs' must be a "
                              f"mapping, got {policy_kwargs!r}")
        policy_kwargs = dict(policy_kwargs)
        name = policy_kwargs.get("activation_fn")
        if name is not None:
            cls = ACTIVATIONS.get(str(name).removeprefix("nn.")) if isinstance(name, str) \
                else None
            if cls is None:
                raise ConfigError(
                    "config key 'controller.sb3_kwargs.policy_kwargs.activation_fn' must be "
                    f"one of {', '.join(ACTIVATIONS)}, got {name!r}")
            policy_kwargs["activation_fn"] = cls
        out["policy_kwargs"] = policy_kwargs
    return out


def build_model(algo: str, env: Any, seed: int, kwargs: dict[str, Any],
                tensorboard_log: str | None = None) -> Any:
    """An untrained ``algo`` on ``env`` from JSON ``kwargs`` (:func:`sb3_model_kwargs`);
    kwargs the algorithm does not take are a :class:`ConfigError` naming the key."""
    built = sb3_model_kwargs(kwargs)
    try:
        return algorithm_class(algo)("MlpPolicy", env, seed=seed, verbose=0,
                                     tensorboard_log=tensorboard_log, **built)
    except (TypeError, ValueError, AssertionError) as err:
        raise ConfigError(f"config key 'controller.sb3_kwargs' {kwargs} does not suit "
                          f"{SB3_ALGORITHMS[algo]}: {str(err).splitlines()[0]}") from None


def training_env(run: RunDir, cfg: ExperimentConfig) -> VecEnv:
    """Where an SB3 policy trains: ``controller.sb3_envs`` of the run's real envs on
    [z, h], or as many of its dreams in one batch (``controller.environment``), with
    episode returns in the infos (``VecMonitor``, raw rewards) and, with
    ``controller.sb3_normalize_reward``, rewards scaled by ``VecNormalize`` (its
    discount is the algorithm's ``gamma``)."""
    n = cfg.controller.sb3_envs
    if cfg.controller.environment == "dream":
        venv: VecEnv = dream_vec_env(run, cfg, n, seed=cfg.seed)
    else:
        venv = latent_vec_env(run, cfg, n)
    venv.seed(cfg.seed)
    venv = VecMonitor(venv)
    if cfg.controller.sb3_normalize_reward:
        gamma = float(cfg.controller.sb3_kwargs.get("gamma", 0.99))
        venv = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=gamma)
    return venv


def _settings(cfg: ExperimentConfig, kwargs: dict[str, Any]) -> dict[str, Any]:
    """What fixes an SB3 training (a checkpoint made with others is refused)."""
    c = cfg.controller
    settings = {"algo": c.algo, "kwargs": kwargs, "seed": cfg.seed,
                "environment": c.environment, "envs": c.sb3_envs,
                "normalize_reward": c.sb3_normalize_reward,
                # [z, h] or [z, c, h]: the size of what the policy reads
                "use_cell": c.use_cell}
    if c.environment == "real" and c.agent_precision != "float32":
        # what V reads the real frames in (a key made before it was recorded stays valid)
        settings["agent_precision"] = c.agent_precision
    if c.sb3_init:  # the bytes decide (a path differs with the working directory)
        settings["init"] = file_digest(init_policy_path(c.sb3_init, c.algo))
    settings.update(_played_settings(cfg, c.environment == "dream"))
    return settings


def _played_settings(cfg: ExperimentConfig, in_dream: bool) -> dict[str, Any]:
    """The env an SB3 training's real episodes (training or selection) play
    (:data:`ENV_KEY`, the ``env.*`` keys as :func:`agents.rollouts.play_settings` has
    them) and, ``in_dream``, the dream it trains in (:data:`DREAM_KEY`)."""
    played: dict[str, Any] = {ENV_KEY: play_settings(cfg)["env"]}
    if in_dream:
        played[DREAM_KEY] = dream_training_settings(cfg)
    return played


#: the settings keys of the env played and of the dream trained in
#: (:func:`_played_settings`): compared only while training remains (a finished training
#: reruns as done; CMA-ES exempts a finished search's env settings only, and refuses its
#: dream's); a checkpoint made before they were recorded (stop 61) is read as made with
#: the run's ``config.yaml``'s
ENV_KEY, DREAM_KEY = "env", "dream"


def init_policy_path(source: str, algo: str) -> Path:
    """The policy file ``controller.sb3_init`` names: the file itself, or a run's real-env
    ``controller/sb3_<algo>.safetensors``; a missing one is a :class:`ConfigError`."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = RunDir(path).controller.sb3(algo, "real")[0]
    if not path.is_file():
        raise ConfigError(f"config key 'controller.sb3_init' is {source!r}: no {algo} policy "
                          f"at {path} (give a run directory holding one, or its "
                          ".safetensors file)")
    return path.absolute()


def check_init_policy(run: RunDir, source: str, algo: str, kwargs: dict[str, Any]) -> Path:
    """The ``controller.sb3_init`` policy file, refused (a :class:`ConfigError` naming it)
    when its sidecar says another algorithm or network, or when ``source`` is a run whose
    V and M are not ``run``'s (the policy would read another [z, h])."""
    path = init_policy_path(source, algo)
    meta_path = path.with_suffix(".json")
    meta = read_json(meta_path, {}) if meta_path.exists() else {}
    if meta:
        theirs = (meta.get("algo"), (meta.get("kwargs") or {}).get("policy_kwargs", {}))
        ours = (algo, kwargs.get("policy_kwargs", {}))
        if theirs != ours:
            raise ConfigError(f"config key 'controller.sb3_init': {path} is {theirs[0]} with "
                              f"policy_kwargs {theirs[1]}; this training is {ours[0]} with "
                              f"{ours[1]}")
    theirs_wm, whose = _init_world_model(Path(source).expanduser(), path, meta)
    if theirs_wm is not None and theirs_wm != run.world_model_digests():
        raise ConfigError(f"config key 'controller.sb3_init': {whose}'s V and M differ "
                          f"from {run.home}'s, so its policy reads another [z, h]")
    return path


def _init_world_model(source: Path, path: Path, meta: dict[str, Any],
                      ) -> tuple[dict[str, str] | None, Path]:
    """The V and M digests an initial policy was trained on, and where they come from:
    the run ``source`` names; for a file, the digests its sidecar records (policies
    shipped since they were recorded) or else the run whose ``controller/`` holds it;
    (None, path) when neither tells."""
    if source.is_dir():
        return RunDir(source).world_model_digests(), source
    recorded = meta.get(WORLD_MODEL_META)
    if isinstance(recorded, dict):
        return recorded, path
    home = path.parent.parent
    if path.parent.name == "controller" and (home / "config.yaml").is_file():
        try:
            return RunDir(home).world_model_digests(), home
        except CheckpointError:
            return None, path
    return None, path


def load_policy(model: Any, path: Path, whose: str = "this run's policy") -> None:
    """Load the policy file at ``path`` (policy, value net, log std) into ``model``; an
    unreadable file, or one of another network, is a :class:`CheckpointError` naming it."""
    try:
        tensors = load_file(str(path))
    except (ValueError, OSError, SafetensorError) as err:
        raise CheckpointError(f"{path}: unreadable SB3 policy ({err})") from None
    for key, value in tensors.items():
        refuse_non_finite(path, key, value)
    try:
        model.policy.load_state_dict(tensors)
    except RuntimeError as err:
        why = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{path}: does not fit {whose} ({why})") from None


def _check_config(run: RunDir, cfg: ExperimentConfig) -> None:
    """The SB3 route trains on the run's V and M as they are: its settings are the
    ``controller.*`` keys (recorded in the policy's meta), which may differ from the
    run's ``config.yaml`` (whose controller stays the CMA-ES one), and the ``env.*`` and
    ``dream.*`` keys a trained run leaves open (the env played and the dream trained in,
    recorded in the checkpoint's settings: a resume in another is refused); other
    changes are refused (they would need the earlier stages rerun)."""
    fixed = [k for k in run.changed_keys(cfg)
             if not k.startswith(("controller.", *(f"{s}." for s in TRAINED_RUN_SECTIONS)))
             and k not in RUNTIME_KEYS]
    if fixed:
        raise ConfigError(f"{run.home}: an SB3 policy trains on this run's V and M as its "
                          f"config.yaml has them, but '{fixed[0]}' differs; change only "
                          "controller.*, env.* or dream.* keys (or rerun the earlier "
                          "stages)")


def _ret_rms(venv: VecEnv) -> VecNormalize | None:
    return venv if isinstance(venv, VecNormalize) else None


#: what a gSDE distribution draws in ``sample_weights`` (one noise matrix per env)
_NOISE_ATTRIBUTES = ("weights_dist", "exploration_mat", "exploration_matrices")


@contextmanager
def kept_exploration_noise(policy: Any) -> Iterator[None]:
    """Put the policy's gSDE exploration noise back as it was on leaving: sampled play
    on other seeds and batch sizes (a selection) would otherwise leave the training's
    next steps its noise matrices."""
    dist = getattr(policy, "action_dist", None)
    kept = {name: getattr(dist, name) for name in _NOISE_ATTRIBUTES if hasattr(dist, name)}
    try:
        yield
    finally:
        for name, value in kept.items():
            setattr(dist, name, value)


class _Trainer(BaseCallback):
    """Progress bar, training episode log, periodic selection, checkpoints, curve."""

    def __init__(self, run: RunDir, cfg: ExperimentConfig, state: dict[str, Any],
                 progress: bool):
        super().__init__()
        c = cfg.controller
        self.run, self.cfg, self.state = run, cfg, state
        self.algo, self.environment = c.algo, c.environment
        self.progress = progress
        self.bar: Any = None
        self.last_save = int(state["num_timesteps"])
        # the selection schedule resumes where the checkpoint left it
        self.last_eval = int(state.get("last_eval", state["num_timesteps"]))
        self.seeds = selection_seeds(cfg.seed, c.selection_size)

    def _on_training_start(self) -> None:
        if self.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=self.cfg.controller.sb3_timesteps,
                            initial=self.model.num_timesteps, unit="step",
                            desc=f"{self.algo} ({self.environment})", dynamic_ncols=True)

    def _on_step(self) -> bool:
        if self.bar is not None:
            self.bar.update(self.training_env.num_envs)
        for info in self.locals.get("infos", []):
            episode = info.get("episode")
            if episode is not None:
                self.state["episode_steps"].append(int(self.num_timesteps))
                self.state["episode_returns"].append(float(episode["r"]))
        return True

    def _on_rollout_start(self) -> None:  # the previous update is done: a clean state
        c, n = self.cfg.controller, self.model.num_timesteps
        if c.sb3_eval_steps and n - self.last_eval >= c.sb3_eval_steps:
            self._select()
        if c.sb3_checkpoint_steps and n - self.last_save >= c.sb3_checkpoint_steps:
            self.save()

    def _on_training_end(self) -> None:
        if self.cfg.controller.sb3_eval_steps and self.model.num_timesteps > self.last_eval:
            self._select()
        self.save()
        if self.bar is not None:
            self.bar.close()

    def _select(self) -> None:
        """Play the policy on the selection seeds; keep it if it is the best so far."""
        n = int(self.model.num_timesteps)
        self.last_eval = n
        with kept_exploration_noise(self.model.policy):  # sampled play redraws it
            returns = [r for r, _ in play_policy_batched(
                self.run, self.cfg, policy_controller(self.model, self.cfg), self.seeds,
                self.cfg.controller.batch_envs)]
        mean, std = float(np.mean(returns)), float(np.std(returns))
        self.state["evals"].append({"step": n, "mean": mean, "std": std,
                                    "deterministic": self.cfg.controller.sb3_deterministic})
        self.logger.record("selection/mean", mean)
        best = self.state.get("selected")
        if best is None or mean > best["mean"]:
            self.state["selected"] = {"step": n, "mean": mean, "std": std,
                                      "episodes": len(returns), "policy": _policy_state(
                                          self.model)}
        if self.bar is not None:
            self.bar.write(f"{self.algo} at {n} steps: selection mean {mean:.1f} +- {std:.1f}"
                           f" (best {self.state['selected']['mean']:.1f})")

    def save(self) -> None:
        """Checkpoint, then the shipped policy and the learning curve (all atomic)."""
        n = int(self.model.num_timesteps)
        self.last_save = n
        self.state["num_timesteps"] = n
        self.state["last_eval"] = self.last_eval
        self.state["parameters"] = self.model.get_parameters()
        off_policy = off_policy_state(self.model)
        if off_policy is not None:
            self.state["off_policy"] = off_policy
        norm = _ret_rms(self.model.get_env())
        if norm is not None:
            self.state["ret_rms"] = {
                "mean": torch.tensor(norm.ret_rms.mean, dtype=torch.float64),
                "var": torch.tensor(norm.ret_rms.var, dtype=torch.float64),
                "count": float(norm.ret_rms.count)}
        # the shipped policy first: a kill between the two leaves an older checkpoint,
        # which a rerun resumes and ships again, never a finished one beside an old policy
        ship(self.run, self.state, self.model)
        save_state(self.run.controller.sb3_checkpoint(self.algo, self.environment),
                   self.state)
        plot_sb3_curve(self.run.controller.sb3_curve(self.algo, self.environment), self.state)


#: the replay buffer's arrays an off-policy checkpoint keeps
_BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones",
                  "timeouts")


def off_policy_state(model: Any) -> dict[str, Any] | None:
    """What SB3's ``get_parameters`` leaves out of an off-policy algorithm (SAC, TD3),
    for a resume that goes on as the training would have: the filled rows of the
    replay buffer (as tensors, no pickle), its position, the update count (TD3's
    policy delay counts on it) and SAC's learned entropy coefficient; None for an
    on-policy algorithm."""
    buffer = getattr(model, "replay_buffer", None)
    if buffer is None:
        return None
    # (with optimize_memory_usage the next observation of row pos - 1 sits in row pos)
    rows = buffer.buffer_size if buffer.full else min(buffer.pos + 1, buffer.buffer_size)
    arrays = {name: torch.from_numpy(np.ascontiguousarray(getattr(buffer, name)[:rows]))
              for name in _BUFFER_ARRAYS if getattr(buffer, name, None) is not None}
    state: dict[str, Any] = {"pos": int(buffer.pos), "full": bool(buffer.full),
                             "buffer": arrays, "n_updates": int(model._n_updates)}
    log_ent_coef = getattr(model, "log_ent_coef", None)
    if isinstance(log_ent_coef, torch.Tensor):
        state["log_ent_coef"] = log_ent_coef.detach().cpu().clone()
    return state


def restore_off_policy(model: Any, saved: dict[str, Any] | None, path: Path) -> None:
    """Put :func:`off_policy_state`'s ``saved`` (read from the checkpoint ``path``) back
    into ``model``; a checkpoint without it, for an off-policy model, or with arrays
    that do not fit its buffer, is a :class:`CheckpointError` naming ``path``."""
    buffer = getattr(model, "replay_buffer", None)
    if buffer is None:
        return
    if not isinstance(saved, dict) or not isinstance(saved.get("buffer"), dict):
        raise CheckpointError(f"{path}: an off-policy checkpoint without its replay buffer "
                              "(made before buffers were saved); delete it to train anew")
    for name, values in saved["buffer"].items():
        target = getattr(buffer, name, None)
        if (name not in _BUFFER_ARRAYS or target is None
                or tuple(values.shape[1:]) != target.shape[1:]
                or len(values) > len(target)):
            raise CheckpointError(f"{path}: its replay buffer's {name} "
                                  f"{tuple(values.shape)} does not fit this training's "
                                  f"{None if target is None else target.shape}; delete it "
                                  "to train anew")
        target[: len(values)] = values.numpy()
    buffer.pos, buffer.full = int(saved["pos"]), bool(saved["full"])
    model._n_updates = int(saved["n_updates"])
    if "log_ent_coef" in saved and isinstance(getattr(model, "log_ent_coef", None),
                                              torch.Tensor):
        with torch.no_grad():  # in place: the entropy optimizer holds this tensor
            model.log_ent_coef.copy_(saved["log_ent_coef"])


def _policy_state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous()
            for k, v in model.policy.state_dict().items()}


def ship(run: RunDir, state: dict[str, Any], model: Any = None) -> dict[str, Any]:
    """Write the shipped policy and its meta: the best on the selection seeds when there
    was a selection, else the current policy (``model``'s, or without one the
    checkpoint ``state``'s); returns the meta."""
    settings = state["settings"]
    selected = state.get("selected")
    tensors = (selected["policy"] if selected else _policy_state(model) if model is not None
               else state["parameters"]["policy"])
    meta = {**settings, "timesteps": int(state["timesteps"]),
            "num_timesteps": int(state["num_timesteps"]),
            "controller": state["controller"],
            "source": "selected" if selected else "last",
            WORLD_MODEL_META: state.get(WORLD_MODEL_META) or run.world_model_digests()}
    if state.get("init_path"):
        meta["init_path"] = state["init_path"]
    if selected:
        meta["selected"] = {k: selected[k] for k in ("step", "mean", "std", "episodes")}
    weights, meta_path = run.controller.sb3(settings["algo"], settings["environment"])
    write_bytes_atomic(weights, save_safetensors(tensors))
    write_text_atomic(meta_path, json.dumps(meta, indent=2))
    return {"weights": str(weights), **meta}


def plot_sb3_curve(path: Path, state: dict[str, Any]) -> None:
    """Mean return of the last :data:`CURVE_WINDOW` training episodes against env steps,
    and the selection means; nothing before the first episode ends."""
    steps, returns = state["episode_steps"], state["episode_returns"]
    series: dict[str, tuple[list[float], list[float]]] = {}
    if steps:
        means = [float(np.mean(returns[max(0, i + 1 - CURVE_WINDOW) : i + 1]))
                 for i in range(len(returns))]
        series[f"training episodes, mean of the last {CURVE_WINDOW}"] = (list(steps), means)
    if state["evals"]:
        series["selection mean (deterministic)"] = (
            [e["step"] for e in state["evals"]], [e["mean"] for e in state["evals"]])
    if series:
        s = state["settings"]
        plot_curves(path, series, f"{s['algo']} on [z, h] ({s['environment']})",
                    "env steps", "return")


def _resume(path: Path, settings: dict[str, Any], policy: Path, timesteps: int,
            legacy: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """The checkpoint's state, or None when there is none; one made with other settings
    is refused (its optimizer and schedules belong to another training), and so is an
    unreadable one, saying that without it training starts anew and replaces ``policy``
    (the trained policy beside it). The env and dream (:func:`_played_settings`) are
    compared only while the training has steps left of ``timesteps``; a checkpoint
    without them was made in those ``legacy()`` gives (the run's own config's)."""
    if not path.exists():
        return None
    state = load_state(path, advice=(
        f"SB3 cannot resume from it. Without it this command trains a new policy from step "
        f"0, which replaces {policy}: move that aside first to keep it (it still plays: "
        "evaluate.py --policy), then delete the checkpoint"))
    saved = state.get("settings")
    saved = dict(saved) if isinstance(saved, dict) else {}
    if isinstance(saved.get("play"), dict):
        # 3958d76 recorded the env as play.env (and V's precision beside it, which
        # agent_precision records where it matters)
        saved[ENV_KEY] = saved.pop("play").get("env")
    # keys recorded since: use_cell (a policy of the other size is refused when its
    # parameters are loaded), the env and the dream (as the run's own config has them)
    missing = [k for k in ("use_cell", ENV_KEY, DREAM_KEY) if k in settings and k not in saved
               and isinstance(state.get("settings"), dict)]
    if missing:
        known = {"use_cell": settings["use_cell"],
                 **(legacy() if missing != ["use_cell"] else {})}
        saved.update({k: known[k] for k in missing})
    state["settings"] = saved
    finished = int(state.get("num_timesteps", 0)) >= timesteps
    changed = [change for k in {**saved, **settings} if saved.get(k) != settings.get(k)
               and not (finished and k in (ENV_KEY, DREAM_KEY))
               for change in _changes(k, saved.get(k), settings.get(k))]
    if changed:
        raise ConfigError(f"{path}: an SB3 checkpoint made with other settings ("
                          + "; ".join(changed) + "); delete it (and the policy beside it) "
                          "to train anew, or use another run")
    return state


def _changes(key: str, old: Any, new: Any) -> list[str]:
    """``key: old -> new``, or one such line per changed entry when both are mappings
    (``dream.temperature: 1.15 -> 2.5``, not the two whole mappings)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [f"{key}.{k}: {old.get(k)!r} -> {new.get(k)!r}"
                for k in {**old, **new} if old.get(k) != new.get(k)]
    return [f"{key}: {old!r} -> {new!r}"]


def train_sb3(run: RunDir, cfg: ExperimentConfig, progress: bool = True,
              kwargs: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Train ``controller.algo`` for ``controller.sb3_timesteps`` steps on the [z, h] env,
    or inside the run's dream (``controller.environment=dream``, same observations);
    returns the model (None when the checkpoint says training is already done) and how
    the policy was saved. Either way the saved policy plays the real env
    (:func:`load_sb3`); the two are saved apart.

    Every ``controller.sb3_checkpoint_steps`` steps (and at the end) the training state
    is saved; a rerun resumes from it to ``sb3_timesteps`` (``learn`` with
    ``reset_num_timesteps=False``, so linear schedules continue where they were). The
    run's ``config.yaml`` is written only when the run has none: the SB3 route trains
    on a run's V and M beside its CMA-ES controller, its own settings in its meta.
    """
    c = cfg.controller
    algo, environment = c.algo, c.environment
    kwargs = {**c.sb3_kwargs, **(kwargs or {})}
    settings = _settings(cfg, kwargs)
    try:
        json.dumps(settings)  # fail before training, not after
    except TypeError as err:
        raise ConfigError(f"SB3 kwargs must be JSON values to be saved: {err}") from err
    sb3_model_kwargs(kwargs)  # names checked before any env is made
    if run.has_config():
        run.refuse_shipped()
        _check_config(run, cfg)
        check_writable(run.controller.dir)
    else:
        run.write_config(cfg, outputs=(run.controller.dir,))
    checkpoint = run.controller.sb3_checkpoint(algo, environment)
    weights, meta_path = run.controller.sb3(algo, environment)
    def legacy() -> dict[str, Any]:  # (read only for a checkpoint from before stop 61)
        own = run.load_config(trained=False) if run.has_config() else cfg
        return _played_settings(own, environment == "dream")

    state = _resume(checkpoint, settings, weights, c.sb3_timesteps, legacy)
    if state is not None and state["num_timesteps"] >= c.sb3_timesteps:
        print(f"{checkpoint}: trained for {state['num_timesteps']} steps already "
              f"(controller.sb3_timesteps={c.sb3_timesteps}); skipped")
        curve = run.controller.sb3_curve(algo, environment)
        if not curve.exists() or curve.stat().st_mtime < checkpoint.stat().st_mtime:
            plot_sb3_curve(curve, state)  # a stop between the checkpoint and its curve
        if _shipped_steps(weights, meta_path) != state["num_timesteps"]:
            # killed between the checkpoint and the policy (before the policy was written
            # first): the policy comes from the finished checkpoint
            return None, {**ship(run, state), "skipped": True}
        return None, {"weights": str(weights), **read_json(meta_path, {}), "skipped": True}
    # a new training's initial policy is checked before any env is made
    init = check_init_policy(run, c.sb3_init, algo, kwargs) \
        if c.sb3_init and state is None else None
    env = training_env(run, cfg)
    try:
        model = build_model(algo, env, cfg.seed, kwargs, str(run.tensorboard()))
        if state is None:
            state = {"settings": settings, "num_timesteps": 0, "episode_steps": [],
                     "episode_returns": [], "evals": [], "selected": None}
            if init is not None:
                load_policy(model, init, "this training's policy (controller.sb3_init)")
                state["init_path"] = str(init)
                if progress:
                    print(f"starting from the policy {init}")
        else:
            try:
                model.set_parameters(state["parameters"], exact_match=True)
            except (RuntimeError, ValueError, KeyError) as err:
                why = " ".join(str(err).split())[:300]
                raise CheckpointError(f"{checkpoint}: does not fit this training's {algo} "
                                      f"model ({why}); delete it to train anew") from None
            restore_off_policy(model, state.get("off_policy"), checkpoint)
            model.num_timesteps = int(state["num_timesteps"])
            norm = _ret_rms(env)
            if norm is not None and state.get("ret_rms"):
                norm.ret_rms.mean = state["ret_rms"]["mean"].numpy()
                norm.ret_rms.var = state["ret_rms"]["var"].numpy()
                norm.ret_rms.count = float(state["ret_rms"]["count"])
            if progress:
                print(f"{checkpoint}: resuming at {model.num_timesteps} of "
                      f"{c.sb3_timesteps} steps")
        state["timesteps"] = c.sb3_timesteps
        state["controller"] = to_dict(cfg)["controller"]
        state[WORLD_MODEL_META] = run.world_model_digests()  # (hashed once a training)
        trainer = _Trainer(run, cfg, state, progress)
        started = model.num_timesteps
        left = max(0, c.sb3_timesteps - started)
        # (off-policy algorithms' n_steps is their n-step return, not a rollout)
        rollout = model.n_steps * model.n_envs if isinstance(model, OnPolicyAlgorithm) else 0
        if rollout and left % rollout:
            print(f"note: {algo} collects {model.n_steps} x {model.n_envs} = {rollout} steps "
                  f"per update, so it trains to {started + -(-left // rollout) * rollout} "
                  f"steps (controller.sb3_timesteps={c.sb3_timesteps}, rounded up to whole "
                  "rollouts)")
        model.learn(total_timesteps=left, callback=trainer,
                    reset_num_timesteps=started == 0, progress_bar=False,
                    tb_log_name=f"sb3_{algo}_{environment}")
    finally:
        env.close()
    return model, ship(run, state, model)


def _shipped_steps(weights: Path, meta_path: Path) -> int | None:
    """The training steps of the shipped policy (None: absent or unreadable)."""
    if not weights.exists():
        return None
    try:
        return int(read_json(meta_path, {}).get("num_timesteps", -1))
    except (CheckpointError, TypeError, ValueError):
        return None


def policy_meta(run: RunDir, algo: str, environment: str = "real") -> dict[str, Any]:
    """The sidecar of the run's trained SB3 policy (seed, kwargs, the controller keys it
    trained with); a missing or unreadable one is a :class:`CheckpointError` naming it."""
    weights, meta_path = run.controller.sb3(algo, environment)
    if not meta_path.exists() or not weights.exists():
        raise CheckpointError(f"{weights}: no {algo} policy trained in the {environment} env "
                              f"(run train_controller.py --algo {algo} for {run.home})")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, OSError) as err:
        raise CheckpointError(f"{meta_path}: unreadable SB3 policy description ({err})") \
            from None
    if not (isinstance(meta, dict) and isinstance(meta.get("seed"), int)
            and isinstance(meta.get("kwargs"), dict)):
        raise CheckpointError(f"{meta_path}: an SB3 policy description needs 'seed' (an "
                              "integer) and 'kwargs' (a mapping)")
    return meta


def policy_config(cfg: ExperimentConfig, meta: dict[str, Any]) -> ExperimentConfig:
    """``cfg`` with the ``controller.use_cell`` the policy of ``meta`` trained with (what
    it reads: [z, h] or [z, c, h]), which the run's CMA-ES config need not share."""
    use_cell = (meta.get("controller") or {}).get("use_cell")
    if not isinstance(use_cell, bool) or use_cell == cfg.controller.use_cell:
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.controller.use_cell = use_cell
    return cfg


def load_sb3(run: RunDir, cfg: ExperimentConfig, algo: str = "ppo",
             environment: str = "real") -> tuple[Any, LatentObservation]:
    """Rebuild the trained SB3 model (weights only, no pickle) and the real env of
    ``cfg.env`` it plays, on the features the policy trained on."""
    meta = policy_meta(run, algo, environment)
    weights, meta_path = run.controller.sb3(algo, environment)
    env = latent_env(run, policy_config(cfg, meta))
    try:
        model = build_model(algo, env, meta["seed"], meta["kwargs"])
        load_policy(model, weights)
    except ConfigError as err:
        env.close()
        raise CheckpointError(f"{meta_path}: {err}") from None
    except BaseException:
        env.close()
        raise
    return model, env


class SB3Controller(nn.Module):
    """An SB3 policy as the batched actor's controller (:class:`agents.batched.BatchedActor`):
    M's features -> its actions (``predict``: clipped to a Box), the same parameters for
    every row: the mean action (``deterministic``), or sampled as in training, a policy
    with gSDE redrawing its exploration noise every ``noise_every`` calls (SB3's
    ``sde_sample_freq``; 0: once, at the first call). Sampling draws from torch's global
    generator: seed it for repeatable episodes."""

    def __init__(self, policy: Any, use_cell: bool = False, deterministic: bool = True,
                 noise_every: int = 0):
        super().__init__()
        self.policy, self.use_cell = policy, use_cell
        self.deterministic, self.noise_every = deterministic, noise_every
        self.calls = 0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.deterministic and getattr(self.policy, "use_sde", False) and (
                self.calls == 0 or (self.noise_every and self.calls % self.noise_every == 0)):
            self.policy.reset_noise(len(x))
        self.calls += 1
        actions, _ = self.policy.predict(x.cpu().numpy(), deterministic=self.deterministic)
        return torch.as_tensor(np.asarray(actions), device=x.device)

    def batched(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``params`` is ignored (one policy for every row); x (B, F) or grouped
        (B, R, F) -> actions (B, ...) or (B, R, ...)."""
        if x.dim() == 3:
            actions = self(x.flatten(0, 1))
            return actions.view(*x.shape[:2], *actions.shape[1:])
        return self(x)

    def num_parameters(self) -> int:
        return 1


def policy_controller(model: Any, cfg: ExperimentConfig) -> SB3Controller:
    """The SB3 model's policy as a controller that plays as ``controller.sb3_deterministic``
    says (sampled: gSDE noise redrawn every ``sde_sample_freq`` steps, as in training)."""
    every = int(getattr(model, "sde_sample_freq", -1))
    return SB3Controller(model.policy, cfg.controller.use_cell,
                         cfg.controller.sb3_deterministic, max(every, 0))


def play_policy_batched(run: RunDir, cfg: ExperimentConfig, controller: SB3Controller,
                        seeds: list[int], batch: int) -> list[tuple[float, int]]:
    """(return, steps) of one real episode of ``cfg.env`` per seed, played ``batch`` at a
    time with the run's V and M batched. Deterministic play gives the same returns as
    :func:`play_sb3`'s one at a time, up to float error; sampled play is repeatable for
    the same seeds and batch (torch's generator is seeded from the seeds here, and put
    back as it was afterwards)."""
    return [(r.ret, r.steps) for r in play_policy_episodes(run, cfg, controller, seeds, batch)]


def play_policy_episodes(run: RunDir, cfg: ExperimentConfig, controller: SB3Controller,
                         seeds: list[int], batch: int, record: int = 0,
                         ) -> list[EpisodeResult]:
    """:func:`play_policy_batched`'s episodes as :class:`agents.batched.EpisodeResult`,
    the first ``record`` with their frames: a video of exactly the episode scored."""
    from agents.batched import BatchedActor, Episode
    from agents.vmc import VMCAgent

    with torch.random.fork_rng(devices=[]):  # (building V and M draws from it too)
        agent = VMCAgent(run.load_vae(cfg.vae.z_dim), run.load_memory(),
                         controller,  # type: ignore[arg-type]
                         precision=cfg.controller.agent_precision)
        actor = BatchedActor(agent, lambda: make_env_from_config(cfg.env), batch)
        controller.calls = 0
        torch.manual_seed(int(np.random.default_rng(seeds).integers(2**62)))
        try:
            results = actor.play([Episode(s, np.zeros(1, np.float32), record=i < record)
                                  for i, s in enumerate(seeds)])
        finally:
            actor.close()
    return results


def sb3_controller(run: RunDir, cfg: ExperimentConfig, algo: str,
                   environment: str = "real") -> SB3Controller:
    """The run's trained SB3 policy as a controller on M's features."""
    cfg = policy_config(cfg, policy_meta(run, algo, environment))
    model, env = load_sb3(run, cfg, algo, environment)
    env.close()
    return policy_controller(model, cfg)


def play_sb3_batched(run: RunDir, cfg: ExperimentConfig, algo: str, seeds: list[int],
                     environment: str = "real", batch: int = 16) -> list[tuple[float, int]]:
    """The trained SB3 policy's deterministic real episodes, ``batch`` at a time."""
    controller = sb3_controller(run, cfg, algo, environment)
    return play_policy_batched(run, cfg, controller, seeds, batch)


def play_sb3(run: RunDir, cfg: ExperimentConfig, algo: str, seeds: list[int],
             environment: str = "real") -> list[tuple[float, int]]:
    """(return, steps) of one deterministic real episode per seed."""
    model, env = load_sb3(run, cfg, algo, environment)
    results = []
    try:
        for s in seeds:
            obs, _ = env.reset(seed=s)
            total, steps, done = 0.0, 0, False
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                steps += 1
                done = terminated or truncated
            results.append((total, steps))
    finally:
        env.close()
    return results
