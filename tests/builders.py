"""Small models for tests, built as the library builds them: from the config dataclasses,
so a test model has the defaults a run would have."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor

from worldmodels.checkpoint import load_model, read_header, save_model
from worldmodels.config import ControllerConfig, ExperimentConfig
from worldmodels.controller import Controller
from worldmodels.frmdn import FRMDN
from worldmodels.frmdn_training import build_memory


def make_frmdn(z_dim: int, action_dim: int, discrete_actions: bool = False,
               **memory) -> FRMDN:
    """``build_memory`` on MemoryConfig's defaults with ``memory`` (its keys) overriding."""
    cfg = ExperimentConfig()
    cfg.vae.z_dim = z_dim
    cfg.memory = dataclasses.replace(cfg.memory, **memory)
    return build_memory(cfg, action_dim, discrete_actions)


def make_controller(z_dim: int, h_dim: int, action_dim: int, *, discrete: bool = False,
                    low: list[float] | None = None, high: list[float] | None = None,
                    order: list[int] | None = None, **controller) -> Controller:
    """A Controller with ControllerConfig's ``hidden`` and ``use_cell`` (``controller``
    overriding them) that reads an LSTM memory's features, [z, h] or [z, c, h] (see
    :func:`lstm_features`); ``order`` None is the argmax head."""
    c = dataclasses.replace(ControllerConfig(), **controller)
    features = z_dim + h_dim * (2 if c.use_cell else 1)
    return Controller(features=features, action_dim=action_dim, discrete=discrete,
                      low=low, high=high, hidden=c.hidden, use_cell=c.use_cell, order=order,
                      clip_dims=list(c.clip_dims))


def lstm_features(z: Tensor, h: Tensor, c: Tensor | None = None) -> Tensor:
    """The features an LSTM memory (FRMDN) gives C: [z, h], or [z, c, h] given c."""
    return torch.cat([z, h] if c is None else [z, c, h], dim=-1)


def v_trained_again(run: Path) -> None:
    """The run's V weights moved (as ``train_vae.py vae.epochs=<more>`` moves them), its M
    and C not."""
    path = run / "vae" / "model.safetensors"
    model = load_model(path)
    with torch.no_grad():
        next(iter(model.parameters())).add_(0.01)
    save_model(path, model, meta=read_header(path)["meta"])
