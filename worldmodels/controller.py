"""C: the controller, a = squash(W x + b) on M's features x = [z, h], with an optional
hidden layer.

C reads the features M gives (:meth:`worldmodels.memory.Memory.features`: [z, h], or
[z, c, h] with ``use_cell``) and knows nothing else of M. Box actions are squashed into
their bounds (low + (tanh + 1) / 2 * (high - low)), or, for the dims in
``controller.clip_dims``, clipped: clip(tanh, low, high), which is exactly ``low`` for
half the outputs (Ha & Schmidhuber's CarRacing brake: off unless pressed).
Discrete(n) actions take the argmax of n logits, or, with the ordinal head, one output
y = tanh(W x + b) is cut into n equal bins of [-1, 1] and bin k plays action
``order[k]``. That is the paper's Doom controller: one number, left below -1/3, right
above 1/3, stay between, so "no move" is the middle of a line rather than one of three
unrelated choices.

C's seam is :class:`FlatPolicy`, what CMA-ES needs: about a thousand parameters trained
as one flat vector (``get_flat`` / ``set_flat``), and ``batched`` acting with one
vector per row. ``controller.kind`` picks the implementation from
:data:`CONTROLLER_KINDS`; another controller is one module that calls
:func:`register_controller`, plus its key in ``config.ControllerKind``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from worldmodels.checkpoint import register_model
from worldmodels.config import ConfigError, ControllerConfig


@runtime_checkable
class FlatPolicy(Protocol):
    """A controller CMA-ES can train (an ``nn.Module`` with ``config()``, saved by
    :func:`worldmodels.checkpoint.save_model`).

    x: M's features (B, F), as :meth:`worldmodels.memory.Memory.features` gives them with
    ``use_cell``; actions (B, A) float within the Box's bounds, or int64 (B,) for
    Discrete(A).
    """

    #: whether C reads [z, c, h] rather than [z, h] (callers ask M for these features)
    use_cell: bool

    def __call__(self, x: Tensor) -> Tensor:
        """Actions for features x (B, F) with the current parameters."""
        ...

    def batched(self, params: Tensor, x: Tensor) -> Tensor:
        """Each row with its own parameters: params (B, n) in ``get_flat`` order,
        x (B, F) -> actions as ``__call__`` gives them; or each group of rows with its
        own: x (B, R, F) -> (B, R, ...)."""
        ...

    def num_parameters(self) -> int:
        ...

    def get_flat(self) -> Tensor:
        """All parameters as one vector (n,)."""
        ...

    def set_flat(self, vector: Tensor) -> None:
        """Load all parameters from one vector (n,)."""
        ...

    def config(self) -> dict:
        """The constructor's keyword arguments (the checkpoint's config)."""
        ...


class Controller(nn.Module):
    """``controller.kind=dense``, a :class:`FlatPolicy`: features x (B, features), M's
    [z, h] ([z, c, h] when ``use_cell``, the paper's Doom setup) -> float (B, A) actions
    within ``[low, high]``, or int64 (B,) for Discrete(A).
    """

    def __init__(
        self,
        *,
        features: int,
        action_dim: int,
        hidden: int,
        use_cell: bool,
        order: list[int] | None,
        discrete: bool = False,
        low: list[float] | None = None,
        high: list[float] | None = None,
        clip_dims: list[int],
    ):
        """``hidden``, ``use_cell`` and ``order`` (None: argmax head; a list: the ordinal
        head's action per bin) come from ``controller.*`` (:func:`build_controller`)
        and have no defaults here. ``features``: the size of M's features with
        ``use_cell``. ``discrete``, ``low``, ``high``: the action space. ``clip_dims``:
        Box dims mapped by clip(tanh(y), low, high) instead of the affine squash."""
        super().__init__()
        clip_dims = sorted(set(clip_dims))
        if clip_dims and (discrete or not all(0 <= d < action_dim for d in clip_dims)):
            raise ValueError(f"clip_dims must be Box action dims in 0..{action_dim - 1}, "
                             f"got {clip_dims}")
        self._config = dict(features=features, action_dim=action_dim, discrete=discrete,
                            low=low, high=high, hidden=hidden, use_cell=use_cell,
                            order=None if order is None else list(order), clip_dims=clip_dims)
        self.discrete, self.use_cell = discrete, use_cell
        self.ordinal = order is not None
        if self.ordinal:
            if not discrete or sorted(order) != list(range(action_dim)):
                raise ValueError(f"the ordinal head needs Discrete actions and an order that "
                                 f"lists each of 0..{action_dim - 1} once, got {order}")
            self.register_buffer("order", torch.tensor(order, dtype=torch.int64))
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
        clip: Tensor | None = None
        if clip_dims:
            clip = torch.zeros(action_dim, dtype=torch.bool)
            clip[clip_dims] = True
        # not persistent: moves with the module, the state dict stays what it was
        self.register_buffer("clip", clip, persistent=False)

    def config(self) -> dict:
        return dict(self._config)

    @classmethod
    def from_checkpoint(cls, **config: object) -> Controller:
        """Rebuild from a checkpoint's config; one written before ``clip_dims`` existed
        had none."""
        return cls(**{"clip_dims": [], **config})  # type: ignore[arg-type]

    def logits(self, x: Tensor) -> Tensor:
        return self.net(x)

    def forward(self, x: Tensor) -> Tensor:
        return self._act(self.net(x))

    def _act(self, out: Tensor) -> Tensor:
        """The net's outputs (B, A), or (B, 1) for the ordinal head -> actions."""
        if self.ordinal:
            n = len(self.order)
            y = torch.tanh(out[..., 0])
            return self.order[((y + 1) / 2 * n).long().clamp(0, n - 1)]
        if self.discrete:
            return out.argmax(dim=-1)
        y = torch.tanh(out)
        # (clamped: in float32 low + (high - low) can land an ulp past high)
        actions = torch.minimum(self.low + (y + 1) / 2 * (self.high - self.low), self.high)
        if self.clip is not None:
            actions = torch.where(self.clip, y.clamp(self.low, self.high), actions)
        return actions

    def batched(self, params: Tensor, x: Tensor) -> Tensor:
        """Each row with its own weights: params (B, n) flat vectors (``get_flat`` order),
        x (B, features) -> actions as ``forward`` gives them, (B, A) or (B,). With
        x (B, R, features), row group b (R rows) shares params[b]: -> (B, R, A) or (B, R).

        For CMA-ES in a batched dream: population x rollouts controllers in one pass
        (grouped: P candidates' weights are read once each, not once per rollout).
        """
        if params.shape[-1] != self.num_parameters():
            raise ValueError(f"expected {self.num_parameters()} parameters, "
                             f"got {params.shape[-1]}")
        layers = [self.net] if isinstance(self.net, nn.Linear) else list(self.net)
        grouped = x.dim() == 3
        offset = 0
        for layer in layers:
            if isinstance(layer, nn.Linear):
                n_w, n_b = layer.weight.numel(), layer.bias.numel()
                w = params[:, offset : offset + n_w].view(-1, *layer.weight.shape)
                b = params[:, offset + n_w : offset + n_w + n_b]
                offset += n_w + n_b
                if grouped:  # (B, R, in) @ (B, in, out)
                    x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
                else:
                    x = torch.baddbmm(b.unsqueeze(-1), w, x.unsqueeze(-1)).squeeze(-1)
            else:
                x = layer(x)
        return self._act(x)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def get_flat(self) -> Tensor:
        return nn.utils.parameters_to_vector(self.parameters()).detach().clone()

    def set_flat(self, vector: Tensor) -> None:
        # a copy on the weights' device: vector_to_parameters keeps views of its input,
        # which a caller changing its array later would change with it
        device = next(self.parameters()).device
        vector = torch.as_tensor(vector, dtype=torch.float32, device=device).reshape(-1).clone()
        if vector.numel() != self.num_parameters():
            raise ValueError(f"expected {self.num_parameters()} parameters, got {vector.numel()}")
        nn.utils.vector_to_parameters(vector, self.parameters())


def _discrete_controller(c: ControllerConfig, features: int, space: gym.Space) -> Controller:
    n = int(space.n)
    if c.clip_dims:
        raise ConfigError(f"config key 'controller.clip_dims' is for Box actions; {space} "
                          "is Discrete")
    order = None
    if c.action_order and c.discrete_head != "ordinal":
        raise ConfigError("config key 'controller.action_order' orders the ordinal head's "
                          "bins: set controller.discrete_head=ordinal too (with argmax it "
                          "would be ignored)")
    if c.discrete_head == "ordinal":
        order = list(c.action_order) or list(range(n))
        if sorted(order) != list(range(n)):
            raise ConfigError(f"config key 'controller.action_order' must list each of "
                              f"the {n} actions 0..{n - 1} once, got {order}")
    return Controller(features=features, action_dim=n, discrete=True, hidden=c.hidden,
                      use_cell=c.use_cell, order=order, clip_dims=[])


def _box_controller(c: ControllerConfig, features: int, space: gym.Space) -> Controller:
    if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
        raise ConfigError(f"the controller squashes actions into bounds; {space} is unbounded")
    dims = int(np.prod(space.shape))
    if c.discrete_head != "argmax" or c.action_order:
        key = "action_order" if c.action_order else "discrete_head"
        raise ConfigError(f"config key 'controller.{key}' is for Discrete actions; {space} "
                          "is a Box")
    bad = [d for d in c.clip_dims if not isinstance(d, int) or isinstance(d, bool)
           or not 0 <= d < dims]
    if bad:
        raise ConfigError(f"config key 'controller.clip_dims' must list action dims in "
                          f"0..{dims - 1} of {space}, got {bad[0]!r}")
    low, high = space.low.reshape(-1), space.high.reshape(-1)
    wide = [d for d in c.clip_dims if low[d] < -1 or high[d] > 1]
    if wide:  # clip(tanh(y), low, high) reaches only [-1, 1]
        raise ConfigError(f"config key 'controller.clip_dims': dim {wide[0]} of {space} has "
                          f"bounds [{low[wide[0]]}, {high[wide[0]]}] beyond [-1, 1], which "
                          "clip(tanh(y)) cannot reach")
    return Controller(features=features, action_dim=dims, low=space.low.tolist(),
                      high=space.high.tolist(), hidden=c.hidden, use_cell=c.use_cell,
                      order=None, clip_dims=list(c.clip_dims))


#: action space type -> builder of a dense controller for it
DENSE_BUILDERS: dict[type, Callable[[ControllerConfig, int, gym.Space], Controller]] = {
    gym.spaces.Discrete: _discrete_controller,
    gym.spaces.Box: _box_controller,
}


def build_dense(c: ControllerConfig, features: int, action_space: gym.Space) -> Controller:
    """``controller.kind=dense``: :class:`Controller`, with the head its action space needs."""
    builder = DENSE_BUILDERS.get(type(action_space))
    if builder is None:
        known = ", ".join(t.__name__ for t in DENSE_BUILDERS)
        raise ConfigError(f"controllers support {known} actions, not {action_space}")
    return builder(c, features, action_space)


#: builds an untrained C from ``controller.*``, the size of M's features and the actions
ControllerBuilder = Callable[[ControllerConfig, int, gym.Space], FlatPolicy]

#: ``controller.kind`` -> its builder (each controller module adds itself)
CONTROLLER_KINDS: dict[str, ControllerBuilder] = {}


def register_controller(kind: str, model: type[nn.Module], build: ControllerBuilder) -> None:
    """Make ``build`` the builder of ``controller.kind=<kind>``, and ``model`` loadable
    from its checkpoints (:func:`worldmodels.checkpoint.register_model`)."""
    CONTROLLER_KINDS[kind] = build
    register_model(model.__name__, getattr(model, "from_checkpoint", model))


def build_controller(c: ControllerConfig, features: int, action_space: gym.Space) -> FlatPolicy:
    """An untrained C of kind ``c.kind`` for ``action_space``, reading M's features of
    size ``features`` (``memory.feature_size(c.use_cell)``)."""
    build = CONTROLLER_KINDS.get(c.kind)
    if build is None:
        raise ConfigError(f"config key 'controller.kind': no controller '{c.kind}' is "
                          f"registered (known: {', '.join(CONTROLLER_KINDS) or 'none'})")
    return build(c, features, action_space)


register_controller("dense", Controller, build_dense)
