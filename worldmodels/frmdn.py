"""M: the FRMDN, a flow-based recurrent mixture density network.

At step t an LSTM reads x_t = [z_t, a_t] and gives h_t. The density of the next latent
y = z_{t+1} in R^d is a Gaussian mixture on u = f(y), f an invertible normalizing flow
(optionally conditioned on h_t), with tied precisions::

    log p(y | h) = log sum_k alpha_k(h) N(u; mu_k(h), Lambda_k(h)^-1) + log|det df/dy|
    Lambda_k = U D_k U^T,   D_k = diag(positive head outputs)

``precision``:

* ``diag`` — U = I.
* ``square`` — U a shared, learned d x d matrix kept invertible by an LU
  parameterisation (unit lower L times upper with positive diagonal exp(s), as in Glow's
  invertible 1x1 convolution); log det Lambda_k = 2 sum s + sum log D_k.
* ``overcomplete`` — U = [U1 | U2] a shared d x m matrix, m = d + r > d (EMLLT-style:
  Lambda_k = sum_j D_kj u_j u_j^T), U1 square and LU-parameterised, U2 free. With
  V = U1^-1 U2 and W_k = D1^-1/2 V D2^1/2, Lambda_k = U1 D1^1/2 (I + W_k W_k^T) D1^1/2 U1^T,
  so by the determinant lemma log det Lambda_k = 2 sum s + sum log D1 + log det(I_r +
  W_k^T W_k), and log det(I_r + W_k^T W_k) = sum log D2 + log det C_k with
  C_k = D2^-1 + V^T D1^-1 V: an r x r Cholesky per component instead of a d x d one,
  exact. C_k is positive definite in exact arithmetic (its eigenvalues are >= e^-8 at
  the bounds of log D) but not in float32: V^T D1^-1 V reaches e^8 |V|^2 d, so its
  rounding error is as large as the smallest eigenvalues wherever V^T D1^-1 V has none
  or tiny ones (r - d of them when r > d), and the Cholesky fails or the log det is off
  by up to a nat. C_k is therefore formed and factorised in float64 (a margin of ~1e9 /
  (d |V|^2) at the bounds) and only its log det is cast back. C_k rather than
  I + W^T W: D2 only touches its diagonal, so no r x r elementwise products are needed.

The quadratic form uses (u - mu_k)^T U D_k U^T (u - mu_k) = sum_j D_kj (u_j^T (u - mu_k))^2,
so training never builds a d x d matrix.

One ``nn.LSTM`` serves whole sequences (``forward``) and one-step rollouts with carried
state (``step``): the same weights, no renamed keys.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from worldmodels.config import ExperimentConfig, Flow, Precision
from worldmodels.flow_inverse import FlowInverse, stamp
from worldmodels.memory import MemoryModel, State, register_memory

PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
FLOWS: tuple[str, ...] = typing.get_args(Flow)
LOG_2PI = math.log(2 * math.pi)


@dataclass
class MixtureParams:
    """Mixture parameters for a batch of hidden states (leading dims ``...``)."""

    logits: Tensor  # (..., K)     unnormalised log mixture weights
    mu: Tensor  # (..., K, d)      component means in u-space
    log_d: Tensor  # (..., K, r)   log of D_k's diagonal (r = d, or m for overcomplete)


def kept(owner: nn.Module, name: str, params: tuple[Tensor, ...],
         make: typing.Callable[[], Tensor]) -> Tensor:
    """``make()`` (without autograd), kept in ``owner`` under ``name`` until a tensor of
    ``params`` changes: in place (as optimisers and ``load_state_dict`` change them), or
    by a move to another device or dtype. An in-place change through ``p.data`` does not
    bump ``p``'s version and is not seen: change parameters through ``torch.no_grad()``
    in-place ops or ``load_state_dict`` instead. Fused optimisers
    (``torch.optim.Adam(fused=True)``) update parameters without bumping their versions
    either: after their steps, call ``m.load_state_dict(m.state_dict())`` before a no-grad
    pass (``train_memory``'s Adam is the default, foreach, which bumps them). A value made
    under ``torch.inference_mode`` is kept apart from one made outside it (an inference
    tensor cannot enter autograd outside that mode)."""
    key = (stamp(params), torch.is_inference_mode_enabled())
    cached = owner.__dict__.get(name)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = owner.__dict__[name] = (key, make())
    return cached[1]


def draw_component(probs: Tensor, generator: torch.Generator | None = None,
                   u: Tensor | None = None) -> Tensor:
    """A component k (..., 1) int64 drawn from mixture weights ``probs`` (..., K):
    multinomial, or the uniform ``u`` (...)'s place in the weights' CDF (u in [0, 1)
    scaled to the CDF's last value, so rounding never picks a component whose weight is
    0: u = 0 or u just below 1 land on the first or last nonzero weight)."""
    K = probs.shape[-1]
    if u is None:
        k = torch.multinomial(probs.reshape(-1, K), 1, generator=generator)
        return k.view(*probs.shape[:-1], 1)
    cdf = torch.cumsum(probs, dim=-1)
    place = u.to(cdf.dtype).unsqueeze(-1) * cdf[..., -1:]
    return torch.searchsorted(cdf, place.contiguous(), right=True).clamp(max=K - 1)


class _PDLogDet(torch.autograd.Function):
    """log det A for symmetric positive definite A (..., n, n) by Cholesky, A = L L^T.

    Its backward is g A^-1 = g L^-T L^-1 from one triangular inverse: the same gradient
    as autograd through ``torch.linalg.cholesky`` but without that general backward,
    which (in float64) would make the overcomplete training step much slower.
    """

    @staticmethod
    def forward(ctx, a: Tensor) -> Tensor:
        chol = torch.linalg.cholesky(a)
        ctx.save_for_backward(chol)
        return 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        (chol,) = ctx.saved_tensors
        eye = torch.eye(chol.shape[-1], dtype=chol.dtype, device=chol.device)
        l_inv = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
        return grad[..., None, None] * (l_inv.transpose(-1, -2) @ l_inv)


class TiedPrecisionMixture(nn.Module):
    """A K-component Gaussian mixture on u in R^d whose parameters come from ``h``.

    ``log_d_bound`` bounds log D_k smoothly to [-bound, bound] (tanh), which keeps the
    loss free of overflow. For ``diag`` that bounds the precisions too; for ``square`` and
    ``overcomplete`` U's own scale (exp of ``lu_log_diag``) is free, so Lambda_k = U D_k
    U^T is bounded only as far as training keeps U. ``overcomplete_m`` is m for
    ``overcomplete`` (0: d + max(4, d // 4)).
    """

    def __init__(
        self,
        in_features: int,
        d: int,
        *,
        mixtures: int,
        precision: Precision,
        overcomplete_m: int,
        log_d_bound: float = 8.0,
    ):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not '{precision}'")
        self.d, self.K, self.precision = d, mixtures, precision
        self.m = (overcomplete_m or d + max(4, d // 4)) if precision == "overcomplete" else d
        if precision == "overcomplete" and self.m <= d:
            raise ValueError(f"overcomplete precision needs m > d, got m={self.m}, d={d}")
        self.log_d_bound = log_d_bound
        self.head = nn.Linear(in_features, mixtures * (1 + d + self.m))
        if precision in ("square", "overcomplete"):
            self.lu_lower = nn.Parameter(torch.zeros(d, d))
            self.lu_upper = nn.Parameter(torch.zeros(d, d))
            self.lu_log_diag = nn.Parameter(torch.zeros(d))
        if precision == "overcomplete":
            extra = torch.randn(d, self.m - d)  # from the seeded global generator
            self.u_extra = nn.Parameter(0.1 * extra / math.sqrt(d))

    # ------------------------------------------------------------------ parameters
    def params(self, h: Tensor) -> MixtureParams:
        """h (..., in_features) -> mixture parameters."""
        out = self.head(h).unflatten(-1, (self.K, 1 + self.d + self.m))
        raw = out[..., 1 + self.d :]
        return MixtureParams(
            logits=out[..., 0],
            mu=out[..., 1 : 1 + self.d],
            log_d=self.log_d_bound * torch.tanh(raw / self.log_d_bound),
        )

    def lu_factors(self) -> tuple[Tensor, Tensor]:
        """(L, Up + diag(exp s)), each (d, d): unit lower and upper triangular."""
        eye = torch.eye(self.d, dtype=self.lu_lower.dtype, device=self.lu_lower.device)
        lower = torch.tril(self.lu_lower, -1) + eye
        upper = torch.triu(self.lu_upper, 1) + torch.diag(torch.exp(self.lu_log_diag))
        return lower, upper

    def square_part(self) -> Tensor:
        """U1 = L (Up + diag(exp s)), (d, d): unit lower times upper, always invertible."""
        lower, upper = self.lu_factors()
        return lower @ upper

    def solve_square_transpose(self, v: Tensor) -> Tensor:
        """U1^-T v for v (..., d): two triangular solves against all rows at once
        (U1^T = Up^T L^T), not one d x d factorisation per row. Without autograd (a
        dream), one product with U1^-1, kept while the LU parameters are unchanged."""
        if not torch.is_grad_enabled():
            return (v.reshape(-1, self.d) @ self._square_inverse()).reshape(v.shape)
        lower, upper = self.lu_factors()
        cols = v.reshape(-1, self.d).transpose(0, 1)  # (d, N)
        y = torch.linalg.solve_triangular(upper.transpose(0, 1), cols, upper=False)
        x = torch.linalg.solve_triangular(lower.transpose(0, 1), y, upper=True,
                                          unitriangular=True)
        return x.transpose(0, 1).reshape(v.shape)

    def _square_inverse(self) -> Tensor:
        """U1^-1 = Up^-1 L^-1 (d, d), made by triangular solves and cached until a LU
        parameter changes (in place, as optimisers and ``load_state_dict`` change them,
        or by a move to another device or dtype). Rows v give v U1^-1 = (U1^-T v^T)^T."""
        def inverse() -> Tensor:
            lower, upper = self.lu_factors()
            eye = torch.eye(self.d, dtype=lower.dtype, device=lower.device)
            l_inv = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
            return torch.linalg.solve_triangular(upper, l_inv, upper=True)

        return kept(self, "_inverse", (self.lu_lower, self.lu_upper, self.lu_log_diag), inverse)

    def u_matrix(self) -> Tensor | None:
        """U: None for diag, (d, d) for square, (d, m) = [U1 | U2] for overcomplete."""
        if self.precision == "diag":
            return None
        if self.precision == "square":
            return self.square_part()
        return torch.cat([self.square_part(), self.u_extra], dim=1)

    def _low_rank(self, log_d: Tensor) -> Tensor:
        """For overcomplete: C_k = D2^-1 + V^T D1^-1 V (..., K, r, r), V = U1^-1 U2,
        in float64 (see :meth:`low_rank_log_det`)."""
        log_d = log_d.double()
        V = torch.linalg.solve(self.square_part().double(), self.u_extra.double())  # (d, r)
        r = self.m - self.d
        # V^T D1^-1 V = sum_j D1^-1_j v_j v_j^T: one GEMM against the flattened outer
        # products of V's rows, rather than a batch of tiny matmuls
        outer = (V.unsqueeze(-1) * V.unsqueeze(-2)).reshape(self.d, r * r)
        gram = (torch.exp(-log_d[..., : self.d]) @ outer).unflatten(-1, (r, r))
        return gram + torch.diag_embed(torch.exp(-log_d[..., self.d :]))

    def low_rank_log_det(self, log_d: Tensor) -> Tensor:
        """log det(I_r + W^T W) = sum log D2 + log det C_k for overcomplete, (..., K), in
        the dtype of ``log_d``.

        C_k is formed and factorised in float64: in float32 the Gram term's rounding error
        at log D = +-8 reaches the size of C_k's smallest eigenvalues (>= e^-8), and the
        Cholesky loses definiteness (about 1 draw in 3 for d = 2, r = 4) or the log det is
        off by up to a nat. Gradients flow through the casts.
        """
        log_det = _PDLogDet.apply(self._low_rank(log_d))
        return (log_d[..., self.d :].double().sum(-1) + log_det).to(log_d.dtype)

    def precision_matrices(self, p: MixtureParams) -> Tensor:
        """Lambda_k as full matrices, (..., K, d, d) (for tests and checks)."""
        D = torch.exp(p.log_d)
        U = self.u_matrix()
        if U is None:
            return torch.diag_embed(D)
        return (U * D.unsqueeze(-2)) @ U.transpose(-1, -2)

    # ------------------------------------------------------------------ density
    def component_log_prob(self, u: Tensor, p: MixtureParams) -> Tensor:
        """log N(u; mu_k, Lambda_k^-1) for every k: u (..., d) -> (..., K)."""
        diff = u.unsqueeze(-2) - p.mu  # (..., K, d)
        D = torch.exp(p.log_d)
        U = self.u_matrix()
        proj = diff if U is None else diff @ U  # (..., K, r): u_j^T (u - mu_k)
        quad = (D * proj.square()).sum(-1)
        if self.precision == "diag":
            log_det = p.log_d.sum(-1)
        elif self.precision == "square":
            log_det = 2 * self.lu_log_diag.sum() + p.log_d.sum(-1)
        else:  # determinant lemma: only an r x r Cholesky per component, of I + W^T W
            log_det = (2 * self.lu_log_diag.sum() + p.log_d[..., : self.d].sum(-1)
                       + self.low_rank_log_det(p.log_d))
        return 0.5 * (log_det - quad - self.d * LOG_2PI)

    def log_prob(self, u: Tensor, p: MixtureParams) -> Tensor:
        """log sum_k alpha_k N(u; mu_k, Lambda_k^-1): u (..., d) -> (...)."""
        log_alpha = F.log_softmax(p.logits, dim=-1)
        return torch.logsumexp(log_alpha + self.component_log_prob(u, p), dim=-1)

    # ------------------------------------------------------------------ sampling
    def sample(self, p: MixtureParams, tau: float = 1.0,
               generator: torch.Generator | None = None,
               noise: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Draw u (..., d) with temperature: mixture logits / tau, covariance x tau.

        ``noise`` = (uniform (...,), standard normal (..., d)) supplies the randomness
        (the component is the uniform's place in the weights' CDF), so callers can share
        it between samples (common random numbers).
        """
        if not 0 < tau < math.inf:
            raise ValueError(f"temperature tau must be finite and > 0, got {tau}")
        batch = p.logits.shape[:-1]
        k = self.component(p.logits, tau, generator, noise)
        mu = torch.gather(p.mu, -2, k.unsqueeze(-1).expand(*batch, 1, self.d)).squeeze(-2)
        log_d = torch.gather(p.log_d, -2, k.unsqueeze(-1).expand(*batch, 1, self.m)).squeeze(-2)
        return self.draw(mu, log_d, tau, generator, noise)

    def component(self, logits: Tensor, tau: float, generator: torch.Generator | None = None,
                  noise: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The drawn component k (..., 1) int64 of mixture logits (..., K) at temperature
        tau: multinomial, or the uniform ``noise[0]``'s place in the weights' CDF (u in
        [0, 1) scaled to the CDF's last value, so rounding never picks a component whose
        weight is 0: u = 0 or u just below 1 land on the first or last nonzero weight)."""
        return draw_component(torch.softmax(logits / tau, dim=-1), generator,
                              None if noise is None else noise[0])

    def chosen(self, h: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, log D) (N, d), (N, m) of component ``k`` (N,) of each row of h (N, in):
        the head's rows of that component only, one matrix product per component drawn
        (a K-th of the whole head's work), rows grouped by a sort."""
        per = 1 + self.d + self.m
        weight = self.head.weight.view(self.K, per, -1)
        bias = self.head.bias.view(self.K, per)
        order = torch.argsort(k)
        counts = torch.bincount(k, minlength=self.K).tolist()
        hs = h[order]
        parts, start = [], 0
        for j, count in enumerate(counts):
            if count:
                parts.append(F.linear(hs[start: start + count], weight[j, 1:], bias[j, 1:]))
                start += count
        grouped = torch.cat(parts) if parts else h.new_empty(0, per - 1)
        out = torch.empty_like(grouped).index_copy(0, order, grouped)
        raw = out[:, self.d:]
        return out[:, : self.d], self.log_d_bound * torch.tanh(raw / self.log_d_bound)

    def draw(self, mu: Tensor, log_d: Tensor, tau: float,
             generator: torch.Generator | None = None,
             noise: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """u (..., d) of the drawn components' mu (..., d) and log D (..., m), at
        temperature tau; the normal draw is ``noise[1]`` if given."""
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device) \
            if noise is None else noise[1].to(mu.dtype)
        scale = math.sqrt(tau)
        if self.precision == "overcomplete":
            # Lambda = U1 M U1^T, M = D1 + V D2 V^T = L L^T: U1^-T L^-T eps has covariance
            # U1^-T M^-1 U1^-1 = Lambda^-1
            # (float64: only one d x d matrix per sample, and M's scale spans e^+-8)
            ld = log_d.double()
            V = torch.linalg.solve(self.square_part().double(), self.u_extra.double())
            M = torch.diag_embed(torch.exp(ld[..., : self.d])) \
                + (V * torch.exp(ld[..., self.d :]).unsqueeze(-2)) @ V.transpose(0, 1)
            chol = torch.linalg.cholesky(M)
            x = torch.linalg.solve_triangular(chol.transpose(-1, -2),
                                              eps.double().unsqueeze(-1), upper=True)
            step = torch.linalg.solve(self.square_part().double().transpose(0, 1), x)
            return mu + scale * step.squeeze(-1).to(mu.dtype)
        white = eps * torch.exp(-0.5 * log_d)  # covariance D^-1
        if self.precision == "diag":
            return mu + scale * white
        # U^-T D^-1/2 eps has covariance U^-T D^-1 U^-1 = (U D U^T)^-1
        return mu + scale * self.solve_square_transpose(white)


class LSTMMemory(MemoryModel):
    """What the LSTM memories share (the FRMDN, :class:`worldmodels.mdn_rnn.MDNRNN`): the
    LSTM over [z_t, a_t], its one-step cell, its state and what C reads of it. A subclass
    sets ``z_dim``, ``action_dim``, ``discrete_actions`` and ``lstm``.

    Shapes: z (B, T, d); actions (B, T, A) float or (B, T) int64 for Discrete(A);
    h (B, T, hidden); state a pair (h0, c0) of (1, B, hidden).
    """

    z_dim: int
    action_dim: int
    discrete_actions: bool
    lstm: nn.LSTM

    @property
    def hidden_size(self) -> int:
        """Size of h (and of the cell state c)."""
        return self.lstm.hidden_size

    # ------------------------------------------------------------------ what C reads
    def features(self, z: Tensor, state: State, use_cell: bool = False) -> Tensor:
        """[z, h], or [z, c, h] with ``use_cell`` (the paper's Doom controller): z (B, d),
        state (h, c) each (1, B, hidden) -> (B, d + hidden) or (B, d + 2 hidden)."""
        if use_cell:
            return torch.cat([z, state[1][0], state[0][0]], dim=-1)
        return torch.cat([z, state[0][0]], dim=-1)

    def feature_size(self, use_cell: bool = False) -> int:
        return self.z_dim + self.hidden_size * (2 if use_cell else 1)

    # ------------------------------------------------------------------ recurrence
    def rnn_input(self, z: Tensor, action: Tensor) -> Tensor:
        """[z, a] with Discrete actions one-hot: (..., d + A)."""
        if self.discrete_actions:
            action = F.one_hot(action.long(), self.action_dim).to(z.dtype)
        return torch.cat([z, action.to(z.dtype)], dim=-1)

    def forward(self, z: Tensor, action: Tensor,
                state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Whole sequences: z (B, T, d), action (B, T, ...) -> h (B, T, hidden), state."""
        h, state = self.lstm(self.rnn_input(z, action), state)
        return h, state

    def step(self, z: Tensor, action: Tensor,
             state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One step with carried state: z (B, d), action (B, ...) -> h (B, hidden), state.

        Without autograd (acting, dreams) the LSTM cell is written out: one product of
        [z, a, h] with the stacked input and recurrent weights, then the gates (nn.LSTM's
        own call on a one-step sequence costs about 0.2 ms at batch 1, five times this);
        the same values up to float rounding."""
        if torch.is_grad_enabled():
            h, state = self.lstm(self.rnn_input(z, action).unsqueeze(1), state)
            return h.squeeze(1), state
        if state is None:
            zeros = z.new_zeros(1, len(z), self.hidden_size)
            state = (zeros, zeros)
        lstm = self.lstm
        weight = kept(self, "_cell_weight", (lstm.weight_ih_l0, lstm.weight_hh_l0),
                      lambda: torch.cat([lstm.weight_ih_l0, lstm.weight_hh_l0], 1).t())
        bias = kept(self, "_cell_bias", (lstm.bias_ih_l0, lstm.bias_hh_l0),
                    lambda: lstm.bias_ih_l0 + lstm.bias_hh_l0)
        x = torch.cat([self.rnn_input(z, action), state[0][0]], dim=-1)
        gates = torch.addmm(bias, x, weight)  # (B, 4 hidden): input, forget, cell, output
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.addcmul(f.sigmoid() * state[1][0], i.sigmoid(), g.tanh())
        h = o.sigmoid_() * c.tanh()
        return h, (h.unsqueeze(0), c.unsqueeze(0))

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        zeros = torch.zeros(1, batch, self.lstm.hidden_size, device=device,
                            dtype=self.lstm.weight_ih_l0.dtype)
        return zeros, zeros.clone()



class FRMDN(LSTMMemory):
    """The memory model: LSTM over [z_t, a_t], flow + tied-precision mixture on z_{t+1},
    reward and done heads; a :class:`worldmodels.memory.Memory` (``memory.kind=frmdn``).

    Shapes: z (B, T, d); actions (B, T, A) float or (B, T) int64 for Discrete(A);
    h (B, T, hidden); state a pair (h0, c0) of (1, B, hidden).
    """

    def __init__(
        self,
        *,
        z_dim: int,
        action_dim: int,
        discrete_actions: bool,
        hidden: int,
        mixtures: int,
        precision: Precision,
        overcomplete_m: int,
        flow: Flow,
        flow_layers: int,
        flow_hidden: int,
        flow_conditional: bool,
        reward_head: bool,
        done_head: bool,
    ):
        # every argument is required: the defaults live in config.MemoryConfig only
        # (build_frmdn), and config() saves them all for load_model
        super().__init__()
        if flow not in FLOWS:
            raise ValueError(f"flow must be one of {FLOWS}, not '{flow}'")
        self._config = dict(
            z_dim=z_dim, action_dim=action_dim, discrete_actions=discrete_actions,
            hidden=hidden, mixtures=mixtures, precision=precision,
            overcomplete_m=overcomplete_m, flow=flow, flow_layers=flow_layers,
            flow_hidden=flow_hidden, flow_conditional=flow_conditional,
            reward_head=reward_head, done_head=done_head,
        )
        self.z_dim, self.action_dim, self.discrete_actions = z_dim, action_dim, discrete_actions
        self.flow_conditional = flow_conditional and flow != "none"
        self.lstm = nn.LSTM(z_dim + action_dim, hidden, batch_first=True)
        self.mixture = TiedPrecisionMixture(hidden, z_dim, mixtures=mixtures, precision=precision,
                                            overcomplete_m=overcomplete_m)
        self.flow = None
        if flow != "none":
            import zuko

            self.flow = zuko.flows.MAF(
                features=z_dim,
                context=hidden if self.flow_conditional else 0,
                transforms=flow_layers,
                hidden_features=(flow_hidden, flow_hidden),
                passes=2 if flow == "coupling" and z_dim > 1 else None,
            ).transform
        self._make_heads(hidden, reward_head, done_head)

    # ------------------------------------------------------------------ density
    def _transform(self, h: Tensor):
        assert self.flow is not None
        return self.flow(h if self.flow_conditional else None)

    def flow_forward(self, y: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """u = f(y) and log|det df/dy|: y (..., d), h (..., hidden) -> (..., d), (...)."""
        if self.flow is None:
            return y, torch.zeros(y.shape[:-1], dtype=y.dtype, device=y.device)
        return self._transform(h).call_and_ladj(y)

    def flow_inverse(self, u: Tensor, h: Tensor) -> Tensor:
        """y = f^-1(u): u (..., d), h (..., hidden) -> (..., d).

        Without autograd (sampling, dreams) by :class:`worldmodels.flow_inverse.FlowInverse`,
        which computes each unit of the flow's MADEs once instead of running them
        ``passes`` times (z_dim times for a MAF); zuko's own inverse otherwise (the same
        values up to float rounding)."""
        if self.flow is None:
            return u
        fast = self._fast_inverse() if not torch.is_grad_enabled() else None
        if fast is None:
            return self._transform(h).inv(u)
        context = h if self.flow_conditional else None
        if context is not None and context.shape[:-1] != u.shape[:-1]:
            batch = torch.broadcast_shapes(u.shape[:-1], context.shape[:-1])
            u, context = u.expand(*batch, -1), context.expand(*batch, -1)
        flat = fast(u.reshape(-1, u.shape[-1]),
                    None if context is None else context.reshape(-1, context.shape[-1]))
        return flat.reshape(u.shape)

    def _fast_inverse(self) -> FlowInverse | None:
        """The flow's :class:`FlowInverse`, made on first use (None if the flow is one it
        does not handle, e.g. a single feature's)."""
        if "_flow_inverse" not in self.__dict__:
            try:
                self.__dict__["_flow_inverse"] = FlowInverse(self.flow)
            except TypeError:
                self.__dict__["_flow_inverse"] = None
        return self.__dict__["_flow_inverse"]

    def log_prob(self, y: Tensor, h: Tensor) -> Tensor:
        """log p(y | h) in nats: y (..., d), h (..., hidden) -> (...)."""
        u, ladj = self.flow_forward(y, h)
        return self.mixture.log_prob(u, self.mixture.params(h)) + ladj

    def sample(self, h: Tensor, tau: float = 1.0, generator: torch.Generator | None = None,
               noise: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """y ~ p(. | h) at temperature tau: h (..., hidden) -> (..., d); ``noise`` as in
        :meth:`TiedPrecisionMixture.sample`."""
        u = self.mixture.sample(self.mixture.params(h), tau, generator, noise)
        return self.flow_inverse(u, h)

    def predict(self, h: Tensor, tau: float = 1.0, generator: torch.Generator | None = None,
                noise: tuple[Tensor, Tensor] | None = None,
                ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """What a dream step needs of h (..., hidden), in one pass: (:meth:`sample`,
        :meth:`reward`, :meth:`done_logit`), the same values up to float rounding.

        The mixture logits and the reward and done heads are one small matrix product;
        of the mixture head's other rows only those of each row's drawn component are
        computed (the head's full output is K x (d + m) numbers a row, of which the
        sample reads d + m).
        """
        mix = self.mixture
        if not 0 < tau < math.inf:
            raise ValueError(f"temperature tau must be finite and > 0, got {tau}")
        batch = h.shape[:-1]
        flat = h.reshape(-1, h.shape[-1])
        per = 1 + mix.d + mix.m
        heads = [x for x in (self.reward_head, self.done_head) if x is not None]
        small = F.linear(flat,
                         torch.cat([mix.head.weight.view(mix.K, per, -1)[:, 0],
                                    *(x.weight for x in heads)]),
                         torch.cat([mix.head.bias.view(mix.K, per)[:, 0],
                                    *(x.bias for x in heads)]))
        if noise is not None:
            noise = (noise[0].reshape(-1), noise[1].reshape(-1, mix.d))
        k = mix.component(small[:, : mix.K].contiguous(), tau, generator, noise).squeeze(-1)
        mu, log_d = mix.chosen(flat, k)
        z = self.flow_inverse(mix.draw(mu, log_d, tau, generator, noise), flat)
        column = mix.K
        reward = done = None
        if self.reward_head is not None:
            reward, column = small[:, column].reshape(batch), column + 1
        if self.done_head is not None:
            done = small[:, column].reshape(batch)
        return z.reshape(*batch, mix.d), reward, done


def build_frmdn(cfg: ExperimentConfig, action_dim: int, discrete: bool) -> FRMDN:
    """``memory.kind=frmdn``: the FRMDN of ``cfg.memory`` (the RMDN with flow=none)."""
    m = cfg.memory
    return FRMDN(
        z_dim=cfg.vae.z_dim, action_dim=action_dim, discrete_actions=discrete,
        hidden=m.hidden, mixtures=m.mixtures, precision=m.precision,
        overcomplete_m=m.overcomplete_m, flow=m.flow, flow_layers=m.flow_layers,
        flow_hidden=m.flow_hidden, flow_conditional=m.flow_conditional,
        reward_head=m.reward_head, done_head=m.done_head,
    )


register_memory("frmdn", FRMDN, build_frmdn)
