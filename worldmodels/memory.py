"""M's seam: the protocol every memory model implements, and the registry that builds
one from ``memory.kind`` (DreamerV3-style: a lookup by type key, no if-chain).

Dreams (:mod:`worldmodels.dream`), the V-M-C agent, the [z, h] wrappers, the dream env
and the dream check use M only through :class:`Memory`. A new memory model is one module
that implements it and calls :func:`register_memory`, plus its key in
``config.MemoryKind`` (``memory.kind``). :mod:`worldmodels.run_dir`, which loads a run's
M, imports the package's models so that they register; ``frmdn_training.build_memory``
looks the kind up.

Recurrent state is opaque to callers except for one convention: a tuple of tensors,
each with the batch on dim 1 (``nn.LSTM``'s ``(h, c)``, each (1, B, hidden);
``nn.GRU``'s ``(h,)``). :func:`keep_rows` and :func:`zero_rows` rely on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from worldmodels.checkpoint import register_model
from worldmodels.config import ExperimentConfig

State = tuple[Tensor, ...]


@runtime_checkable
class Memory(Protocol):
    """A memory model M (an ``nn.Module`` with ``config()``, saved by
    :func:`worldmodels.checkpoint.save_model`).

    Shapes: z (B, d) per step or (B, T, d) per sequence, d = ``z_dim``; actions (B, A)
    float, or (B,) int64 for Discrete(A) (``discrete_actions``), with a T axis per
    sequence; h (B, ·) or (B, T, ·), whatever M's heads read.
    """

    z_dim: int
    discrete_actions: bool

    @property
    def predicts_reward(self) -> bool:
        """Has a reward head (dreams need one)."""
        ...

    @property
    def predicts_done(self) -> bool:
        """Has a done head (without one a dream ends only at its step cap)."""
        ...

    def config(self) -> dict:
        """The constructor's keyword arguments (the checkpoint's config)."""
        ...

    # ------------------------------------------------------------------ recurrence
    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        """The state before any step: zeros for ``batch`` rows."""
        ...

    def step(self, z: Tensor, action: Tensor, state: State) -> tuple[Tensor, State]:
        """One step: z (B, d), action (B, A) or (B,) -> h (B, ·) and the next state."""
        ...

    def __call__(self, z: Tensor, action: Tensor,
                 state: State | None = None) -> tuple[Tensor, State]:
        """Whole sequences (teacher forcing): z (B, T, d), action (B, T, ...) ->
        h (B, T, ·) and the state after the last step."""
        ...

    # ------------------------------------------------------------------ what C reads
    def features(self, z: Tensor, state: State, use_cell: bool = False) -> Tensor:
        """What C reads at state ``state``: z (B, d) -> (B, ``feature_size(use_cell)``),
        [z, h], or [z, c, h] with ``use_cell`` (a model without a cell state refuses it)."""
        ...

    def feature_size(self, use_cell: bool = False) -> int:
        """The size of :meth:`features`' last dim; raises :class:`ConfigError` where
        ``use_cell`` means nothing to this model."""
        ...

    # ------------------------------------------------------------------ predictions
    def sample(self, h: Tensor, tau: float = 1.0, generator: torch.Generator | None = None,
               noise: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """z_{t+1} ~ p(. | h) at temperature tau: h (..., ·) -> (..., d). ``noise`` =
        (uniform (...,), standard normal (..., d)) replaces the draws (common random
        numbers: equal noise and h give equal samples)."""
        ...

    def log_prob(self, y: Tensor, h: Tensor) -> Tensor:
        """log p(y | h) in nats: y (..., d), h (..., ·) -> (...)."""
        ...

    def reward(self, h: Tensor) -> Tensor | None:
        """Predicted reward (...,), or None without a reward head."""
        ...

    def done_logit(self, h: Tensor) -> Tensor | None:
        """Logit of P(done) (...,) as trained (see :func:`done_probability`), or None."""
        ...

    # ------------------------------------------------------------------ training
    def loss(self, z: Tensor, action: Tensor, reward: Tensor, done: Tensor, mask: Tensor,
             reward_weight: float = 1.0, done_weight: float = 1.0,
             done_pos_weight: float = 1.0) -> dict[str, Tensor]:
        """Masked losses over windows (see :func:`sequence_loss`); ``loss`` is the total."""
        ...


def keep_rows(state: State, mask: Tensor) -> State:
    """The rows of ``state`` where ``mask`` (B,) is True."""
    return tuple(s[:, mask] for s in state)


def zero_rows(state: State, mask: Tensor) -> State:
    """``state`` with the rows where ``mask`` (B,) bool is True set to zero."""
    keep = (~mask).to(state[0].dtype)[None, :, None]
    return tuple(s * keep for s in state)


def done_probability(logit: Tensor, done_pos_weight: float = 1.0) -> Tensor:
    """P(done) from a done logit trained with ``done_pos_weight`` (calibrated again)."""
    return torch.sigmoid(logit - math.log(done_pos_weight))


def done_metrics(rates: dict[str, float]) -> dict[str, float]:
    """Recall, precision and skill of the done head from averaged per-step rates.

    ``done_skill`` = 1 - BCE / H(base rate): 0 for always predicting the base rate,
    1 for certainty (accuracy says little when 1 step in 200 is terminal).
    """
    if "done_true" not in rates:
        return {}
    p, tp = rates["done_true"], rates["done_tp"]
    base = -(p * math.log(p) + (1 - p) * math.log(1 - p)) if 0 < p < 1 else 0.0
    return {
        "done_recall": tp / p if p else float("nan"),
        "done_precision": tp / rates["done_pred"] if rates["done_pred"] else float("nan"),
        "done_skill": 1 - rates["done_bce"] / base if base else float("nan"),
    }


def sequence_loss(memory: Memory, z: Tensor, action: Tensor, reward: Tensor, done: Tensor,
                  mask: Tensor, reward_weight: float = 1.0, done_weight: float = 1.0,
                  done_pos_weight: float = 1.0) -> dict[str, Tensor]:
    """Masked losses of any :class:`Memory` over windows: z (B, L+1, d); action, reward,
    done, mask (B, L, ...).

    ``nll`` is nats per latent dimension; ``loss`` = nll + weighted reward MSE + done
    BCE, whose terminal steps count ``done_pos_weight`` times (terminations are rare:
    about 1 step in 200 in TakeCover). That weight shifts the done logit by
    log(done_pos_weight), which :func:`done_probability` takes off again.

    Besides the losses, per-step rates for done metrics over many batches:
    ``done_bce`` (unweighted), ``done_tp`` (predicted p > 0.5 and done),
    ``done_pred`` (predicted), ``done_true`` (done); see :func:`done_metrics`.
    """
    h, _ = memory(z[:, :-1], action)
    n = mask.sum().clamp_min(1.0)
    nll = -(memory.log_prob(z[:, 1:], h) * mask).sum() / n / memory.z_dim
    out = {"nll": nll}
    total = nll
    r = memory.reward(h)
    if r is not None:
        out["reward_mse"] = ((r - reward).square() * mask).sum() / n
        total = total + reward_weight * out["reward_mse"]
    logit = memory.done_logit(h)
    if logit is not None:
        calibrated = logit - math.log(done_pos_weight)
        bce = F.binary_cross_entropy_with_logits(calibrated, done, reduction="none")
        weighted = bce if done_pos_weight == 1.0 else F.binary_cross_entropy_with_logits(
            logit, done, reduction="none", pos_weight=torch.as_tensor(
                done_pos_weight, dtype=logit.dtype, device=logit.device))
        predicted = (calibrated > 0).float()
        out["done_bce"] = (bce * mask).sum() / n
        out["done_acc"] = (((predicted == done).float()) * mask).sum() / n
        out["done_tp"] = (predicted * done * mask).sum() / n
        out["done_pred"] = (predicted * mask).sum() / n
        out["done_true"] = (done * mask).sum() / n
        total = total + done_weight * (weighted * mask).sum() / n
    out["loss"] = total
    return out


# --------------------------------------------------------------------------- registry

#: builds an untrained M from the run's config and the env's actions (size, Discrete?)
MemoryBuilder = Callable[[ExperimentConfig, int, bool], Memory]


@dataclass(frozen=True)
class RegisteredMemory:
    """A registered memory model: its class (whose name is its checkpoint kind) and
    how to build it from a config."""

    model: type[nn.Module]
    build: MemoryBuilder


#: ``memory.kind`` -> the model that implements it (each model module adds itself)
MEMORY_KINDS: dict[str, RegisteredMemory] = {}


def register_memory(kind: str, model: type[nn.Module], build: MemoryBuilder) -> None:
    """Make ``model`` the memory of ``memory.kind=<kind>``, and loadable from its
    checkpoints (kind ``model.__name__``, :func:`worldmodels.checkpoint.register_model`)."""
    MEMORY_KINDS[kind] = RegisteredMemory(model, build)
    register_model(model.__name__, model)


def mixture_memory_builder(model: type[nn.Module]) -> MemoryBuilder:
    """How a memory built from ``memory.hidden``, ``mixtures`` and the heads alone (no
    FRMDN keys: the GRU-MDN, the MDN-RNN) is made from a config."""
    def build(cfg: ExperimentConfig, action_dim: int, discrete: bool) -> Memory:
        m = cfg.memory
        return model(z_dim=cfg.vae.z_dim, action_dim=action_dim, discrete_actions=discrete,
                     hidden=m.hidden, mixtures=m.mixtures, reward_head=m.reward_head,
                     done_head=m.done_head)
    return build


def checkpoint_kinds() -> tuple[str, ...]:
    """The checkpoint kinds of every registered memory model (what a run's M may be)."""
    return tuple(k.model.__name__ for k in MEMORY_KINDS.values())


class MemoryModel(nn.Module):
    """What the memory models share: the config a checkpoint rebuilds them from, reward
    and done heads on h, and the masked loss over windows (:func:`sequence_loss`). A
    model sets ``self._config`` and calls :meth:`_make_heads` in its constructor."""

    _config: dict
    reward_head: nn.Linear | None
    done_head: nn.Linear | None

    def _keep_config(self, **config: Any) -> None:
        """Record the constructor's arguments (what a checkpoint rebuilds the model from)
        and the sizes every memory has: ``z_dim``, ``action_dim``, ``discrete_actions``."""
        self._config = dict(config)
        self.z_dim, self.action_dim = config["z_dim"], config["action_dim"]
        self.discrete_actions = config["discrete_actions"]

    def _make_heads(self, hidden: int, reward_head: bool, done_head: bool) -> None:
        self.reward_head = nn.Linear(hidden, 1) if reward_head else None
        self.done_head = nn.Linear(hidden, 1) if done_head else None

    def config(self) -> dict:
        return dict(self._config)

    @property
    def predicts_reward(self) -> bool:
        return self.reward_head is not None

    @property
    def predicts_done(self) -> bool:
        return self.done_head is not None

    def reward(self, h: Tensor) -> Tensor | None:
        """Predicted reward (...,), or None without a reward head."""
        return None if self.reward_head is None else self.reward_head(h).squeeze(-1)

    def done_logit(self, h: Tensor) -> Tensor | None:
        """Logit of P(done) (...,), or None without a done head."""
        return None if self.done_head is None else self.done_head(h).squeeze(-1)

    def predict(self, h: Tensor, tau: float = 1.0, generator: torch.Generator | None = None,
                noise: tuple[Tensor, Tensor] | None = None,
                ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """A dream step's predictions at h: (``sample(h, tau, generator, noise)``,
        ``reward(h)``, ``done_logit(h)``); a model may compute them in one pass."""
        sample = self.sample(h, tau, generator, noise)  # type: ignore[attr-defined]
        return sample, self.reward(h), self.done_logit(h)

    def loss(self, z: Tensor, action: Tensor, reward: Tensor, done: Tensor, mask: Tensor,
             reward_weight: float = 1.0, done_weight: float = 1.0,
             done_pos_weight: float = 1.0) -> dict[str, Tensor]:
        """Masked losses over windows: z (B, L+1, d); action, reward, done, mask (B, L, ...);
        see :func:`sequence_loss`."""
        return sequence_loss(self, z, action, reward, done, mask,  # type: ignore[arg-type]
                             reward_weight, done_weight, done_pos_weight)
