"""A vote of K controllers of one kind: each member acts, the vote is the action.

Discrete actions: the action most members chose; a tie goes to the action of the
earliest member among those tied (members are ranked, best first, so a tie follows the
best). Box actions: the members' mean action.

It is a :class:`worldmodels.controller.FlatPolicy` whose flat vector is the members'
vectors one after another (K x n), so the batched actor and the process evaluator play
it as they play one controller: each episode carries the K members' weights.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from worldmodels.controller import FlatPolicy


class VoteController(nn.Module):
    """K members, copies of ``template`` (a FlatPolicy), whose weights ``set_flat`` sets:
    features x (B, F) -> the vote's actions, as one member's (int64 (B,) for Discrete,
    float (B, A) for Box)."""

    def __init__(self, template: FlatPolicy, members: int):
        super().__init__()
        if members < 1:
            raise ValueError(f"a vote needs at least one member, got {members}")
        config = template.config()
        self.discrete = bool(config.get("discrete", False))
        self.actions = int(config["action_dim"])
        self.use_cell = template.use_cell
        self.members = nn.ModuleList(copy.deepcopy(template) for _ in range(members))
        self.member_size = template.num_parameters()

    def config(self) -> dict:
        return {"members": len(self.members), "member": self.members[0].config()}

    def vote(self, actions: Tensor) -> Tensor:
        """The members' actions (K, ...) -> the vote's (...): Discrete, int64 (K, B) ->
        (B,) (ties to the earliest member's action); Box, float (K, B, A) -> the mean."""
        if not self.discrete:  # (the mean of K equal bounds can pass them by an ulp)
            return torch.minimum(torch.maximum(actions.mean(dim=0), actions.amin(dim=0)),
                                 actions.amax(dim=0))
        k = actions.shape[0]
        ballots = nn.functional.one_hot(actions, self.actions)  # (K, ..., A)
        # the count decides; among equal counts, the action of the earliest member:
        # score = count (K + 1) + K - (the earliest member choosing it), which is below
        # K + 1 apart from the count, so it never outweighs one more vote
        rank = torch.arange(k, 0, -1, device=actions.device).view(
            k, *([1] * (ballots.dim() - 1)))
        score = ballots.sum(dim=0) * (k + 1) + (ballots * rank).amax(dim=0)
        return score.argmax(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.vote(torch.stack([m(x) for m in self.members]))

    def batched(self, params: Tensor, x: Tensor) -> Tensor:
        """params (B, K n): each row's K members' flat weights, member after member;
        x (B, F) or (B, R, F) -> the vote's actions, as ``forward`` gives them."""
        n = self.member_size
        if params.shape[-1] != n * len(self.members):
            raise ValueError(f"expected {n * len(self.members)} parameters "
                             f"({len(self.members)} members of {n}), got {params.shape[-1]}")
        return self.vote(torch.stack([m.batched(params[:, i * n:(i + 1) * n], x)
                                      for i, m in enumerate(self.members)]))

    def num_parameters(self) -> int:
        return self.member_size * len(self.members)

    def get_flat(self) -> Tensor:
        return torch.cat([m.get_flat() for m in self.members])

    def set_flat(self, vector: Tensor) -> None:
        vector = torch.as_tensor(vector, dtype=torch.float32).flatten()
        if vector.numel() != self.num_parameters():
            raise ValueError(f"expected {self.num_parameters()} parameters, "
                             f"got {vector.numel()}")
        for i, m in enumerate(self.members):
            m.set_flat(vector[i * self.member_size:(i + 1) * self.member_size])
