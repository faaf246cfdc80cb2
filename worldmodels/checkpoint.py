"""Checkpoints without pickle: safetensors weights carrying the model config.

``save_model(path, model)`` writes ``path`` (``.safetensors``) whose header metadata
holds ``{"kind": "ConvVAE", "config": {...}, "meta": {...}}`` — weights and config in
one atomically renamed file, so a kill can never pair one epoch's weights with another
epoch's config — plus ``path.json``, a readable copy of that header. ``load_model(path)``
rebuilds the model from the header and loads the weights strictly, raising
:class:`CheckpointError` that names the file and key on any mismatch. Optimizer and
loop state go in a separate safetensors file too (:func:`save_state`): its tensors as
safetensors, the structure around them as JSON in the header, so no pickle is read.
Every file is written by :func:`worldmodels.atomic.write_atomic`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from worldmodels.atomic import write_bytes_atomic, write_text_atomic
from worldmodels.errors import InputError

#: model kind -> constructor taking the JSON config as keyword arguments
MODEL_KINDS: dict[str, Callable[..., nn.Module]] = {}


class CheckpointError(InputError, ValueError):
    """A checkpoint is missing, corrupt, or does not match the model it is loaded into."""


def register_model(kind: str, builder: Callable[..., nn.Module]) -> None:
    MODEL_KINDS[kind] = builder


def sidecar(path: Path) -> Path:
    """The readable JSON copy of a weights file's header, beside it."""
    return Path(str(path) + ".json")


def save_model(path: Path, model: nn.Module, meta: dict[str, Any] | None = None,
               dtype: torch.dtype | None = None) -> None:
    """Write weights and sidecar atomically; the model must have a ``config()`` method.
    ``dtype`` (e.g. ``torch.float16``, for a shipped agent) stores the floating-point
    tensors in it; :func:`load_weights` casts them back to the model's own dtype."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    header = {"kind": type(model).__name__, "config": model.config(), "meta": meta or {}}
    text = json.dumps(header)
    write_bytes_atomic(path, safetensors_bytes(tensors, metadata={HEADER_KEY: text}))
    write_text_atomic(sidecar(path), json.dumps(header, indent=2))


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
        source = sidecar(path)
        if not source.exists():
            raise CheckpointError(f"{path}: no model config in its header and no {source.name}")
        text = source.read_bytes()
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{source}: model config is not JSON: {err}") from err
    if not isinstance(data, dict) or "kind" not in data or "config" not in data:
        raise CheckpointError(f"{source}: model config needs 'kind' and 'config'")
    if not isinstance(data["config"], dict):
        raise CheckpointError(f"{source}: its model config is a "
                              f"{type(data['config']).__name__}, not a mapping of "
                              f"{data['kind']}'s arguments")
    return data


def refuse_non_finite(path: Path, key: str, value: torch.Tensor,
                      allow_inf: bool = False) -> None:
    """A :class:`CheckpointError` naming ``path`` and ``key`` if the tensor ``value``
    holds NaN (or an infinity, unless ``allow_inf``: a buffer such as an unbounded
    action space's bound)."""
    if value.is_floating_point() and bool(
            (value.isnan() | (value.isinf() & (not allow_inf))).any()):
        raise CheckpointError(f"{path}: '{key}' holds NaN or Inf; these weights cannot "
                              "be used (retrain, or restore the file)")


def load_weights(path: Path, model: nn.Module) -> None:
    """Load a safetensors file into ``model``; every key and shape must match, no float
    be NaN and no parameter infinite."""
    path = Path(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable weights ({err})") from err
    expected = model.state_dict()
    # a buffer may hold inf (an unbounded action space's bound); a parameter may not
    parameters = {name for name, _ in model.named_parameters()}
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
        if value.is_floating_point() != expected[key].is_floating_point():
            raise CheckpointError(f"{path}: '{key}' is {value.dtype}, the model expects "
                                  f"{expected[key].dtype}")
        refuse_non_finite(path, key, value, allow_inf=key not in parameters)
        if value.dtype != expected[key].dtype:  # fp16 weights of a shipped agent: fp32 model
            tensors[key] = value.to(expected[key].dtype)
    model.load_state_dict(tensors)


def refuse_made_with(path: Path, made: dict[str, Any], expect: dict[str, Any]) -> None:
    """Refuse the checkpoint at ``path``, made with the config ``made``, when a value
    the caller ``expect``s differs; the error names the first such key."""
    for key, value in expect.items():
        if made.get(key) != value:
            raise CheckpointError(f"{path}: made with {key}={made.get(key)!r}, "
                                  f"but the config asks for {key}={value!r}")


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
    config = side["config"]
    refuse_made_with(path, config, expect or {})
    try:
        model = MODEL_KINDS[kind](**config)
    except (TypeError, ValueError) as err:  # keys of another version, or values out of range
        raise CheckpointError(f"{path}: its {kind} config {config} does not build a {kind} "
                              f"with this version of worldmodels ({err})") from err
    load_weights(path, model)
    return model.to(map_location)


def file_digest(path: Path) -> str:
    """Short SHA-256 of a file: identifies which weights made an artefact."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


#: header key of a training-state file: the JSON structure around its tensors
STATE_KEY = "worldmodels_state"


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON for ``obj``, its tensors moved into ``tensors`` (``{"__tensor__": name}``);
    tuples and dicts with non-string keys (an optimizer's parameter ids) keep their type."""
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().clone().contiguous()
        return {"__tensor__": name}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)]
                              for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"training state holds a {type(obj).__name__}, which save_state "
                    "cannot store (tensors, numbers, strings, lists, tuples, dicts only)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__tuple__"}:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if set(obj) == {"__items__"}:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Training state (optimizer state, counters) without pickle: the tensors as
    safetensors, the structure around them (param groups, ids, counters) as JSON in
    the header, in one atomically written file."""
    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(_encode(state, tensors))
    write_bytes_atomic(path, safetensors_bytes(tensors, metadata={STATE_KEY: structure}))


def load_state(path: Path, advice: str = "delete it to restart the optimizer from the "
               "last weights") -> dict[str, Any]:
    """Read what :func:`save_state` wrote; anything else (a pickle, a truncated file)
    is a :class:`CheckpointError` naming the file and giving ``advice``. No pickle is
    ever read."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            text = (fh.metadata() or {}).get(STATE_KEY)
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        if text is None:
            raise ValueError("no training state in its header")
        state = _decode(json.loads(text), tensors)
        if not isinstance(state, dict):
            raise ValueError("training state is not a mapping")
        return state
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{path}: unreadable training state ({type(err).__name__}: {err}); {advice}"
        ) from None


def check_moments(saved: Any, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Refuse an optimizer state (``saved``, read from ``path``) that is not this
    model's: other parameter groups or counts, or moments of other shapes (say another
    run's ``train_state.safetensors`` copied in), which torch would only fail on at the
    first step."""
    fix = ("; it belongs to another model: delete it to restart the optimizer from the "
           "last weights")
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups) or [
            len(g.get("params", ())) for g in groups] != [
            len(g["params"]) for g in optimizer.param_groups]:
        raise CheckpointError(f"{path}: its optimizer has other parameter groups{fix}")
    moments = saved.get("state") or {}
    if not isinstance(moments, dict) or not all(isinstance(m, dict) for m in moments.values()):
        raise CheckpointError(f"{path}: its optimizer state is not a mapping of moments{fix}")
    for group, ours in zip(groups, optimizer.param_groups, strict=True):
        for index, param in zip(group["params"], ours["params"], strict=True):
            for name, value in (moments.get(index) or moments.get(str(index)) or {}).items():
                if torch.is_tensor(value) and name != "step" and value.shape != param.shape:
                    raise CheckpointError(
                        f"{path}: moment '{name}' of parameter {index} has shape "
                        f"{tuple(value.shape)}, the model's is {tuple(param.shape)}{fix}")


def resume_training(
    model_path: Path, state_path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
    expect: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Load the last checkpoint into ``model`` (and ``optimizer``'s moments; its
    learning rates stay those it was made with, the config's).

    Returns (finished epochs, training state dict; empty if unusable). The epoch comes
    from the weights' own header. Weights are written before the training state, so a
    kill between the two leaves newer weights beside older optimizer moments: then Adam
    restarts its moments rather than pairing them with the wrong weights.
    """
    model_path = Path(model_path)
    if not model_path.exists():
        return 0, {}
    side = read_header(model_path)
    kind = type(model).__name__
    if side["kind"] != kind:  # (an M's checkpoint in V's place: the same z_dim)
        raise CheckpointError(f"{model_path}: holds a {side['kind']}, but this stage trains "
                              f"a {kind} there; move the file aside or give another run")
    refuse_made_with(model_path, side["config"], expect or {})
    load_weights(model_path, model)  # (names the file and any key or shape that differs)
    epoch = int((side.get("meta") or {}).get("epoch", 0))
    if Path(state_path).exists():
        state = load_state(state_path)
        if int(state.get("epoch", -1)) == epoch and "optimizer" in state:
            # the moments resume; the learning rate is the config's (a rerun may change it)
            rates = [group["lr"] for group in optimizer.param_groups]
            check_moments(state["optimizer"], optimizer, Path(state_path))
            optimizer.load_state_dict(state["optimizer"])
            for group, rate in zip(optimizer.param_groups, rates, strict=True):
                group["lr"] = rate
            return epoch, state
        print(f"{state_path}: from epoch {state.get('epoch')}, weights from epoch {epoch}; "
              "optimizer state reset")
    return epoch, {}


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as indented JSON, written atomically. A figure that is not finite (a
    metric with nothing to score) is written as ``NaN`` / ``Infinity``, as Python's
    ``json`` writes it: :func:`read_json` (Python's ``json``) reads it back; strict JSON
    parsers may not."""
    write_text_atomic(path, json.dumps(data, indent=2))


def read_json(path: Path, default: Any, keys: tuple[str, ...] = ()) -> Any:
    """A JSON file written by :func:`write_json_atomic`; ``default`` if it is absent.

    A file that is not JSON, not of ``default``'s kind (a list, a mapping), or, with
    ``keys``, a mapping (or a list of mappings: a log's records) without one of them, is
    a :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.exists():
        return default
    delete = "delete it to start its log anew"
    try:
        data = json.loads(path.read_text())
    except ValueError as err:  # (not JSON, or not UTF-8 text at all)
        raise CheckpointError(f"{path}: not JSON ({err}); {delete}") from err
    if default is not None and not isinstance(data, type(default)):
        raise CheckpointError(f"{path}: a JSON {type(data).__name__}, where a "
                              f"{type(default).__name__} is expected; {delete}")
    if keys:
        for i, record in enumerate(data if isinstance(data, list) else [data]):
            missing = [k for k in keys if not isinstance(record, dict) or k not in record]
            if missing:
                where = f"record {i + 1}" if isinstance(data, list) else "it"
                raise CheckpointError(f"{path}: {where} lacks '{missing[0]}' (every record "
                                      f"holds {', '.join(keys)}); {delete}")
    return data
