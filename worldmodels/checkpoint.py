"""Checkpoints without pickle: safetensors weights carrying the model config.

``save_model(path, model)`` writes ``path`` (``.safetensors``) whose header metadata
holds ``{"kind": "ConvVAE", "config": {...}, "meta": {...}}`` — weights and config in
one atomically renamed file, so a kill can never pair one epoch's weights with another
epoch's config — plus ``path.json``, a readable copy of that header. ``load_model(path)``
rebuilds the model from the header and loads the weights strictly, raising
:class:`CheckpointError` that names the file and key on any mismatch. Optimizer and
loop state go in a separate ``torch.save`` file read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from worldmodels.errors import InputError

#: model kind -> constructor taking the JSON config as keyword arguments
MODEL_KINDS: dict[str, Callable[..., nn.Module]] = {}


class CheckpointError(InputError, ValueError):
    """A checkpoint is missing, corrupt, or does not match the model it is loaded into."""


def register_model(kind: str, builder: Callable[..., nn.Module]) -> None:
    MODEL_KINDS[kind] = builder


def _sidecar(path: Path) -> Path:
    return Path(str(path) + ".json")


def _atomic_write_bytes(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_model(path: Path, model: nn.Module, meta: dict[str, Any] | None = None) -> None:
    """Write weights and sidecar atomically; the model must have a ``config()`` method."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = {"kind": type(model).__name__, "config": model.config(), "meta": meta or {}}
    text = json.dumps(header)
    _atomic_write_bytes(path, lambda p: save_file(tensors, str(p), metadata={HEADER_KEY: text}))
    _atomic_write_bytes(_sidecar(path), lambda p: p.write_text(json.dumps(header, indent=2)))


HEADER_KEY = "worldmodels"


def read_header(path: Path) -> dict[str, Any]:
    """``{"kind", "config", "meta"}`` from the safetensors header (the JSON copy if absent)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            text = (fh.metadata() or {}).get(HEADER_KEY)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable weights ({err})") from err
    source = path
    if text is None:
        source = _sidecar(path)
        if not source.exists():
            raise CheckpointError(f"{path}: no model config in its header and no {source.name}")
        text = source.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{source}: model config is not JSON: {err}") from err
    if not isinstance(data, dict) or "kind" not in data or "config" not in data:
        raise CheckpointError(f"{source}: model config needs 'kind' and 'config'")
    return data


def load_weights(path: Path, model: nn.Module) -> None:
    """Load a safetensors file into ``model``; every key and shape must match."""
    path = Path(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable weights ({err})") from err
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: keys differ: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"{path}: '{key}' has shape {tuple(value.shape)}, "
                f"the model expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(tensors)


def load_model(path: Path, expect: dict[str, Any] | None = None,
               map_location: str | torch.device = "cpu",
               kinds: tuple[str, ...] | None = None) -> nn.Module:
    """Rebuild a model from its sidecar and load its weights.

    ``expect``: config values the caller needs (e.g. ``{"z_dim": 32}``); a checkpoint
    made with other values is refused with an error naming the key. ``kinds``: the
    model kinds that belong here (an M's checkpoint where V belongs is refused).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    side = read_header(path)
    kind = side["kind"]
    if kinds is not None and kind not in kinds:
        raise CheckpointError(f"{path}: holds a {kind}, but a {' or '.join(kinds)} belongs here")
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"{path}: unknown model kind '{kind}' (known: {sorted(MODEL_KINDS)})")
    for key, value in (expect or {}).items():
        if side["config"].get(key) != value:
            raise CheckpointError(
                f"{path}: made with {key}={side['config'].get(key)!r}, "
                f"but the config asks for {key}={value!r}"
            )
    model = MODEL_KINDS[kind](**side["config"])
    load_weights(path, model)
    return model.to(map_location)


def file_digest(path: Path) -> str:
    """Short SHA-256 of a file: identifies which weights made an artefact."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Training state (optimizer state, counters): plain tensors and numbers only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(path, lambda p: torch.save(state, p))


def load_state(path: Path) -> dict[str, Any]:
    """Read training state with ``weights_only=True``: a pickled object is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(
            f"{path}: unreadable training state ({type(err).__name__}: {err})"
        ) from err


def resume_training(
    model_path: Path, state_path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
    expect: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Load the last checkpoint into ``model`` (and ``optimizer``).

    Returns (finished epochs, training state dict; empty if unusable). The epoch comes
    from the weights' own header. Weights are written before the training state, so a
    kill between the two leaves newer weights beside older optimizer moments: then Adam
    restarts its moments rather than pairing them with the wrong weights.
    """
    model_path = Path(model_path)
    if not model_path.exists():
        return 0, {}
    loaded = load_model(model_path, expect=expect)
    model.load_state_dict(loaded.state_dict())
    epoch = int(read_header(model_path)["meta"].get("epoch", 0))
    if Path(state_path).exists():
        state = load_state(state_path)
        if int(state.get("epoch", -1)) == epoch:
            optimizer.load_state_dict(state["optimizer"])
            return epoch, state
        print(f"{state_path}: from epoch {state.get('epoch')}, weights from epoch {epoch}; "
              "optimizer state reset")
    return epoch, {}


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(path, lambda p: p.write_bytes(data))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(path, lambda p: p.write_text(text))


def read_json(path: Path, default: Any) -> Any:
    """A JSON file written by :func:`write_json_atomic`; ``default`` if it is absent."""
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not JSON ({err}); delete it to start its log anew") from err
