"""C: the controller, a = squash(W [z, h] + b), with an optional hidden layer.

Box actions are squashed into their bounds (low + (tanh + 1) / 2 * (high - low)).
Discrete(n) actions take the argmax of n logits, or, with the ordinal head, one output
y = tanh(W [z, h] + b) is cut into n equal bins of [-1, 1] and bin k plays action
``order[k]``. That is the paper's Doom controller: one number, left below -1/3, right
above 1/3, stay between, so "no move" is the middle of a line rather than one of three
unrelated choices. C has about a thousand parameters and is trained as one flat vector
(CMA-ES), so it offers ``get_flat`` / ``set_flat``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from worldmodels.checkpoint import register_model
from worldmodels.config import ConfigError


def controller_features(z: Tensor, h: Tensor, c: Tensor | None = None,
                        use_cell: bool = False) -> Tensor:
    """What C reads: [z, h], or [z, c, h] with ``use_cell`` (the paper's Doom setup).

    z (..., z_dim), h and c (..., h_dim) -> (..., z_dim + h_dim or z_dim + 2 h_dim). The
    real-env wrapper and the dream env give SB3 the same layout, so one policy plays both.
    """
    if not use_cell:
        return torch.cat([z, h], dim=-1)
    if c is None:
        raise ValueError("this controller reads the LSTM cell state: pass c")
    return torch.cat([z, c, h], dim=-1)


def feature_size(z_dim: int, h_dim: int, use_cell: bool = False) -> int:
    return z_dim + h_dim * (2 if use_cell else 1)


class Controller(nn.Module):
    """Shapes: z (B, z_dim), h (B, h_dim), c (B, h_dim) when ``use_cell`` (Doom: [z, c, h]).

    Returns float (B, A) actions within ``[low, high]``, or int64 (B,) for Discrete(A).
    """

    def __init__(
        self,
        *,
        z_dim: int,
        h_dim: int,
        action_dim: int,
        hidden: int,
        use_cell: bool,
        order: list[int] | None,
        discrete: bool = False,
        low: list[float] | None = None,
        high: list[float] | None = None,
    ):
        """``hidden``, ``use_cell`` and ``order`` (None: argmax head; a list: the ordinal
        head's action per bin) come from ``controller.*`` (:func:`build_controller`)
        and have no defaults here. ``discrete``, ``low``, ``high``: the action space."""
        super().__init__()
        self._config = dict(z_dim=z_dim, h_dim=h_dim, action_dim=action_dim, discrete=discrete,
                            low=low, high=high, hidden=hidden, use_cell=use_cell,
                            order=None if order is None else list(order))
        self.discrete, self.use_cell = discrete, use_cell
        self.ordinal = order is not None
        if self.ordinal:
            if not discrete or sorted(order) != list(range(action_dim)):
                raise ValueError(f"the ordinal head needs Discrete actions and an order that "
                                 f"lists each of 0..{action_dim - 1} once, got {order}")
            self.register_buffer("order", torch.tensor(order, dtype=torch.int64))
        features = feature_size(z_dim, h_dim, use_cell)
        outputs = 1 if self.ordinal else action_dim
        if hidden:
            self.net: nn.Module = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(),
                                                nn.Linear(hidden, outputs))
        else:
            self.net = nn.Linear(features, outputs)
        if not discrete:
            if low is None or high is None or len(low) != action_dim or len(high) != action_dim:
                raise ValueError(f"Box actions need low and high of length {action_dim}")
            self.register_buffer("low", torch.tensor(low, dtype=torch.float32))
            self.register_buffer("high", torch.tensor(high, dtype=torch.float32))

    def config(self) -> dict:
        return dict(self._config)

    def logits(self, z: Tensor, h: Tensor, c: Tensor | None = None) -> Tensor:
        return self.net(controller_features(z, h, c, self.use_cell))

    def forward(self, z: Tensor, h: Tensor, c: Tensor | None = None) -> Tensor:
        return self._act(self.logits(z, h, c))

    def _act(self, out: Tensor) -> Tensor:
        """The net's outputs (B, A), or (B, 1) for the ordinal head -> actions."""
        if self.ordinal:
            n = len(self.order)
            y = torch.tanh(out[..., 0])
            return self.order[((y + 1) / 2 * n).long().clamp(0, n - 1)]
        if self.discrete:
            return out.argmax(dim=-1)
        return self.low + (torch.tanh(out) + 1) / 2 * (self.high - self.low)

    def batched(self, params: Tensor, z: Tensor, h: Tensor, c: Tensor | None = None) -> Tensor:
        """Each row with its own weights: params (B, n) flat vectors (``get_flat`` order),
        z (B, z_dim), h and c (B, h_dim) -> actions as ``forward`` gives them, (B, A) or (B,).

        For CMA-ES in a batched dream: population x rollouts controllers in one pass.
        """
        if params.shape[-1] != self.num_parameters():
            raise ValueError(f"expected {self.num_parameters()} parameters, "
                             f"got {params.shape[-1]}")
        x = controller_features(z, h, c, self.use_cell)
        layers = [self.net] if isinstance(self.net, nn.Linear) else list(self.net)
        offset = 0
        for layer in layers:
            if isinstance(layer, nn.Linear):
                n_w, n_b = layer.weight.numel(), layer.bias.numel()
                w = params[:, offset : offset + n_w].view(-1, *layer.weight.shape)
                b = params[:, offset + n_w : offset + n_w + n_b]
                offset += n_w + n_b
                x = torch.baddbmm(b.unsqueeze(-1), w, x.unsqueeze(-1)).squeeze(-1)
            else:
                x = layer(x)
        return self._act(x)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def get_flat(self) -> Tensor:
        return nn.utils.parameters_to_vector(self.parameters()).detach().clone()

    def set_flat(self, vector: Tensor) -> None:
        vector = torch.as_tensor(vector, dtype=torch.float32)
        if vector.numel() != self.num_parameters():
            raise ValueError(f"expected {self.num_parameters()} parameters, got {vector.numel()}")
        nn.utils.vector_to_parameters(vector, self.parameters())


def _discrete_controller(c: Any, z_dim: int, h_dim: int, space: gym.Space) -> Controller:
    n = int(space.n)
    order = None
    if c.discrete_head == "ordinal":
        order = list(c.action_order) or list(range(n))
        if sorted(order) != list(range(n)):
            raise ConfigError(f"config key 'controller.action_order' must list each of "
                              f"the {n} actions 0..{n - 1} once, got {order}")
    return Controller(z_dim=z_dim, h_dim=h_dim, action_dim=n, discrete=True, hidden=c.hidden,
                      use_cell=c.use_cell, order=order)


def _box_controller(c: Any, z_dim: int, h_dim: int, space: gym.Space) -> Controller:
    if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
        raise ConfigError(f"the controller squashes actions into bounds; {space} is unbounded")
    return Controller(z_dim=z_dim, h_dim=h_dim, action_dim=int(np.prod(space.shape)),
                      low=space.low.tolist(), high=space.high.tolist(), hidden=c.hidden,
                      use_cell=c.use_cell, order=None)


#: action space type -> builder of a controller for it
CONTROLLER_BUILDERS: dict[type, Callable[..., Controller]] = {
    gym.spaces.Discrete: _discrete_controller,
    gym.spaces.Box: _box_controller,
}


def build_controller(c: Any, z_dim: int, h_dim: int, action_space: gym.Space) -> Controller:
    """An untrained C from a :class:`worldmodels.config.ControllerConfig` ``c`` for
    ``action_space``, reading z (z_dim) and M's hidden state (h_dim)."""
    builder = CONTROLLER_BUILDERS.get(type(action_space))
    if builder is None:
        known = ", ".join(t.__name__ for t in CONTROLLER_BUILDERS)
        raise ConfigError(f"controllers support {known} actions, not {action_space}")
    return builder(c, z_dim, h_dim, action_space)


register_model("Controller", Controller)
