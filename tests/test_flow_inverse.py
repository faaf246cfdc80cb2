"""The fast inverse of M's flow (worldmodels.flow_inverse) gives zuko's inverse, follows
the flow's weights, and serves FRMDN's no-grad paths; M's written-out LSTM step gives
nn.LSTM's."""

import itertools

import pytest
import torch
import zuko

from tests.builders import make_frmdn
from worldmodels.flow_inverse import FlowInverse

CONTEXT = 7


def make_flow(features: int, context: int, layers: int, passes: int | None, seed: int = 0,
              hidden: int = 16) -> torch.nn.Module:
    torch.manual_seed(seed)
    flow = zuko.flows.MAF(features=features, context=context, transforms=layers,
                          hidden_features=(hidden, hidden), passes=passes).transform.double()
    with torch.no_grad():  # away from the near-identity initialisation
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return flow


@pytest.mark.parametrize("features, context, layers, passes", itertools.product(
    (2, 5, 32), (0, CONTEXT), (1, 2, 3), (None, 2)))  # None: a MAF; 2: a coupling flow
def test_fast_inverse_is_zukos_inverse(features, context, layers, passes):
    flow = make_flow(features, context, layers, passes)
    u = torch.randn(9, features, dtype=torch.float64)
    c = torch.randn(9, context, dtype=torch.float64) if context else None
    with torch.no_grad():
        y = FlowInverse(flow)(u, c)
        torch.testing.assert_close(y, flow(c).inv(u), atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(flow(c)(y), u, atol=1e-10, rtol=1e-10)


def test_fast_inverse_in_float32_and_at_every_batch_size():
    flow = make_flow(32, CONTEXT, 2, None, hidden=64).float()
    fast = FlowInverse(flow)
    with torch.no_grad():
        for n in (1, 64, 3, 17, 2, 64, 1):  # more sizes than it keeps buffers for
            u, c = torch.randn(n, 32), torch.randn(n, CONTEXT)
            torch.testing.assert_close(fast(u, c), flow(c).inv(u), atol=1e-5, rtol=1e-5)


def test_fast_inverse_follows_the_flows_weights():
    flow = make_flow(4, CONTEXT, 2, None)
    fast = FlowInverse(flow)
    u, c = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, CONTEXT, dtype=torch.float64)
    with torch.no_grad():
        before = fast(u, c)
        for p in flow.parameters():  # an optimiser's in-place step
            p.add_(0.05)
        after = fast(u, c)
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, flow(c).inv(u))
        flow.load_state_dict(make_flow(4, CONTEXT, 2, None, seed=3).state_dict())
        torch.testing.assert_close(fast(u, c), flow(c).inv(u))
        flow.float()  # a move to another dtype
        torch.testing.assert_close(fast(u.float(), c.float()), flow(c.float()).inv(u.float()))


def test_fast_inverse_refuses_what_it_does_not_handle():
    with pytest.raises(TypeError):  # one feature: zuko makes an element-wise transform
        FlowInverse(zuko.flows.MAF(features=1, context=3, transforms=2).transform)
    with pytest.raises(TypeError):  # a spline univariate, not an affine one
        FlowInverse(zuko.flows.NSF(features=3, context=0, transforms=1).transform)
    with pytest.raises(ValueError, match="conditional"):
        FlowInverse(make_flow(3, CONTEXT, 1, None))(torch.randn(2, 3, dtype=torch.float64),
                                                    None)


@pytest.mark.parametrize("flow, conditional, d", [
    ("maf", True, 4), ("maf", False, 4), ("coupling", True, 4), ("coupling", False, 5),
    ("maf", True, 1)])  # d = 1: zuko's own inverse
def test_frmdn_samples_through_the_fast_inverse(flow, conditional, d):
    torch.manual_seed(0)
    model = make_frmdn(z_dim=d, action_dim=2, hidden=8, mixtures=3, precision="square",
                       flow=flow, flow_layers=2, flow_hidden=16,
                       flow_conditional=conditional).double().eval()
    with torch.no_grad():
        for p in model.flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    h = torch.tanh(torch.randn(3, 4, 8, dtype=torch.float64))
    u = torch.randn(3, 4, d, dtype=torch.float64)
    zukos = model.flow_inverse(u, h)  # autograd on: zuko's inverse
    with torch.no_grad():
        fast = model.flow_inverse(u, h)
        torch.testing.assert_close(fast, zukos)
        torch.testing.assert_close(model.flow_forward(fast, h)[0], u)
        if conditional:  # u broadcast against h, as zuko's inverse does
            torch.testing.assert_close(model.flow_inverse(u[0, :1], h[0]),
                                       model.flow_inverse(u[0, :1].expand(4, d), h[0]))
    assert (model.__dict__["_flow_inverse"] is None) == (d == 1)


@pytest.mark.parametrize("discrete", [False, True])
def test_no_grad_lstm_step_is_nn_lstms(discrete):
    torch.manual_seed(0)
    model = make_frmdn(z_dim=4, action_dim=3, discrete_actions=discrete, hidden=16, mixtures=2,
                       precision="square", flow="maf")
    z = torch.randn(5, 6, 4)
    a = torch.randint(0, 3, (5, 6)) if discrete else torch.randn(5, 6, 3)
    state_ref = state = None
    for t in range(6):
        h_ref, state_ref = model.step(z[:, t], a[:, t], state_ref)  # nn.LSTM
        with torch.no_grad():
            h, state = model.step(z[:, t], a[:, t], state)
        torch.testing.assert_close(h, h_ref.detach())
        for s, s_ref in zip(state, state_ref, strict=True):
            assert s.shape == s_ref.shape
            torch.testing.assert_close(s, s_ref.detach())
    with torch.no_grad():  # the stacked weights follow an in-place change
        model.lstm.weight_hh_l0.mul_(0.5)
        model.lstm.bias_ih_l0.add_(0.1)
        h, _ = model.step(z[:, 0], a[:, 0], state)
    h_ref, _ = model.step(z[:, 0], a[:, 0], state)
    torch.testing.assert_close(h, h_ref.detach())


def test_inference_mode_then_no_grad_then_autograd_give_the_same_values():
    """The kept caches (LSTM weights, U's inverse, the flow inverse's buffers) made under
    torch.inference_mode are not reused outside it, where writing into or differentiating
    through an inference tensor fails."""
    torch.manual_seed(0)
    model = make_frmdn(z_dim=4, action_dim=2, hidden=8, mixtures=3, precision="square",
                       flow="maf", flow_layers=2, flow_hidden=16).eval()
    h, u = torch.tanh(torch.randn(5, 8)), torch.randn(5, 4)
    z, a = torch.randn(5, 4), torch.randn(5, 2)
    with torch.inference_mode():
        inferred = model.flow_inverse(u, h).clone()
        stepped = model.step(z, a, None)[0].clone()
    with torch.no_grad():
        torch.testing.assert_close(model.flow_inverse(u, h), inferred)
        torch.testing.assert_close(model.step(z, a, None)[0], stepped)
    y = model.flow_inverse(u, h)  # autograd on: zuko's inverse
    torch.testing.assert_close(y.detach(), inferred)
    model.log_prob(y, h).sum().backward()
