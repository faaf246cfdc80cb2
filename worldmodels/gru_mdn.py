"""M as a GRU-MDN: a GRU over [z_t, a_t] and a diagonal Gaussian mixture on z_{t+1},
with reward and done heads (``memory.kind=gru_mdn``).

The plainest recurrent mixture density network: no flow, one hidden state h_t and no
cell state, so ``controller.use_cell`` is refused (the paper's [z, c, h] needs an
LSTM). The mixture is :class:`worldmodels.frmdn.TiedPrecisionMixture` with
``precision=diag`` (Lambda_k = D_k), so sampling at a temperature and common random
numbers behave as in the FRMDN; ``memory.precision`` and the ``memory.flow*`` keys are
FRMDN's and not read.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from worldmodels.config import ConfigError
from worldmodels.frmdn import TiedPrecisionMixture
from worldmodels.memory import MemoryModel, State, mixture_memory_builder, register_memory


def _no_cell() -> ConfigError:
    return ConfigError("config key 'controller.use_cell': memory.kind=gru_mdn has no cell "
                       "state to feed C (a GRU's only state is h); set "
                       "controller.use_cell=false, or use memory.kind=frmdn")


class GRUMDN(MemoryModel):
    """A :class:`worldmodels.memory.Memory`: GRU + diagonal mixture + reward and done heads.

    Shapes: z (B, T, d); actions (B, T, A) float or (B, T) int64 for Discrete(A);
    h (B, T, hidden); state ``(h,)``, h (1, B, hidden).
    """

    def __init__(self, *, z_dim: int, action_dim: int, discrete_actions: bool, hidden: int,
                 mixtures: int, reward_head: bool, done_head: bool):
        # every argument is required: the defaults live in config.MemoryConfig only
        super().__init__()
        self._keep_config(z_dim=z_dim, action_dim=action_dim,
                          discrete_actions=discrete_actions, hidden=hidden,
                          mixtures=mixtures, reward_head=reward_head, done_head=done_head)
        self.hidden_size = hidden
        self.gru = nn.GRU(z_dim + action_dim, hidden, batch_first=True)
        self.mixture = TiedPrecisionMixture(hidden, z_dim, mixtures=mixtures, precision="diag",
                                            overcomplete_m=0)
        self._make_heads(hidden, reward_head, done_head)

    # ------------------------------------------------------------------ recurrence
    def _input(self, z: Tensor, action: Tensor) -> Tensor:
        if self.discrete_actions:
            action = F.one_hot(action.long(), self.action_dim).to(z.dtype)
        return torch.cat([z, action.to(z.dtype)], dim=-1)

    def forward(self, z: Tensor, action: Tensor,
                state: State | None = None) -> tuple[Tensor, State]:
        """Whole sequences: z (B, T, d), action (B, T, ...) -> h (B, T, hidden), state."""
        h, last = self.gru(self._input(z, action), None if state is None else state[0])
        return h, (last,)

    def step(self, z: Tensor, action: Tensor, state: State) -> tuple[Tensor, State]:
        """One step: z (B, d), action (B, ...) -> h (B, hidden), state."""
        h, last = self.gru(self._input(z, action).unsqueeze(1), state[0])
        return h.squeeze(1), (last,)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        return (torch.zeros(1, batch, self.hidden_size, device=device,
                            dtype=self.gru.weight_ih_l0.dtype),)

    # ------------------------------------------------------------------ what C reads
    def features(self, z: Tensor, state: State, use_cell: bool = False) -> Tensor:
        """[z, h]: z (B, d), state (h,) -> (B, d + hidden); ``use_cell`` is refused."""
        if use_cell:
            raise _no_cell()
        return torch.cat([z, state[0][0]], dim=-1)

    def feature_size(self, use_cell: bool = False) -> int:
        if use_cell:
            raise _no_cell()
        return self.z_dim + self.hidden_size

    # ------------------------------------------------------------------ predictions
    def log_prob(self, y: Tensor, h: Tensor) -> Tensor:
        """log p(y | h) in nats: y (..., d), h (..., hidden) -> (...)."""
        return self.mixture.log_prob(y, self.mixture.params(h))

    def sample(self, h: Tensor, tau: float = 1.0, generator: torch.Generator | None = None,
               noise: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """y ~ p(. | h) at temperature tau: h (..., hidden) -> (..., d)."""
        return self.mixture.sample(self.mixture.params(h), tau, generator, noise)


register_memory("gru_mdn", GRUMDN, mixture_memory_builder(GRUMDN))
