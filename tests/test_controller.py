import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.vmc import VMCAgent
from tests.builders import lstm_features, make_controller, make_frmdn
from worldmodels.checkpoint import load_model, save_model
from worldmodels.vae import ConvVAE


def test_box_actions_are_squashed_into_bounds():
    torch.manual_seed(0)
    c = make_controller(4, 8, 3, low=[-1, 0, 0], high=[1, 1, 1])
    c.set_flat(torch.randn(c.num_parameters()) * 50)  # saturate
    with torch.no_grad():
        a = c(lstm_features(torch.randn(100, 4), torch.randn(100, 8)))
    space = gym.spaces.Box(np.array([-1, 0, 0], np.float32), np.ones(3, np.float32))
    assert all(space.contains(x) for x in a.numpy().astype(np.float32))
    assert a[:, 0].min() < -0.99 and a[:, 0].max() > 0.99


def test_clip_dims_map_the_brake_ha_s_way_and_survive_a_checkpoint(tmp_path):
    from worldmodels.config import ConfigError, ControllerConfig
    from worldmodels.controller import build_controller

    torch.manual_seed(1)
    space = gym.spaces.Box(np.array([-1, 0, 0], np.float32), np.ones(3, np.float32))
    clipped = build_controller(ControllerConfig(clip_dims=[2]), 12, space)
    affine = build_controller(ControllerConfig(), 12, space)
    affine.set_flat(clipped.get_flat())
    x = torch.randn(200, 12) * 3
    with torch.no_grad():
        a, b = clipped(x), affine(x)
        y = torch.tanh(clipped.net(x))
    assert torch.equal(a[:, :2], b[:, :2])  # the other dims as before
    assert torch.equal(a[:, 2], y[:, 2].clamp(0, 1))  # clip(tanh(y), 0, 1)
    off = y[:, 2] <= 0
    assert off.any() and (a[off, 2] == 0).all() and (b[off, 2] > 0).all()  # affine never 0
    # CMA-ES's batched path, and a saved C, act the same
    params = clipped.get_flat().repeat(200, 1)
    with torch.no_grad():
        assert torch.allclose(clipped.batched(params, x), a, atol=1e-6)
    save_model(tmp_path / "c.safetensors", clipped)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "c.safetensors")(x), a)
    with pytest.raises(ConfigError, match="controller.clip_dims"):
        build_controller(ControllerConfig(clip_dims=[3]), 12, space)
    with pytest.raises(ConfigError, match="controller.clip_dims"):
        build_controller(ControllerConfig(clip_dims=[0]), 12, gym.spaces.Discrete(3))


def test_discrete_actions_take_argmax_and_cell_is_read():
    torch.manual_seed(0)
    c = make_controller(4, 8, 3, discrete=True, use_cell=True)
    z, h, cell = torch.randn(50, 4), torch.randn(50, 8), torch.randn(50, 8)
    a = c(lstm_features(z, h, cell))
    assert a.dtype == torch.int64 and set(a.tolist()) <= {0, 1, 2}
    assert torch.equal(a, c.logits(lstm_features(z, h, cell)).argmax(-1))
    assert c.num_parameters() == (4 + 16) * 3 + 3
    with pytest.raises(RuntimeError):  # [z, h] is too short for a C that reads [z, c, h]
        c(lstm_features(z, h))


def test_ordinal_head_cuts_one_tanh_output_into_ordered_bins(tmp_path):
    torch.manual_seed(0)
    c = make_controller(4, 8, 3, discrete=True, use_cell=True, order=[2, 0, 1])
    assert c.num_parameters() == (4 + 16) + 1  # one output, as the paper's Doom C
    c.set_flat(torch.randn(c.num_parameters()))
    z, h, cell = torch.randn(400, 4), torch.randn(400, 8), torch.randn(400, 8)
    x = lstm_features(z, h, cell)
    y = torch.tanh(c.logits(x)[:, 0])
    a = c(x)
    # left of -1/3 plays order[0], right of 1/3 order[2], between them order[1]
    assert torch.equal(a[y < -1 / 3], torch.full_like(a[y < -1 / 3], 2))
    assert torch.equal(a[y > 1 / 3], torch.ones_like(a[y > 1 / 3]))
    middle = (y > -1 / 3 + 1e-6) & (y < 1 / 3 - 1e-6)
    assert middle.any() and (a[middle] == 0).all()
    # the batched path (CMA-ES in the dream) agrees with forward, row by row
    params = torch.stack([c.get_flat(), -c.get_flat()])
    rows = torch.tensor([0, 1]).repeat(200)
    batched = c.batched(params[rows], x)
    assert torch.equal(batched[rows == 0], a[rows == 0])
    # and the head survives a checkpoint
    save_model(tmp_path / "c.safetensors", c)
    assert torch.equal(load_model(tmp_path / "c.safetensors")(x), a)
    with pytest.raises(ValueError, match="each of 0..2 once"):
        make_controller(4, 8, 3, discrete=True, order=[0, 0, 1])


def test_ordinal_head_from_config_names_a_bad_order():
    from worldmodels.config import ConfigError, load_config
    from worldmodels.controller import build_controller

    space = gym.spaces.Discrete(3)
    cfg = load_config("doom_takecover", [], ["controller.discrete_head=ordinal"])
    assert build_controller(cfg.controller, cfg.vae.z_dim + 8, space).order.tolist() == [0, 1, 2]
    cfg = load_config("doom_takecover", [], ["controller.discrete_head=ordinal",
                                             "controller.action_order=[2, 0, 3]"])
    with pytest.raises(ConfigError, match="controller.action_order"):
        build_controller(cfg.controller, cfg.vae.z_dim + 8, space)
    with pytest.raises(ConfigError, match="controller.discrete_head"):
        load_config("doom_takecover", [], ["controller.discrete_head=softmax"])


def test_flat_round_trip_and_checkpoint():
    c = make_controller(4, 8, 2, low=[-2, -2], high=[2, 2], hidden=5)
    v = torch.arange(c.num_parameters(), dtype=torch.float32) / 100
    c.set_flat(v)
    assert torch.equal(c.get_flat(), v)
    with pytest.raises(ValueError, match="expected"):
        c.set_flat(torch.zeros(3))
    c.set_flat(v[None] * 2)  # one row of the right size, as a population's (was: torch's
    assert torch.equal(c.get_flat(), v * 2)  # shape error from vector_to_parameters)


def test_controller_checkpoint_reproduces_actions(tmp_path):
    torch.manual_seed(2)
    c = make_controller(4, 8, 3, low=[-1, 0, 0], high=[1, 1, 1])
    save_model(tmp_path / "c.safetensors", c)
    loaded = load_model(tmp_path / "c.safetensors")
    z, h = torch.randn(6, 4), torch.randn(6, 8)
    assert torch.equal(c(lstm_features(z, h)), loaded(lstm_features(z, h)))


def test_agent_carries_and_resets_state():
    torch.manual_seed(0)
    vae, memory = ConvVAE(z_dim=4), make_frmdn(z_dim=4, action_dim=3, hidden=8, mixtures=2)
    agent = VMCAgent(vae, memory, make_controller(4, 8, 3, low=[-1, 0, 0], high=[1, 1, 1]))
    frames = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    agent.reset(2)
    first = agent.act(frames)
    second = agent.act(frames)  # same frames, new memory state: (almost surely) new actions
    assert first.shape == (2, 3) and not np.allclose(first, second)
    agent.reset_where(np.array([True, False]))
    again = agent.act(frames)
    np.testing.assert_allclose(again[0], first[0], rtol=1e-6)  # env 0 starts over
    assert not np.allclose(again[1], first[1])
    # the agent's state equals M's sequence path over the same inputs
    agent.reset(2)
    zs, acts = [], []
    for _ in range(3):
        z, _ = vae.encode(torch.from_numpy(frames))
        acts.append(torch.from_numpy(agent.act(frames)))
        zs.append(z)
    h_seq, _ = memory(torch.stack(zs, 1), torch.stack(acts, 1))
    torch.testing.assert_close(agent.state[0][0], h_seq[:, -1])
    # one frame, not a batch: refused before M's state is touched (was: the state reset
    # to 64 rows, then torch's permute error)
    kept = [s.clone() for s in agent.state]
    with pytest.raises(ValueError, match=r"a batch.*\(64, 64, 3\).*frames\[None\]"):
        agent.act(frames[0])
    assert agent.batch == 2
    assert all(torch.equal(a, b) for a, b in zip(agent.state, kept, strict=True))


def test_saturated_actions_stay_inside_bounds_that_float32_cannot_add_up_to():
    """low + (high - low) can land an ulp past high in float32 (here 1.1538513 for
    1.1538512); the controller and a vote of controllers clamp to the bounds."""
    from worldmodels.controller_vote import VoteController

    low, high = [-1.1632245, -0.3], [1.1538512, 0.7]
    space = gym.spaces.Box(np.array(low, np.float32), np.array(high, np.float32))
    one = make_controller(4, 8, 2, low=low, high=high)
    one.set_flat(torch.full((one.num_parameters(),), 50.0))  # every output at +1
    vote = VoteController(one, 3)
    vote.set_flat(torch.full((vote.num_parameters(),), 50.0))
    x = lstm_features(torch.ones(5, 4), torch.ones(5, 8))
    with torch.no_grad():
        for policy in (one, vote):
            a = policy(x).numpy()
            assert (a == space.high).all() and all(space.contains(row) for row in a)


def test_set_flat_copies_the_vector():
    c = make_controller(4, 8, 3, discrete=True)
    vector = np.zeros(c.num_parameters(), np.float32)
    c.set_flat(vector)
    vector += 1.0  # the caller's array changes later
    assert float(c.get_flat().abs().max()) == 0.0


def test_action_order_without_the_ordinal_head_and_clip_dims_beyond_one_are_refused():
    from worldmodels.config import ConfigError, ControllerConfig
    from worldmodels.controller import build_controller

    with pytest.raises(ConfigError, match="set controller.discrete_head=ordinal too"):
        build_controller(ControllerConfig(action_order=[2, 0, 1]), 12, gym.spaces.Discrete(3))
    wide = gym.spaces.Box(np.array([-2, 0], np.float32), np.array([2, 3], np.float32))
    with pytest.raises(ConfigError, match=r"clip_dims': dim 0 .* beyond \[-1, 1\]"):
        build_controller(ControllerConfig(clip_dims=[0]), 12, wide)
    narrow = gym.spaces.Box(np.array([-1, 0], np.float32), np.array([1, 1], np.float32))
    build_controller(ControllerConfig(clip_dims=[1]), 12, narrow)
