"""Several Ms dreaming one dream: a pessimistic ensemble against a controller that
exploits one M's mistakes.

A controller trained in the dream of one M can climb that M's errors: states where
it predicts death too rarely, or a future easier than the game's. Ms trained apart
rarely make the same error at the same state, so a dream that several Ms judge
together (model ensembles in model-based RL: PETS, ME-TRPO) is harder to exploit:

- every member steps on the same (z_t, a_t) with its own state;
- C reads the first member's features, [z, h_1] (the run's own M: C plays with it);
- z_{t+1} is the first member's sample (``z_from="first"``) or that of a member drawn
  uniformly per dream and step (``z_from="random"``), so that a future only one M
  dreams is cut short by the others;
- the dream ends with probability max_k P_k(done | h_k), each member's probability
  calibrated with its own done weight: a state any member thinks deadly is deadly;
- the reward is the first member's.

:class:`MemoryEnsemble` is a :class:`worldmodels.memory.Memory` for dreams (it has no
training loss): its "h" is the members' h side by side, (B, sum of hidden sizes), and
its state the members' state tensors one after another, so :class:`worldmodels.dream.
Dream` and everything built on it run an ensemble unchanged. Common random numbers
hold: the member draw uses the component uniform (rescaled, so it stays uniform).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from worldmodels.memory import Memory, State

ZFrom = Literal["first", "random"]


class MemoryEnsemble(nn.Module):
    """K Ms (the first is the one C reads) as one dream model.

    ``done_pos_weights``: the weight each member's done head was trained with (its
    calibrated P(done) is ``sigmoid(logit - log w)``). All members need the same z size
    and actions, and the same component noise shape (FRMDNs with FRMDNs, MDN-RNNs with
    MDN-RNNs), so that they read the same noise.
    """

    def __init__(self, members: list[Memory], done_pos_weights: list[float],
                 z_from: ZFrom = "random"):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 Ms, got {len(members)}")
        if len(done_pos_weights) != len(members):
            raise ValueError(f"{len(done_pos_weights)} done weights for {len(members)} Ms")
        if z_from not in ("first", "random"):
            raise ValueError(f"z_from must be first or random, not '{z_from}'")
        first = members[0]
        for i, m in enumerate(members[1:], 1):
            for key in ("z_dim", "action_dim", "discrete_actions"):
                if getattr(m, key, None) != getattr(first, key, None):
                    raise ValueError(f"M {i} of the ensemble has {key}="
                                     f"{getattr(m, key, None)}, the first M "
                                     f"{getattr(first, key, None)}: members must read the "
                                     "same latents and actions")
            if _noise_shape(m) != _noise_shape(first):
                raise ValueError(f"M {i} of the ensemble draws components per "
                                 f"{_noise_shape(m) or 'row'}, the first M per "
                                 f"{_noise_shape(first) or 'row'}: use Ms of one kind")
        if not first.predicts_reward:
            raise ValueError("the ensemble's first M has no reward head (dreams need one)")
        self.members = nn.ModuleList(members)  # type: ignore[arg-type]
        self.log_weights = [math.log(w) for w in done_pos_weights]
        self.z_from: ZFrom = z_from
        self.z_dim = first.z_dim
        self.action_dim = getattr(first, "action_dim", None)
        self.discrete_actions = first.discrete_actions
        self._state_sizes = [len(m.initial_state(1)) for m in members]  # tensors each
        with torch.no_grad():  # each member's h size, from one step of one row
            self._h_sizes = []
            for m in members:
                dtype = next(m.parameters()).dtype  # type: ignore[attr-defined]
                z = torch.zeros(1, first.z_dim, dtype=dtype)
                action = torch.zeros(1, dtype=torch.long) if first.discrete_actions \
                    else torch.zeros(1, getattr(first, "action_dim", 1), dtype=dtype)
                self._h_sizes.append(m.step(z, action, m.initial_state(1))[0].shape[-1])

    # ------------------------------------------------------------------ as a Memory
    @property
    def component_noise_shape(self) -> tuple[int, ...]:
        return _noise_shape(self.members[0])

    @property
    def predicts_reward(self) -> bool:
        return True

    @property
    def predicts_done(self) -> bool:
        return any(m.predicts_done for m in self.members)

    def config(self) -> dict:
        return {"members": [m.config() for m in self.members], "z_from": self.z_from}

    def _split_state(self, state: State) -> list[State]:
        out, start = [], 0
        for n in self._state_sizes:
            out.append(tuple(state[start: start + n]))
            start += n
        return out

    def _split_h(self, h: Tensor) -> list[Tensor]:
        return list(h.split(self._h_sizes, dim=-1))

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        return tuple(s for m in self.members for s in m.initial_state(batch, device))

    def step(self, z: Tensor, action: Tensor, state: State) -> tuple[Tensor, State]:
        """z (B, d), action -> every member's h side by side (B, sum hidden), state."""
        hs, states = [], []
        for m, s in zip(self.members, self._split_state(state), strict=True):
            h, s = m.step(z, action, s)
            hs.append(h)
            states.extend(s)
        return torch.cat(hs, dim=-1), tuple(states)

    def forward(self, z: Tensor, action: Tensor,
                state: State | None = None) -> tuple[Tensor, State]:
        """Whole sequences: z (B, T, d), action -> h (B, T, sum hidden), the last state."""
        parts = [None] * len(self.members) if state is None else self._split_state(state)
        hs, states = [], []
        for m, s in zip(self.members, parts, strict=True):
            h, s = m(z, action, s)
            hs.append(h)
            states.extend(s)
        return torch.cat(hs, dim=-1), tuple(states)

    def features(self, z: Tensor, state: State, use_cell: bool = False) -> Tensor:
        """What C reads: the first member's features."""
        return self.members[0].features(z, self._split_state(state)[0], use_cell)

    def feature_size(self, use_cell: bool = False) -> int:
        return self.members[0].feature_size(use_cell)

    # ------------------------------------------------------------------ predictions
    def done_logit(self, h: Tensor) -> Tensor | None:
        """The logit, in the first member's calibration, of max_k P_k(done): (...,)."""
        shifted = [logit - w for m, hk, w in zip(self.members, self._split_h(h),
                                                 self.log_weights, strict=True)
                   if (logit := m.done_logit(hk)) is not None]
        if not shifted:
            return None
        return torch.stack(shifted).amax(0) + self.log_weights[0]

    def reward(self, h: Tensor) -> Tensor | None:
        return self.members[0].reward(self._split_h(h)[0])

    def sample(self, h: Tensor, tau: float = 1.0, generator: torch.Generator | None = None,
               noise: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """z_{t+1} (B, d) from h (B, sum hidden): the first member's sample, or each row's
        drawn member's (``noise[0]``'s first uniform of a row picks it, rescaled)."""
        hs = self._split_h(h)
        if self.z_from == "first":
            return self.members[0].sample(hs[0], tau, generator, noise)
        k = len(self.members)
        if noise is None:
            first = torch.rand(len(h), generator=generator)
        else:
            first = noise[0] if noise[0].dim() == 1 else noise[0][:, 0]
        choice = (first * k).long().clamp_max(k - 1)
        if noise is not None:  # the chosen member reads the uniform rescaled: uniform again
            rescaled = (first * k - choice).clamp(0, 1 - 1e-7)
            uniform = rescaled if noise[0].dim() == 1 else \
                torch.cat([rescaled[:, None], noise[0][:, 1:]], dim=1)
            noise = (uniform, noise[1])
        z = h.new_empty(len(h), self.z_dim)
        for j, (m, hj) in enumerate(zip(self.members, hs, strict=True)):
            rows = choice == j
            if bool(rows.any()):
                z[rows] = m.sample(hj[rows], tau, generator,
                                   None if noise is None else (noise[0][rows], noise[1][rows]))
        return z

    def predict(self, h: Tensor, tau: float = 1.0, generator: torch.Generator | None = None,
                noise: tuple[Tensor, Tensor] | None = None,
                ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(:meth:`sample`, :meth:`reward`, :meth:`done_logit`) at h (B, sum hidden)."""
        return self.sample(h, tau, generator, noise), self.reward(h), self.done_logit(h)


def _noise_shape(memory: Memory) -> tuple[int, ...]:
    return tuple(getattr(memory, "component_noise_shape", ()))
