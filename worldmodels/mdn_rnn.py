"""M as Ha & Schmidhuber's MDN-RNN: an LSTM over [z_t, a_t] and, for every dimension j of
z_{t+1}, a mixture of K one-dimensional Gaussians of its own (``memory.kind=mdn_rnn``).

    p(z | h) = prod_j sum_k pi_jk(h) N(z_j; mu_jk(h), sigma_jk(h)^2)

This is the density of the World Models code (``doomrnn.py``: ``out_logmix``, ``out_mean``
and ``out_logstd`` of shape (z_dim, K)), where each dimension draws its component on
its own in the dream. The FRMDN's mixture, and the RMDN (``memory.kind=frmdn
memory.flow=none memory.precision=diag``), are joint: one component for the whole z,
K possible modes a step instead of K^d. Sampling at temperature tau as in the World
Models dream: weights softmax(logits / tau) per dimension, sigma x sqrt(tau). The
reward and done heads, the LSTM and what C reads ([z, h] or [z, c, h]) are the FRMDN's
(:class:`worldmodels.frmdn.LSTMMemory`); ``memory.precision`` and ``memory.flow*`` are
not read.

Common random numbers: ``noise`` = (uniform (..., d), standard normal (..., d)), one
uniform per dimension (:attr:`MDNRNN.component_noise_shape`, which the dream reads).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from worldmodels.frmdn import LSTMMemory, draw_component
from worldmodels.memory import mixture_memory_builder, register_memory

#: log sigma is kept within these bounds (a component narrower than e^-7 of a latent's
#: unit scale is a spike the NLL would chase)
LOG_SIGMA_MIN, LOG_SIGMA_MAX = -7.0, 5.0


class MDNRNN(LSTMMemory):
    """A :class:`worldmodels.memory.Memory`: LSTM + a per-dimension mixture + reward and
    done heads. Shapes as :class:`worldmodels.frmdn.LSTMMemory`'s; the mixture head maps
    h (..., hidden) to logits, means and log sigmas, each (..., d, K)."""

    def __init__(self, *, z_dim: int, action_dim: int, discrete_actions: bool, hidden: int,
                 mixtures: int, reward_head: bool, done_head: bool):
        # every argument is required: the defaults live in config.MemoryConfig only
        super().__init__()
        self._keep_config(z_dim=z_dim, action_dim=action_dim,
                          discrete_actions=discrete_actions, hidden=hidden,
                          mixtures=mixtures, reward_head=reward_head, done_head=done_head)
        self.K = mixtures
        self.lstm = nn.LSTM(z_dim + action_dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 3 * z_dim * mixtures)
        self._make_heads(hidden, reward_head, done_head)

    @property
    def component_noise_shape(self) -> tuple[int, ...]:
        """The shape of a dream step's component uniforms after the batch: one per dim."""
        return (self.z_dim,)

    def params(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h (..., hidden) -> log weights, means, log sigmas, each (..., d, K)."""
        out = self.head(h).view(*h.shape[:-1], self.z_dim, 3, self.K)
        logits, mu, log_sigma = out.unbind(-2)
        return (torch.log_softmax(logits, dim=-1), mu,
                log_sigma.clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX))

    def log_prob(self, y: Tensor, h: Tensor) -> Tensor:
        """log p(y | h) in nats: y (..., d), h (..., hidden) -> (...)."""
        log_pi, mu, log_sigma = self.params(h)
        t = (y.unsqueeze(-1) - mu) * torch.exp(-log_sigma)
        log_normal = -0.5 * t.square() - log_sigma - 0.5 * math.log(2 * math.pi)
        return torch.logsumexp(log_pi + log_normal, dim=-1).sum(-1)

    def sample(self, h: Tensor, tau: float = 1.0, generator: torch.Generator | None = None,
               noise: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """y ~ p(. | h) at temperature tau, every dimension's component drawn on its own:
        h (..., hidden) -> (..., d); ``noise``: see the module's docstring."""
        if not 0 < tau < math.inf:
            raise ValueError(f"temperature tau must be finite and > 0, got {tau}")
        log_pi, mu, log_sigma = self.params(h)
        probs = torch.softmax(log_pi / tau, dim=-1)  # (..., d, K)
        if noise is None:
            k = draw_component(probs, generator)
            eps = torch.randn(mu.shape[:-1], generator=generator, dtype=mu.dtype,
                              device=mu.device)
        else:
            u, eps = noise
            if u.shape != probs.shape[:-1]:
                raise ValueError(f"{type(self).__name__} draws a component per dimension: "
                                 f"uniform noise of shape {tuple(probs.shape[:-1])} needed, "
                                 f"got {tuple(u.shape)}")
            k = draw_component(probs, u=u)
            eps = eps.to(mu.dtype).reshape(mu.shape[:-1])
        chosen_mu = torch.gather(mu, -1, k).squeeze(-1)
        chosen_sigma = torch.gather(log_sigma, -1, k).squeeze(-1).exp()
        return chosen_mu + chosen_sigma * math.sqrt(tau) * eps


register_memory("mdn_rnn", MDNRNN, mixture_memory_builder(MDNRNN))
