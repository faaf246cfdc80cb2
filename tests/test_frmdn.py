"""The FRMDN's density is a density: it integrates to one, matches a brute-force
computation, inverts, samples with the right moments, and steps like it runs sequences."""

import itertools
import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from tests.builders import make_frmdn
from worldmodels.checkpoint import load_model, save_model
from worldmodels.frmdn import PRECISIONS

FLOWS = [("maf", False), ("maf", True), ("coupling", False), ("coupling", True)]
CASES = list(itertools.product((1, 2), PRECISIONS, FLOWS))
HIDDEN = 8


def make_model(d, precision, flow="maf", conditional=False, seed=0, mixtures=3):
    torch.manual_seed(seed)
    model = make_frmdn(z_dim=d, action_dim=2, hidden=HIDDEN, mixtures=mixtures, precision=precision,
                  overcomplete_m=d + 2, flow=flow, flow_layers=2, flow_hidden=16,
                  flow_conditional=conditional).double()
    with torch.no_grad():  # move away from the identity-like initialisation
        for p in model.mixture.parameters():
            p.add_(0.3 * torch.randn_like(p))
        if model.flow is not None:
            for p in model.flow.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def fixed_h(seed=1):
    return torch.tanh(torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed))).double()


def brute_log_prob(model, y, h):
    """MultivariateNormal with precision U D_k U^T, plus the autograd Jacobian of f."""
    p = model.mixture.params(h)
    U = model.mixture.u_matrix()
    out = []
    for yi in y:
        if model.flow is None:
            u, logdet = yi, torch.zeros((), dtype=y.dtype)
        else:
            f = lambda v: model.flow_forward(v.unsqueeze(0), h.unsqueeze(0))[0].squeeze(0)  # noqa: E731
            u = f(yi)
            logdet = torch.linalg.slogdet(torch.autograd.functional.jacobian(f, yi))[1]
        comps = []
        for k in range(model.mixture.K):
            D = torch.exp(p.log_d[k])
            if model.mixture.precision == "diag":
                lam = torch.diag(D)
            elif model.mixture.precision == "square":
                lam = U @ torch.diag(D) @ U.T
            else:  # sum_j D_kj u_j u_j^T
                lam = sum(D[j] * torch.outer(U[:, j], U[:, j]) for j in range(U.shape[1]))
            comps.append(MultivariateNormal(p.mu[k], precision_matrix=lam).log_prob(u))
        log_alpha = torch.log_softmax(p.logits, -1)
        out.append(torch.logsumexp(log_alpha + torch.stack(comps), 0) + logdet)
    return torch.stack(out)


@pytest.mark.parametrize("d, precision, flow", CASES)
def test_log_prob_matches_brute_force(d, precision, flow):
    model = make_model(d, precision, *flow)
    h = fixed_h()
    y = torch.randn(12, d, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    fast = model.log_prob(y, h.expand(12, HIDDEN))
    torch.testing.assert_close(fast, brute_log_prob(model, y, h), atol=1e-4, rtol=0)


def sample_bounds(model, h, d):
    """A box that holds the density: the range of 20,000 samples, widened 60% each side."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        s = model.sample(h.expand(20_000, HIDDEN), generator=gen)
    lo, hi = s.min(0).values, s.max(0).values
    return lo - 0.6 * (hi - lo), hi + 0.6 * (hi - lo)


@pytest.mark.parametrize("d, precision, flow", CASES)
def test_density_integrates_to_one(d, precision, flow):
    model = make_model(d, precision, *flow)
    h = fixed_h()
    lo, hi = sample_bounds(model, h, d)
    with torch.no_grad():
        if d == 1:
            grid = torch.linspace(lo[0], hi[0], 20001, dtype=torch.float64)
            dens = model.log_prob(grid[:, None], h.expand(len(grid), HIDDEN)).exp()
            total = torch.trapezoid(dens, grid)
        else:
            n = 1001
            ax0 = torch.linspace(lo[0], hi[0], n, dtype=torch.float64)
            ax1 = torch.linspace(lo[1], hi[1], n, dtype=torch.float64)
            yy = torch.cartesian_prod(ax0, ax1)
            dens = torch.cat([model.log_prob(c, h.expand(len(c), HIDDEN)).exp()
                              for c in yy.split(200_000)]).view(n, n)
            total = torch.trapezoid(torch.trapezoid(dens, ax1, dim=1), ax0)
    assert abs(total.item() - 1.0) < 0.01, total.item()


@pytest.mark.parametrize("flow", FLOWS)
def test_flow_inverts(flow):
    model = make_model(3, "square", *flow)
    h = torch.tanh(torch.randn(4, 5, HIDDEN, dtype=torch.float64))
    y = torch.randn(4, 5, 3, dtype=torch.float64)
    u, _ = model.flow_forward(y, h)
    assert not torch.allclose(u, y)
    torch.testing.assert_close(model.flow_inverse(u, h), y, atol=1e-8, rtol=0)
    with torch.no_grad():  # the fast inverse, used where autograd is off (dreams)
        torch.testing.assert_close(model.flow_inverse(u, h), y, atol=1e-8, rtol=0)


def mixture_moments(model, h):
    p = model.mixture.params(h)
    alpha = torch.softmax(p.logits, -1)
    cov_k = torch.linalg.inv(model.mixture.precision_matrices(p))
    mean = (alpha[:, None] * p.mu).sum(0)
    second = (alpha[:, None, None] * (cov_k + p.mu[:, :, None] * p.mu[:, None, :])).sum(0)
    return mean, second - torch.outer(mean, mean)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_temperature_one_samples_match_moments(precision):
    model = make_model(2, precision, flow="none")
    h = fixed_h()
    n = 200_000
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        samples = model.sample(h.expand(n, HIDDEN), tau=1.0, generator=gen)
        mean, cov = mixture_moments(model, h)
    scale = cov.diagonal().sqrt()
    assert ((samples.mean(0) - mean).abs() / scale).max() < 0.02
    assert ((torch.cov(samples.T) - cov).abs() / torch.outer(scale, scale)).max() < 0.03


@pytest.mark.parametrize("precision", PRECISIONS)
def test_temperature_scales_covariance(precision):
    model = make_model(2, precision, flow="none", mixtures=1)
    h = fixed_h()
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        _, cov = mixture_moments(model, h)
        hot = model.sample(h.expand(100_000, HIDDEN), tau=2.0, generator=gen)
    torch.testing.assert_close(torch.cov(hot.T), 2.0 * cov, atol=0.05 * cov.abs().max(), rtol=0.04)


@pytest.mark.parametrize("path", ["multinomial", "noise"])
@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_components_are_drawn_with_tempered_weights(path, tau):
    """Both ways of drawing k follow softmax(logits / tau), within 4.5 standard errors."""
    mixture = make_model(2, "diag", flow="none").mixture
    logits = torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64)
    n = 100_000
    batch = logits.expand(n, 3)
    if path == "multinomial":
        k = mixture.component(batch, tau, torch.Generator().manual_seed(0))
    else:
        u = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        k = mixture.component(batch, tau, noise=(u, torch.zeros(n, 2)))
    freq = torch.bincount(k.view(-1), minlength=3).double() / n
    expected = torch.softmax(logits / tau, -1)
    se = (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() / se).max() < 4.5, (freq, expected)
    if tau != 1.0:  # and not the untempered weights
        untempered = torch.softmax(logits, -1)
        assert ((freq - untempered).abs() / se).max() > 10


def test_noise_path_never_draws_a_zero_weight_component():
    mixture = make_model(2, "diag", flow="none").mixture
    below_one = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).item()
    u = torch.tensor([0.0, 0.5, below_one])
    for logits in ([-200.0, 0.0, 0.0], [0.0, 0.0, -200.0], [0.0, -200.0, 0.0]):
        batch = torch.tensor(logits).expand(3, 3)
        k = mixture.component(batch, 1.0, noise=(u, torch.zeros(3, 2))).view(-1)
        assert all(logits[i] > -100 for i in k.tolist()), (logits, k)


@pytest.mark.parametrize("flow", [("maf", True), ("coupling", False)])
def test_samples_through_a_flow_match_the_density_moments(flow):
    """Samples (drawn in u and sent through f^-1) have the mean and E[y0 y1] of the
    density they are scored by (both integrated on a grid), within 5 standard errors."""
    model = make_model(2, "square", *flow)
    h = fixed_h()
    n = 40_000
    with torch.no_grad():
        s = model.sample(h.expand(n, HIDDEN), generator=torch.Generator().manual_seed(6))
        lo, hi = sample_bounds(model, h, 2)
        ax0 = torch.linspace(lo[0], hi[0], 601, dtype=torch.float64)
        ax1 = torch.linspace(lo[1], hi[1], 601, dtype=torch.float64)
        yy = torch.cartesian_prod(ax0, ax1)
        dens = model.log_prob(yy, h.expand(len(yy), HIDDEN)).exp().view(601, 601)

    def integral(values):
        return torch.trapezoid(torch.trapezoid(dens * values.view(601, 601), ax1, dim=1), ax0)

    for values, drawn in ((yy[:, 0], s[:, 0]), (yy[:, 1], s[:, 1]),
                          (yy[:, 0] * yy[:, 1], s[:, 0] * s[:, 1])):
        se = drawn.std() / math.sqrt(n)
        assert abs(integral(values) - drawn.mean()) < 5 * se


@pytest.mark.parametrize("discrete", [False, True])
def test_one_step_path_gives_sequence_outputs(discrete):
    torch.manual_seed(0)
    model = make_frmdn(z_dim=4, action_dim=3, discrete_actions=discrete, hidden=16, mixtures=2,
                  precision="square", flow="maf", flow_conditional=True).double()
    z = torch.randn(2, 7, 4, dtype=torch.float64)
    a = torch.randint(0, 3, (2, 7)) if discrete else torch.randn(2, 7, 3, dtype=torch.float64)
    h_seq, (h_n, c_n) = model(z, a)
    state = None
    steps = []
    for t in range(7):
        h_t, state = model.step(z[:, t], a[:, t], state)
        steps.append(h_t)
    h_step = torch.stack(steps, 1)
    torch.testing.assert_close(h_step, h_seq, atol=1e-12, rtol=0)
    torch.testing.assert_close(state[0], h_n, atol=1e-12, rtol=0)
    y = torch.randn(2, 4, dtype=torch.float64)
    torch.testing.assert_close(model.log_prob(y, h_step[:, -1]), model.log_prob(y, h_seq[:, -1]))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_checkpoint_reproduces_density(tmp_path, precision):
    model = make_model(3, precision, "maf", True).float()
    save_model(tmp_path / "m.safetensors", model)
    loaded = load_model(tmp_path / "m.safetensors", expect={"z_dim": 3}).eval()
    z, a = torch.randn(2, 5, 3), torch.randn(2, 5, 2)
    with torch.no_grad():
        h1, _ = model(z, a)
        h2, _ = loaded(z, a)
        assert torch.equal(h1, h2)
        assert torch.equal(model.log_prob(z, h1), loaded.log_prob(z, h2))


def test_loss_is_finite_masked_and_trainable():
    torch.manual_seed(0)
    model = make_frmdn(z_dim=4, action_dim=3, hidden=16, mixtures=2, precision="overcomplete")
    z, a = torch.randn(3, 9, 4), torch.randn(3, 8, 3)
    reward, done = torch.randn(3, 8), torch.zeros(3, 8)
    mask = torch.ones(3, 8)
    mask[0, 5:] = 0
    losses = model.loss(z, a, reward, done, mask)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in model.parameters() if p.requires_grad)
    # padding does not count: changing masked targets leaves the loss unchanged
    z2 = z.clone()
    z2[0, 7:] += 100.0
    assert torch.allclose(model.loss(z2, a, reward, done, mask)["nll"], losses["nll"])



def overcomplete_extremes(seed, mixed):
    """d = 2, default m = 6 (r = 4 > d), U2 ~ N(0, 1), log D at its bounds -8 / +8."""
    from worldmodels.frmdn import TiedPrecisionMixture

    gen = torch.Generator().manual_seed(seed)
    mix = TiedPrecisionMixture(4, 2, mixtures=5, precision="overcomplete", overcomplete_m=0)
    with torch.no_grad():
        mix.u_extra.copy_(torch.randn(mix.u_extra.shape, generator=gen))
    if mixed:
        log_d = torch.where(torch.rand(5, mix.m, generator=gen) < 0.5, -8.0, 8.0)
    else:
        log_d = torch.cat([torch.full((5, 2), -8.0), torch.full((5, mix.m - 2), 8.0)], -1)
    return mix, log_d, torch.randn(3, 2, generator=gen)


@pytest.mark.parametrize("mixed", [False, True])
def test_overcomplete_log_prob_stable_in_float32(mixed):
    """float32 I + W^T W used to lose definiteness here (LinAlgError in ~1 draw of 3) or
    give a log det off by up to a nat."""
    from worldmodels.frmdn import MixtureParams

    for seed in range(40):
        mix, log_d, u = overcomplete_extremes(seed, mixed)
        mu = torch.zeros(5, 2)
        p = MixtureParams(torch.zeros(5), mu, log_d)
        fast = mix.component_log_prob(u, p)  # float32 throughout from the caller's side
        assert fast.dtype == torch.float32
        lam = mix.double().precision_matrices(  # brute force in float64: (5, 2, 2)
            MixtureParams(None, None, log_d.double()))
        diff = u.double().unsqueeze(-2) - mu.double()  # (3, 5, 2)
        quad = torch.einsum("nki,kij,nkj->nk", diff, lam, diff)
        ref = 0.5 * (torch.logdet(lam) - quad - 2 * math.log(2 * math.pi))
        torch.testing.assert_close(fast.double(), ref, rtol=1e-5, atol=1e-4)


def test_overcomplete_log_det_gradient_matches_float64():
    """The float64 factorisation inside a float32 model passes correct gradients back."""
    import copy

    from worldmodels.frmdn import MixtureParams

    mix, log_d, u = overcomplete_extremes(3, mixed=True)
    mix64 = copy.deepcopy(mix).double()  # same parameters: brute force with torch.logdet
    log_d = (0.5 * log_d).requires_grad_()  # inside the bounds, where gradients are alive
    mu = torch.zeros(5, 2)
    mix.component_log_prob(u, MixtureParams(torch.zeros(5), mu, log_d)).sum().backward()
    log_d64 = log_d.detach().double().requires_grad_()
    lam = mix64.precision_matrices(MixtureParams(None, None, log_d64))
    diff = u.double().unsqueeze(-2)
    quad = torch.einsum("nki,kij,nkj->nk", diff, lam, diff)
    (0.5 * (torch.logdet(lam) - quad)).sum().backward()
    torch.testing.assert_close(log_d.grad.double(), log_d64.grad, rtol=1e-4, atol=1e-3)
    for name, param in mix.named_parameters():
        if name.startswith(("lu_", "u_extra")):
            ref = dict(mix64.named_parameters())[name].grad
            torch.testing.assert_close(param.grad.double(), ref, rtol=1e-4, atol=1e-3)


def test_overcomplete_log_prob_gradcheck():
    """Finite differences agree with the hand-written backward of the r x r log det."""
    from worldmodels.frmdn import MixtureParams

    mix, log_d, u = overcomplete_extremes(5, mixed=True)
    mix = mix.double()
    log_d = (0.3 * log_d).double().requires_grad_()
    mu = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    u = u.double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda ld, m, x: mix.component_log_prob(x, MixtureParams(torch.zeros(5), m, ld)),
        (log_d, mu, u))


@pytest.mark.parametrize("d, precision, flow", list(itertools.product(
    (1, 3), PRECISIONS, [("none", False), ("coupling", True)])))
def test_predict_is_sample_reward_and_done_in_one_pass(d, precision, flow):
    # a dream step's path (Dream.step): the logits and the reward and done heads in one
    # product, the mixture head's rows of the drawn component only
    model = make_model(d, precision, flow[0], flow[1], mixtures=4)
    model.reward_head = torch.nn.Linear(HIDDEN, 1).double()
    model.done_head = torch.nn.Linear(HIDDEN, 1).double()
    h = torch.tanh(torch.randn(2, 50, HIDDEN, generator=torch.Generator().manual_seed(2)))
    h = h.double()
    g = torch.Generator().manual_seed(3)
    noise = (torch.rand(2, 50, generator=g).double(), torch.randn(2, 50, d, generator=g).double())
    z, reward, done = model.predict(h, 0.8, noise=noise)
    torch.testing.assert_close(z, model.sample(h, 0.8, noise=noise))
    torch.testing.assert_close(reward, model.reward(h))
    torch.testing.assert_close(done, model.done_logit(h))
    a = model.predict(h, 1.2, generator=torch.Generator().manual_seed(4))[0]
    b = model.sample(h, 1.2, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    model.reward_head = model.done_head = None
    assert model.predict(h, 1.0, noise=noise)[1:] == (None, None)


def test_square_solve_without_autograd_uses_a_kept_inverse_that_follows_the_weights():
    model = make_model(4, "square")
    mix = model.mixture
    v = torch.randn(30, 4, dtype=torch.float64)
    solved = mix.solve_square_transpose(v)  # autograd on: the triangular solves
    torch.testing.assert_close(mix.square_part().T @ solved.T, v.T)
    with torch.no_grad():
        torch.testing.assert_close(mix.solve_square_transpose(v), solved)
        mix.lu_upper.add_(0.2)  # an optimiser's in-place step: the inverse is redone
        mix.lu_log_diag.mul_(0.5)
        torch.testing.assert_close(mix.square_part().T @ mix.solve_square_transpose(v).T, v.T)
    mix.load_state_dict({k: torch.zeros_like(t) for k, t in mix.state_dict().items()})
    with torch.no_grad():  # U1 = I now
        torch.testing.assert_close(mix.solve_square_transpose(v), v)
