"""The V-M-C agent: encodes frames with V, carries M's recurrent state, acts with C."""

from __future__ import annotations

import typing

import gymnasium as gym
import numpy as np
import torch

from worldmodels.config import AgentPrecision, ConfigError, ControllerConfig, ExperimentConfig
from worldmodels.controller import FlatPolicy
from worldmodels.memory import Memory, State, zero_rows
from worldmodels.run_dir import RunDir
from worldmodels.vae import ConvVAE, MeanEncoder

AGENT_PRECISIONS: tuple[str, ...] = typing.get_args(AgentPrecision)


def check_precision(precision: str) -> None:
    """Refuse a ``controller.agent_precision`` that is not one of :data:`AGENT_PRECISIONS`."""
    if precision not in AGENT_PRECISIONS:
        raise ConfigError(f"controller.agent_precision must be one of "
                          f"{' | '.join(AGENT_PRECISIONS)}, not {precision!r}")


def agent_encoder(vae: ConvVAE, precision: AgentPrecision = "float32",
                  ) -> typing.Callable[[torch.Tensor], torch.Tensor]:
    """What an agent reads frames with: frames (as :meth:`ConvVAE.encode_mean` takes them)
    -> V's mean z (B, z_dim) float32, computed in ``precision``
    (``controller.agent_precision``): V itself for float32, else a
    :class:`~worldmodels.vae.MeanEncoder` copy of V's weights as they are now. The V-M-C
    agent and SB3's [z, h] envs both read with it, so a policy trains on the features it
    plays on."""
    check_precision(precision)
    if precision == "float32":
        return vae.encode_mean
    return MeanEncoder(vae, getattr(torch, precision)).eval()


class VMCAgent:
    """Acts in B envs at once (a vector env, or B=1).

    At step t: z_t = mu of V(frame_t); a_t = C([z_t, h_t]) (M's features); then
    h_{t+1} = M.step(z_t, a_t, state_t).
    ``reset`` clears every state; ``reset_where(mask)`` clears only the envs that
    started a new episode (vector envs reset them on their own). ``precision``
    (``controller.agent_precision``): the dtype V's encoder computes in (a copy of V's
    encoder made here for bfloat16: V's weights as they are now).
    """

    def __init__(self, vae: ConvVAE, memory: Memory, controller: FlatPolicy,
                 device: str | torch.device = "cpu",
                 precision: AgentPrecision = ControllerConfig.agent_precision):
        check_precision(precision)
        self.device = torch.device(device)
        # channels-last convolutions: a uint8 (B, H, W, C) frame permuted to NCHW already
        # has that layout, and oneDNN runs V about 10% faster so (same values)
        self.vae = vae.to(self.device, memory_format=torch.channels_last).eval()
        self.precision = precision
        self._encode = agent_encoder(self.vae, precision)
        self.memory = memory.to(self.device).eval()
        self.controller = controller.to(self.device).eval()
        self.state: State | None = None
        self.batch = 0

    @classmethod
    def from_run(cls, run: RunDir, cfg: ExperimentConfig, action_space: gym.Space,
                 weights: str = "", device: str = "cpu",
                 controller: FlatPolicy | None = None) -> VMCAgent:
        """The run's V and M with a controller for ``action_space``: ``controller`` (e.g.
        an :class:`agents.sb3.SB3Controller`), else the run's trained
        ``controller/<weights>.safetensors`` (``best`` or ``mean``), or untrained for ''."""
        vae = run.load_vae(cfg.vae.z_dim, device)
        memory = run.load_memory(device)
        if controller is None:
            controller = (run.load_controller(cfg, action_space, memory, weights) if weights
                          else run.new_controller(cfg, action_space, memory))
        return cls(vae, memory, controller, device, cfg.controller.agent_precision)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """V's mean of frames uint8 (B, 64, 64, 3) -> z (B, z_dim) float32, in the agent's
        precision (``controller.agent_precision``)."""
        return self._encode(frames)

    def reset(self, batch: int = 1) -> None:
        self.state = self.memory.initial_state(batch, self.device)
        self.batch = batch

    def reset_where(self, mask: np.ndarray) -> None:
        """Zero the recurrent state of the envs where ``mask`` (B,) is True."""
        if self.state is None:
            self.reset(len(mask))
            return
        self.state = zero_rows(self.state, torch.as_tensor(np.asarray(mask, bool),
                                                          device=self.device))

    @torch.no_grad()
    def act(self, frames: np.ndarray,
            played: typing.Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """frames uint8 (B, 64, 64, 3) -> actions float (B, A) or int64 (B,). ``played``:
        given C's actions, the actions the env will get instead (exploration, say); M
        then reads those, so that its state follows what happened."""
        if np.ndim(frames) != 4:  # (before M's state is reset for a batch it is not)
            raise ValueError(f"frames must be a batch, uint8 (B, 64, 64, 3); got shape "
                             f"{np.shape(frames)} (one frame: frames[None])")
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        if self.state is None or self.batch != x.shape[0]:
            self.reset(x.shape[0])
        assert self.state is not None
        z = self.encode(x)
        action = self.controller(self.memory.features(z, self.state, self.controller.use_cell))
        if played is not None:
            chosen = action.cpu().numpy()
            action = torch.as_tensor(np.asarray(played(chosen), dtype=chosen.dtype)
                                     .reshape(chosen.shape), device=self.device)
        _, self.state = self.memory.step(z, action, self.state)
        return action.cpu().numpy()
