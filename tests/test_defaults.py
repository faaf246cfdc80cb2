"""One source of defaults: the config dataclasses. Model constructors take every value
the config holds, and the memory comparison's variants set every key they vary."""

from __future__ import annotations

import dataclasses
import inspect
import itertools

import gymnasium as gym
import pytest
import torch

from worldmodels.checkpoint import load_model, save_model
from worldmodels.config import ControllerConfig, MemoryConfig, VAEConfig, load_config
from worldmodels.controller import Controller, build_controller
from worldmodels.frmdn import FRMDN, TiedPrecisionMixture
from worldmodels.frmdn_training import build_memory
from worldmodels.gru_mdn import GRUMDN
from worldmodels.memory_compare import VARIANTS, VARIED, variant_config
from worldmodels.vae import ConvVAE

MIRRORS = [(FRMDN, MemoryConfig), (TiedPrecisionMixture, MemoryConfig), (ConvVAE, VAEConfig),
           (Controller, ControllerConfig), (GRUMDN, MemoryConfig)]


@pytest.mark.parametrize("model, config", MIRRORS, ids=[m.__name__ for m, _ in MIRRORS])
def test_constructors_have_no_default_for_a_config_key(model, config):
    keys = {f.name for f in dataclasses.fields(config)}
    params = inspect.signature(model.__init__).parameters
    mirrored = [p for p in params.values() if p.name in keys]
    assert mirrored
    for p in mirrored:
        assert p.default is inspect.Parameter.empty, f"{model.__name__}({p.name}=...) default"
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, p.name


def test_frmdn_takes_every_argument_from_the_config():
    params = inspect.signature(FRMDN.__init__).parameters
    assert all(p.default is inspect.Parameter.empty for n, p in params.items() if n != "self")
    cfg = load_config("carracing", ["quick"], ["vae.z_dim=4", "memory.hidden=8"])
    model = build_memory(cfg, 3, False)
    saved = model.config()
    assert set(saved) == set(params) - {"self"}
    for key, value in saved.items():
        if hasattr(cfg.memory, key):
            assert value == getattr(cfg.memory, key), key
    assert saved["flow_conditional"] is MemoryConfig().flow_conditional is True


def test_checkpoints_hold_every_constructor_argument(tmp_path):
    cfg = load_config("doom_takecover", [], ["vae.z_dim=4", "memory.hidden=8",
                                              "controller.discrete_head=ordinal"])
    memory = build_memory(cfg, 3, True)
    gru, mdn = (build_memory(dataclasses.replace(cfg, memory=dataclasses.replace(
        cfg.memory, kind=kind)), 3, True) for kind in ("gru_mdn", "mdn_rnn"))
    features = memory.feature_size(cfg.controller.use_cell)
    controllers = [build_controller(cfg.controller, features, gym.spaces.Discrete(3)),
                   build_controller(dataclasses.replace(cfg.controller, discrete_head="argmax"),
                                    features, gym.spaces.Box(-1, 1, (2,)))]
    for i, model in enumerate([ConvVAE(z_dim=4), memory, gru, mdn, *controllers]):
        params = set(inspect.signature(type(model).__init__).parameters) - {"self"}
        assert set(model.config()) == params, type(model).__name__
        save_model(tmp_path / f"{i}.safetensors", model)
        assert load_model(tmp_path / f"{i}.safetensors").config() == model.config()


def test_every_variant_sets_every_varied_key():
    for name, values in VARIANTS.items():
        assert set(values) == set(VARIED), name


def _signature(model: torch.nn.Module) -> tuple:
    return tuple(sorted((n, tuple(p.shape)) for n, p in model.named_parameters()))


@pytest.mark.parametrize("base", [
    [],
    # the variants must not follow the base config's choices
    ["memory.flow_conditional=false", "memory.precision=diag", "memory.flow=coupling"],
    ["memory.flow_conditional=true", "memory.precision=overcomplete", "memory.flow=none"],
])
def test_variants_build_pairwise_different_models(base):
    cfg = load_config("carracing", ["quick"], ["vae.z_dim=4", "memory.hidden=8", *base])
    built = {}
    for name, values in VARIANTS.items():
        vcfg = variant_config(cfg, name)
        for key, value in values.items():
            assert getattr(vcfg.memory, key) == value
        built[name] = build_memory(vcfg, 3, False)
    y, h = torch.randn(6, 4), torch.randn(6, 8)
    for (a, ma), (b, mb) in itertools.combinations(built.items(), 2):
        assert ma.config() != mb.config(), (a, b)
        if _signature(ma) == _signature(mb):
            # MAF and coupling flows have the same parameter shapes: with the same weights
            # they must still be different densities
            with torch.no_grad():  # (a new flow is the identity: move it off first)
                for p in ma.parameters():
                    p.add_(0.1 * torch.randn_like(p))
                for pa, pb in zip(ma.parameters(), mb.parameters(), strict=True):
                    pb.copy_(pa)  # parameters only: the flows' masks are their own
                assert not torch.allclose(ma.log_prob(y, h), mb.log_prob(y, h)), (a, b)
