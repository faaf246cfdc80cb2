"""Bad input at every entry point: a wrong value, file or disk gives exit status 2 and one
line naming the key or file, and no file of the run changes (issue 17).

One tiny trained run is built for the module. A case may plant a bad file in it (the
bad input); the run is hashed after planting and again after the command, then
restored. Cases that must change the run (a full disk midway, an all-skipped epoch)
work on a copy and check what matters there: the files already written are intact.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import sys
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import collect as collect_script
import compare_memory as compare_script
import dream as dream_script
import encode as encode_script
import evaluate as evaluate_script
import run as run_script
import train_controller as controller_script
import train_frmdn as frmdn_script
import train_vae as vae_script
import worldmodels.atomic
import worldmodels.config
from tests.builders import make_frmdn, v_trained_again
from tests.conftest import PicklePayload
from tests.test_run_dir import run_files, trained_run
from worldmodels.checkpoint import (
    HEADER_KEY,
    CheckpointError,
    load_model,
    load_state,
    read_header,
    save_model,
    save_state,
)
from worldmodels.errors import DEPENDENCY_MODULES, run_cli
from worldmodels.run_dir import RunDir
from worldmodels.shards import read_npz, write_npz_atomic

ENTRY_POINTS = {"collect": collect_script, "train_vae": vae_script, "encode": encode_script,
                "train_frmdn": frmdn_script, "train_controller": controller_script,
                "evaluate": evaluate_script, "dream": dream_script,
                "compare_memory": compare_script, "run": run_script}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory.mktemp("bad_input"), "CarRacing-v3")


def refused(script, argv: list[str], capsys, worked: bool = False) -> str:
    """Run the entry point as its console command does; its one stderr line. ``worked``:
    the command started work before the error (progress bars and the config-change
    notice come first; the error is still one line, the last, with no traceback)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_cli(script.main, argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2, err
    if worked:
        assert "Traceback" not in err, err
        err = err.splitlines()[-1]
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


# --------------------------------------------------------------------------- planting


def _rewrite_npz(path: Path, **changes: np.ndarray) -> None:
    arrays = read_npz(path)
    arrays.update(changes)
    write_npz_atomic(path, arrays)


def plant_bytes(rel: str, data: bytes) -> Callable[[Path], None]:
    return lambda run: (run / rel).write_bytes(data)


def big_frames(run: Path) -> None:
    """A rollout shard of 96x96 frames (the env's raw size, not env.frame_size)."""
    path = run / "rollouts" / "ep_000001.npz"
    obs = read_npz(path, ("obs",))["obs"]
    _rewrite_npz(path, obs=np.zeros((len(obs), 96, 96, 3), np.uint8))


def narrow_actions(run: Path) -> None:
    """A latent shard with 2 action columns where the run's action space has 3."""
    path = run / "latents" / "ep_000001.npz"
    action = read_npz(path, ("action",))["action"]
    _rewrite_npz(path, action=np.ascontiguousarray(action[:, :2]))


def other_z(run: Path) -> None:
    path = run / "latents" / "ep_000001.npz"
    data = read_npz(path, ("mu", "logvar"))
    _rewrite_npz(path, mu=np.zeros((len(data["mu"]), 5), np.float32),
                 logvar=np.zeros((len(data["mu"]), 5), np.float32))


def truncated(rel: str) -> Callable[[Path], None]:
    def plant(run: Path) -> None:
        data = (run / rel).read_bytes()
        (run / rel).write_bytes(data[: len(data) // 2])
    return plant


def pickled_mean_frame(run: Path) -> None:
    np.save(run / "vae" / "mean_frame.npy",
            np.array([PicklePayload(run.parent / "pickle_was_executed")], dtype=object),
            allow_pickle=True)


def small_mean_frame(run: Path) -> None:
    np.save(run / "vae" / "mean_frame.npy", np.zeros((32, 32, 3)))


def sb3_policy(weights: bytes, meta: str) -> Callable[[Path], None]:
    def plant(run: Path) -> None:
        (run / "controller" / "sb3_ppo_dream.safetensors").write_bytes(weights)
        (run / "controller" / "sb3_ppo_dream.json").write_text(meta)
    return plant


SB3_META = json.dumps({"algo": "ppo", "kwargs": {}, "timesteps": 64, "seed": 0,
                       "environment": "dream"})


def history_with(settings: str) -> Callable[[Path], None]:
    def plant(run: Path) -> None:
        path = run / "controller" / "cmaes_history.npz"
        _rewrite_npz(path, settings=np.array(settings))
    return plant


def memory_as_vae(run: Path) -> None:
    for suffix in ("", ".json"):
        shutil.copy(run / "memory" / f"model.safetensors{suffix}",
                    run / "vae" / f"model.safetensors{suffix}")


def memory_with(z_dim: int | None = None, **meta: object) -> Callable[[Path], None]:
    """M's checkpoints replaced by an M reading latents of ``z_dim`` (an M of another V),
    or by the same M with ``meta`` changed (another env's actions, another V's latents)."""
    def plant(run: Path) -> None:
        for name in ("model", "best"):
            path = run / "memory" / f"{name}.safetensors"
            if not path.exists():
                continue
            header = read_header(path)
            model = load_model(path)
            if z_dim is not None:
                model = make_frmdn(z_dim, model.action_dim, hidden=model.hidden_size,
                                   mixtures=header["config"]["mixtures"])
            save_model(path, model, meta={**header["meta"], **meta})
    return plant


def selected_on(seed: int, episodes: int) -> Callable[[Path], None]:
    """The controller marked as selected on ``episodes`` selection seeds of ``seed``."""
    def plant(run: Path) -> None:
        best = run / "controller" / "best.safetensors"
        save_model(run / "controller" / "selected.safetensors", load_model(best),
                   meta={"selection_seed": seed, "selection_episodes": episodes})
    return plant


def pickled_state(run: Path) -> None:
    torch.save({"epoch": 1, "evil": PicklePayload(run.parent / "pickle_was_executed")},
               run / "vae" / "train_state.safetensors", pickle_module=pickle)


def npy_where(rel: str) -> Callable[[Path], None]:
    """A bare .npy array where an .npz belongs."""
    def plant(run: Path) -> None:
        with open(run / rel, "wb") as fh:
            np.save(fh, np.zeros(3, np.float32))
    return plant


def model_config(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """M's checkpoints with the model config in their header replaced by ``change(config)``
    (a checkpoint of another version of the library, say)."""
    def plant(run: Path) -> None:
        for path in sorted((run / "memory").glob("*.safetensors")):
            if path.name == "train_state.safetensors":
                continue
            header = read_header(path)
            tensors = load_file(str(path))
            save_file(tensors, str(path), metadata={HEADER_KEY: json.dumps(
                {**header, "config": change(dict(header["config"]))})})
            path.with_name(path.name + ".json").unlink(missing_ok=True)
    return plant


def dream_starts(**arrays: np.ndarray) -> Callable[[Path], None]:
    """A ``dream_starts.npz`` of the given arrays where dreams start (as a shipped agent's,
    or one ``run.agent_round=best`` put in place)."""
    return lambda run: write_npz_atomic(run / "dream_starts.npz", arrays)


def config_text(text: str) -> Callable[[Path], None]:
    return lambda run: (run / "config.yaml").write_text(text)


INVALID_YAML = "seed: [0\nvae: {z_dim: 4\n"
PYTHON_TAG = "seed: !!python/object/apply:os.system ['touch /tmp/yaml_tag_ran']\n"


def nan_weights(directory: str) -> Callable[[Path], None]:
    """A NaN in the first float parameter of every model file in ``directory``."""
    def plant(run: Path) -> None:
        for path in sorted((run / directory).glob("*.safetensors")):
            if path.name == "train_state.safetensors":
                continue
            model = load_model(path)
            with torch.no_grad():
                next(iter(model.parameters())).view(-1)[0] = float("nan")
            save_model(path, model, meta=read_header(path)["meta"])
    return plant


def nan_fitness(run: Path) -> None:
    path = run / "controller" / "cmaes_history.npz"
    fitness = read_npz(path, ("fitness",))["fitness"].copy()
    fitness[-1, 0] = np.nan
    _rewrite_npz(path, fitness=fitness)


def optimizer_state_of(make: Callable[[Path], torch.nn.Module],
                       into: str) -> Callable[[Path], None]:
    """``into``'s training state replaced by Adam's state for another model (``make``),
    at the same epoch, so that the moments would be loaded."""
    def plant(run: Path) -> None:
        path = run / into / "train_state.safetensors"
        other = make(run)
        optimizer = torch.optim.Adam(other.parameters())
        sum(p.sum() for p in other.parameters()).backward()
        optimizer.step()
        save_state(path, {"optimizer": optimizer.state_dict(),
                          "epoch": load_state(path)["epoch"]})
    return plant


def wider_memory(run: Path) -> torch.nn.Module:
    """The run's M rebuilt with 3 more LSTM units: the same parameters, other shapes."""
    header = read_header(run / "memory" / "model.safetensors")
    return type(load_model(run / "memory" / "model.safetensors"))(
        **{**header["config"], "hidden": header["config"]["hidden"] + 3})


@contextmanager
def kept(run: Path, plant: Callable[[Path], None] | None):
    """Plant the bad input; afterwards put every file of the run back as it was."""
    backup = run.parent / (run.name + ".backup")
    shutil.copytree(run, backup)
    try:
        if plant is not None:
            plant(run)
        yield
    finally:
        shutil.rmtree(run)
        shutil.move(backup, run)


# --------------------------------------------------------------------------- the cases


@dataclass
class Case:
    script: str
    args: list[str]
    names: str  # what the one line must name (a key, a file, an option)
    plant: Callable[[Path], None] | None = None
    read_only: bool = False  # the run's directory cannot be written
    by_run: bool = True  # pass --run <run>
    extra: dict = field(default_factory=dict)


CASES = {
    # class 1 and 2: values, checked before any work
    "vae.epochs=-1": Case("train_vae", ["vae.epochs=-1"], "vae.epochs"),
    "vae.epochs=true": Case("train_vae", ["vae.epochs=true"], "vae.epochs"),
    "memory.hidden=0": Case("train_frmdn", ["memory.hidden=0"], "memory.hidden"),
    "memory.lr=-1": Case("train_frmdn", ["memory.lr=-1"], "memory.lr"),
    "memory.mixtures=0": Case("train_frmdn", ["memory.mixtures=0", "memory.nonfinite=skip"],
                              "memory.mixtures"),
    "controller.sigma0=-1": Case("train_controller", ["controller.sigma0=-1"],
                                 "controller.sigma0"),
    "env.max_episode_steps=-5": Case("collect", ["env.max_episode_steps=-5"],
                                     "env.max_episode_steps"),
    "seed beyond 64 bits": Case("encode", [f"seed={2**70}"], "seed"),
    "device=bogus": Case("train_vae", ["device=bogus"], "device"),
    **({"device=cuda without CUDA (train_vae)": Case("train_vae", ["device=cuda"], "device"),
        "device=cuda without CUDA (train_frmdn)": Case("train_frmdn", ["device=cuda"], "device"),
        "device=cuda without CUDA (encode)": Case("encode", ["device=cuda"], "device")}
       if not torch.cuda.is_available() else {}),
    "CMA-ES population 2": Case("train_controller", ["controller.population=2"],
                                "controller.population"),
    # keys that conflict: refused before the first stage, not after V and M
    "dream C, M without a reward head": Case("collect", ["controller.environment=dream",
                                                         "memory.reward_head=false"],
                                             "controller.environment"),
    "[z, c, h] from a GRU": Case("collect", ["memory.kind=gru_mdn", "controller.use_cell=true"],
                                 "controller.use_cell"),
    "clip_dims beyond the actions": Case("collect", ["controller.clip_dims=[7]"],
                                         "controller.clip_dims"),
    "ordinal head on Box actions": Case("collect", ["controller.discrete_head=ordinal"],
                                        "controller.discrete_head"),
    "choice not offered": Case("collect", ["memory.precision=bogus"], "memory.precision"),
    "unknown key": Case("dream", ["bogus.key=1"], "bogus"),
    "override without =": Case("train_vae", ["vae.epochs"], "vae.epochs"),
    "env.crop_bottom = frame height": Case("collect", ["env.crop_bottom=96"],
                                           "env.crop_bottom"),
    "env.crop_bottom > frame height": Case("collect", ["env.crop_bottom=100"],
                                           "env.crop_bottom"),
    "env.kwargs unknown keyword": Case("collect", ["env.kwargs={bogus_option: 1}"],
                                       "bogus_option"),
    # (were TypeErrors: make_env got the keyword twice)
    "env.kwargs holds max_episode_steps": Case(
        "collect", ["env.kwargs={max_episode_steps: 5}"], "is env.max_episode_steps"),
    "env.kwargs holds id": Case("collect", ["env.kwargs={id: CarRacing-v3}"], "is env.id"),
    "evaluate --episodes 0": Case("evaluate", ["--episodes", "0"], "--episodes"),
    "evaluate --episodes x": Case("evaluate", ["--episodes", "x"], "--episodes"),
    "dream --policy bogus": Case("dream", ["--policy", "bogus"], "--policy"),
    "compare_memory --seeds a,b": Case("compare_memory", ["--seeds", "a,b"], "--seeds"),
    "unknown preset": Case("train_vae", ["--config", "carracing", "--preset", "nope"], "nope",
                           by_run=False),
    # class 3: files of the right format with the wrong content
    "96x96 rollout shard (train_vae)": Case("train_vae", [], "ep_000001.npz", big_frames),
    "96x96 rollout shard (encode)": Case("encode", [], "ep_000001.npz", big_frames),
    "latent shard, other action width": Case("train_frmdn", [], "ep_000001.npz",
                                             narrow_actions),
    "latent shard, other z size": Case("train_frmdn", [], "ep_000001.npz", other_z),
    "truncated rollout shard": Case("train_vae", [], "ep_000002.npz",
                                    truncated("rollouts/ep_000002.npz")),
    **{f"an .npy where a latent shard belongs ({name})": Case(
        name, args, "ep_000000.npz: unreadable shard", npy_where("latents/ep_000000.npz"))
       for name, args in [("train_frmdn", []), ("dream", ["--dream-only", "--steps", "2"])]},
    "an .npy where the CMA-ES history belongs": Case(
        "train_controller", [], "cmaes_history.npz: unreadable shard: not an .npz",
        npy_where("controller/cmaes_history.npz")),
    "M's header config of another version": Case(
        "evaluate", ["--episodes", "1"], "does not build", model_config(
            lambda config: {**config, "bogus": 1})),
    "M's header config a list": Case("evaluate", ["--episodes", "1"], "not a mapping",
                                     model_config(lambda config: [config])),
    **{f"dream starts, {what}": Case(
        "evaluate", ["--in-dream", "--episodes", "1"], "dream_starts.npz", dream_starts(
            mu=mu, logvar=np.zeros_like(mu)))
       for what, mu in [("other z size", np.zeros((5, 3), np.float32)),
                        ("no rows", np.zeros((0, 4), np.float32)),
                        ("one dimension", np.zeros(4, np.float32)),
                        ("NaN", np.full((5, 4), np.nan, np.float32)),
                        ("integers", np.zeros((5, 4), np.int64))]},
    "SB3 policy description a list": Case("evaluate", ["--policy", "ppo"], "sb3_ppo_dream.json",
                                          sb3_policy(b"", "[1]")),
    "garbage latent shard": Case("train_frmdn", [], "ep_000000.npz",
                                 plant_bytes("latents/ep_000000.npz", b"not a zip")),
    "corrupt mean_frame.npy": Case("train_vae", [], "mean_frame.npy",
                                   plant_bytes("vae/mean_frame.npy", b"\x93NUMPY garbage")),
    "empty mean_frame.npy": Case("train_vae", [], "mean_frame.npy",
                                 plant_bytes("vae/mean_frame.npy", b"")),
    "pickled mean_frame.npy": Case("train_vae", [], "mean_frame.npy", pickled_mean_frame),
    "mean_frame.npy of another size": Case("train_vae", [], "mean_frame.npy", small_mean_frame),
    "zero-byte SB3 policy": Case("evaluate", ["--policy", "ppo"], "sb3_ppo_dream.safetensors",
                                 sb3_policy(b"", SB3_META)),
    "corrupt SB3 policy description": Case("evaluate", ["--policy", "ppo"], "sb3_ppo_dream.json",
                                           sb3_policy(b"", "{not json")),
    "corrupt CMA-ES history": Case("train_controller", [], "cmaes_history.npz",
                                   plant_bytes("controller/cmaes_history.npz", b"PK junk")),
    "CMA-ES history, settings not JSON": Case("train_controller", [], "cmaes_history.npz",
                                              history_with("{oops")),
    "CMA-ES history from other settings": Case("train_controller", ["controller.sigma0=0.2"],
                                               "sigma0"),
    "M checkpoint where V belongs": Case("evaluate", ["--episodes", "1"], "vae/model.safetensors",
                                         memory_as_vae),
    "M of another V (z size)": Case("evaluate", ["--episodes", "1"], "memory/",
                                    memory_with(z_dim=7)),
    "M of another env (actions)": Case("dream", ["--dream-only", "--steps", "2"], "memory/",
                                       memory_with(action_space={"type": "discrete", "n": 5})),
    "M with a done_pos_weight not a number": Case(
        "dream", ["--dream-only", "--steps", "2"], "meta.done_pos_weight is 'abc'",
        memory_with(done_pos_weight="abc")),  # (was: a ValueError traceback)
    "M with done_pos_weight 0": Case("dream", ["--dream-only", "--steps", "2"],
                                     "meta.done_pos_weight is 0,",
                                     memory_with(done_pos_weight=0)),
    "M trained on another V's latents": Case("train_frmdn", [], "memory/model.safetensors",
                                             memory_with(vae_digest="0123456789abcdef")),
    # V trained again after M and C: they are not played, nor borrowed, with the new V
    "M of a V trained since (evaluate)": Case("evaluate", ["--episodes", "1"],
                                              "memory/best.safetensors", v_trained_again),
    "M of a V trained since (--world-model)": Case(
        "train_controller", ["--world-model", "{run}", "--run", "{tmp}/borrowed"],
        "memory/best.safetensors", v_trained_again, by_run=False),
    "M of a V trained since (train_controller)": Case("train_controller", [],
                                                      "memory/best.safetensors", v_trained_again),
    "evaluate --weights of another policy": Case("evaluate", ["--policy", "random",
                                                              "--weights", "mean"], "--weights"),
    "evaluate --video of the random policy": Case("evaluate", ["--policy", "random",
                                                               "--video", "1"],
                                                  "random policy's are not recorded"),
    "evaluate, no controller file": Case("evaluate", ["--policy", "controller", "--weights",
                                                      "best"], "no trained controller",
                                         lambda run: [p.unlink() for p in (
                                             run / "controller").glob("*.safetensors")]),
    # (it said "no trained controller (run train_controller.py ...)" beside the others)
    "evaluate, not that controller": Case("evaluate", ["--policy", "controller", "--weights",
                                                       "best"], "choose one with --weights",
                                          lambda run: (run / "controller" / "best.safetensors"
                                                       ).unlink()),
    "evaluate on its own selection seeds": Case(
        "evaluate", ["--episodes", "1000", "seed=8175", "--weights", "selected"],
        "give another seed=N", selected_on(0, 1000)),
    "evaluate best on the run's selection seeds": Case(
        "evaluate", ["--episodes", "1000", "seed=8175", "--weights", "best"],
        "give another seed=N", selected_on(0, 1000)),
    "compare_memory --seeds 0,0": Case("compare_memory", ["--seeds", "0,0"], "--seeds"),
    "compare_memory --seeds -1": Case("compare_memory", ["--seeds=-1"], "--seeds"),
    "compare_memory --variants ,": Case("compare_memory", ["--variants", ","], "--variants"),
    # files of a run read before its config.yaml is rewritten: a refused rerun with a
    # changed key leaves config.yaml as it was
    "V metrics not JSON": Case("train_vae", ["vae.epochs=3"], "vae/metrics.json",
                               truncated("vae/metrics.json")),
    "M metrics of another shape": Case("train_frmdn", ["memory.epochs=3"],
                                       "memory/metrics.json",
                                       plant_bytes("memory/metrics.json", b'[{"epoch": 1}]')),
    "CMA-ES log not a list": Case("train_controller", ["controller.generations=9"],
                                  "generations.json",
                                  plant_bytes("controller/generations.json", b"{}")),
    "corrupt selected controller": Case("train_controller", ["controller.generations=9"],
                                        "selected.safetensors",
                                        plant_bytes("controller/selected.safetensors",
                                                    b"junk")),
    "NaN in V's weights": Case("encode", [], "vae/model.safetensors", nan_weights("vae")),
    "NaN in M's weights": Case("dream", ["--dream-only", "--steps", "2"], "memory/",
                               nan_weights("memory")),
    "NaN in C's weights": Case("evaluate", ["--episodes", "1"], "controller/",
                               nan_weights("controller")),
    "NaN fitness in the CMA-ES history": Case("train_controller", [], "cmaes_history.npz",
                                              nan_fitness),
    "M's training state of another size": Case(
        "train_frmdn", ["memory.epochs=3"], "memory/train_state.safetensors",
        optimizer_state_of(wider_memory, "memory")),
    "M's training state in V's place": Case(
        "train_vae", ["vae.epochs=3"], "vae/train_state.safetensors",
        optimizer_state_of(lambda run: load_model(run / "memory" / "model.safetensors"),
                           "vae")),
    # a later stage's files checked before the first stage writes
    "run.py, vae.z_dim against the trained V": Case("run", ["vae.z_dim=8"], "vae.z_dim=8"),
    "run.py, memory.hidden against the trained M": Case("run", ["memory.hidden=9"],
                                                        "hidden=9"),
    "collect.py, vae.z_dim against the trained V": Case(
        "collect", ["vae.z_dim=8", "collect.episodes=9"], "vae/model.safetensors"),
    # every stage checks the run's V and M against the config before it writes it (the
    # train_frmdn and vae.z_dim cases were refused before, by M's resume and V's load:
    # kept as guards)
    **{f"{name}, memory.hidden against the trained M": Case(
        name, args + ["memory.hidden=9"], "memory/model.safetensors")
       for name, args in [("train_controller", []), ("encode", []), ("train_vae", []),
                          ("train_frmdn", [])]},
    "train_controller, vae.z_dim against the trained V": Case(
        "train_controller", ["vae.z_dim=8"], "vae/model.safetensors"),
    "pickled training state": Case("train_vae", [], "train_state.safetensors", pickled_state),
    "corrupt M training state": Case("train_frmdn", [], "train_state.safetensors",
                                     plant_bytes("memory/train_state.safetensors", b"\0" * 9)),
    # class 5: paths the OS refuses (the run directory read-only: see read_only_open)
    "--config names a directory": Case("train_vae", ["--config", "{tmp}"], "{tmp}",
                                       by_run=False),
    "--config names a run directory": Case("evaluate", ["--config", "{run}"], "--run",
                                           by_run=False),
    "--config file without .yaml, not YAML": Case(
        "train_vae", ["--config", "{tmp}/settings"], "settings", by_run=False,
        extra={"settings": "defaults: [unclosed\n"}),
    "root= a file": Case("collect", ["--config", "carracing", "--preset", "quick",
                                     "root={tmp}/a_file"], "root", by_run=False,
                         extra={"a_file": "not a directory\n"}),
    **{f"read-only run ({name})": Case(name, args, "permission denied", read_only=True)
       for name, args in [("collect", ["collect.episodes=4", "collect.engine=serial"]),
                          ("train_vae", []), ("encode", []), ("train_frmdn", []),
                          ("train_controller", []),
                          ("evaluate", ["--episodes", "1", "controller.engine=serial"]),
                          ("dream", ["--dream-only", "--steps", "2"])]},
    # class 4: the run's config.yaml itself
    **{f"invalid YAML config.yaml ({name})": Case(name, [], "config.yaml",
                                                  config_text(INVALID_YAML))
       for name in ENTRY_POINTS},
    **{f"!!python tag in config.yaml ({name})": Case(name, [], "config.yaml",
                                                     config_text(PYTHON_TAG))
       for name in ENTRY_POINTS},
    **{f"empty config.yaml ({name})": Case(name, [], "config.yaml", config_text(""))
       for name in ("collect", "evaluate", "dream")},
}


def test_at_least_forty_distinct_bad_inputs():
    assert len(CASES) >= 40
    assert {c.script for c in CASES.values()} == set(ENTRY_POINTS)


@contextmanager
def read_only_open(run: Path, monkeypatch):
    """The run directory refuses writes, as a read-only mount or another owner's run does
    (the tests run as root, whom chmod does not stop): opening a file there for writing
    raises EACCES, as the OS would."""
    real_open = open

    def guarded(file, mode="r", *args, **kwargs):
        if any(m in mode for m in "wax+") and Path(file).is_relative_to(run):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(worldmodels.atomic, "open", guarded, raising=False)
    yield


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_naming_it_and_changes_nothing(run_dir, tmp_path, capsys,
                                                             monkeypatch, name):
    case = CASES[name]
    for file, text in case.extra.items():
        (tmp_path / file).write_text(text)
    marker = run_dir.parent / "pickle_was_executed"
    args = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(run_dir))
            for a in case.args]
    if case.by_run:
        args = ["--run", str(run_dir), *args]
    names = case.names.replace("{tmp}", str(tmp_path)).replace("{run}", str(run_dir))
    monkeypatch.chdir(tmp_path)  # a run at a config's default place lands here
    with kept(run_dir, case.plant):
        before = run_files(run_dir)
        if case.read_only:
            with read_only_open(run_dir, monkeypatch):
                err = refused(ENTRY_POINTS[case.script], args, capsys)
        else:
            err = refused(ENTRY_POINTS[case.script], args, capsys)
        assert names in err
        assert run_files(run_dir) == before
        assert not marker.exists(), "a planted pickle was executed"
    assert not Path("/tmp/yaml_tag_ran").exists()
    assert not (tmp_path / "runs").exists()  # nothing made at a default place either


# --------------------------------------------------------------------------- the disk


def enospc_on(monkeypatch, name: str) -> None:
    """The disk is full when the file ``name`` is renamed into place."""
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(worldmodels.atomic.os, "replace", replace)


@pytest.fixture
def run_copy(run_dir, tmp_path) -> Path:
    copy = tmp_path / "copy" / "tiny"
    shutil.copytree(run_dir, copy)
    return copy


def test_disk_full_during_collect_names_the_shard_and_keeps_the_others(run_copy, capsys,
                                                                       monkeypatch):
    shards = run_files(run_copy / "rollouts")
    enospc_on(monkeypatch, "ep_000003.npz")
    err = refused(collect_script, ["--run", str(run_copy), "collect.episodes=5",
                                   "collect.engine=serial"], capsys, worked=True)
    assert "ep_000003.npz" in err and "no space left on device" in err
    left = run_files(run_copy / "rollouts")
    assert left == shards  # the shards already written are intact; no partial file
    monkeypatch.undo()
    collect_script.main(["--run", str(run_copy), "collect.episodes=5", "collect.engine=serial"])
    assert len(run_files(run_copy / "rollouts")) == 5


def test_disk_full_while_saving_training_state_then_rerun_resumes(run_copy, capsys,
                                                                  monkeypatch):
    state = (run_copy / "vae" / "train_state.safetensors").read_bytes()
    enospc_on(monkeypatch, "train_state.safetensors")
    err = refused(vae_script, ["--run", str(run_copy), "vae.epochs=2"], capsys, worked=True)
    assert "train_state.safetensors" in err and "no space left on device" in err
    assert (run_copy / "vae" / "train_state.safetensors").read_bytes() == state  # intact
    assert not list(run_copy.rglob("*.partial"))
    monkeypatch.undo()
    report = vae_script.main(["--run", str(run_copy), "vae.epochs=3"])
    assert report["epochs_done"] == 3
    assert load_state(run_copy / "vae" / "train_state.safetensors")["epoch"] == 3


def test_an_os_refusal_outside_the_atomic_write_is_one_line_and_a_bug_is_not(capsys):
    def full(_argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/x.bin")

    with pytest.raises(SystemExit) as stop:
        run_cli(full, [])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == "error: /data/x.bin: no space left on device"

    def missing(_argv):  # a path the code got wrong: a bug, kept with its traceback
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/nowhere")

    with pytest.raises(FileNotFoundError):
        run_cli(missing, [])


def test_a_missing_dependency_is_one_line_naming_it_and_changes_nothing(run_copy, capsys,
                                                                         monkeypatch):
    # an install left incomplete (pip install --no-deps): TensorBoard cannot be imported
    before = (run_copy / "config.yaml").read_text()
    state = run_copy / "vae" / "train_state.safetensors"
    epoch = load_state(state)["epoch"]
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    err = refused(vae_script, ["--run", str(run_copy), "vae.epochs=3"], capsys, worked=True)
    assert err.startswith("error: the package 'tensorboard' (imported as 'tensorboard')")
    assert "reinstall worldmodels" in err
    assert (run_copy / "config.yaml").read_text() == before  # vae.epochs=3 not kept
    assert load_state(state)["epoch"] == epoch

    def other(_argv):  # a module worldmodels does not depend on: a bug, with its traceback
        import not_a_dependency_of_worldmodels  # noqa: F401

    with pytest.raises(ModuleNotFoundError):
        run_cli(other, [])

    def moved(_argv):  # a module missing inside an installed dependency: a bug too
        import numpy.not_a_module_of_numpy  # noqa: F401

    with pytest.raises(ModuleNotFoundError):
        run_cli(moved, [])


def test_the_dependencies_named_on_a_failed_import_are_pyprojects():
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    declared = {re.split(r"[<>=\[]", d)[0] for d in pyproject["project"]["dependencies"]}
    assert declared == {name.partition("[")[0] for name in DEPENDENCY_MODULES.values()}


# --------------------------------------------------------------------------- training


def test_every_batch_skipped_is_an_error_not_a_model(run_copy, capsys, monkeypatch):
    import worldmodels.frmdn as frmdn

    shutil.rmtree(run_copy / "memory")
    real_loss = frmdn.FRMDN.loss

    def nan_loss(self, *args, **kwargs):
        losses = real_loss(self, *args, **kwargs)
        return {**losses, "loss": losses["loss"] * float("nan")}

    monkeypatch.setattr(frmdn.FRMDN, "loss", nan_loss)
    err = refused(frmdn_script, ["--run", str(run_copy), "memory.nonfinite=skip"], capsys,
                  worked=True)
    assert "every batch" in err and "memory.nonfinite=skip" in err
    assert not (run_copy / "memory" / "model.safetensors").exists()


def corrupt_member_tail(path: Path, member: str) -> None:
    """Flip bytes near the end of one member's compressed data: its header still reads,
    its data does not (as a disk error or a torn copy leaves it)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    end = start + info.compress_size
    for i in range(max(start + 200, end - 64), end - 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("workers", [0, 1])
def test_a_shard_error_in_a_dataloader_worker_is_one_line(run_copy, capsys, workers):
    for path in (run_copy / "rollouts").glob("ep_*.npz"):
        corrupt_member_tail(path, "obs.npy")
    weights = (run_copy / "vae" / "model.safetensors").read_bytes()
    err = refused(vae_script, ["--run", str(run_copy), "vae.epochs=2",
                               f"data.loader_workers={workers}"], capsys, worked=True)
    assert "ep_00000" in err and "unreadable shard" in err
    assert "Traceback" not in err and "Caught" not in err
    assert (run_copy / "vae" / "model.safetensors").read_bytes() == weights


# --------------------------------------------------------------------------- no pickle


def test_training_state_round_trips_without_torch_load(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "epoch": 3, "step": 17}
    save_state(tmp_path / "s.safetensors", state)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    loaded = load_state(tmp_path / "s.safetensors")
    assert loaded["epoch"] == 3 and loaded["step"] == 17
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    for pid, values in state["optimizer"]["state"].items():
        for key, value in values.items():
            assert torch.equal(loaded["optimizer"]["state"][pid][key], value)
    fresh = torch.optim.Adam(model.parameters(), lr=1e-3)
    fresh.load_state_dict(loaded["optimizer"])  # Adam takes it back
    assert fresh.param_groups[0]["betas"] == (0.8, 0.9)
    with pytest.raises(CheckpointError, match="s.safetensors"):
        (tmp_path / "s.safetensors").write_bytes(b"\x80\x04K\x01.")  # a pickle
        load_state(tmp_path / "s.safetensors")


# --------------------------------------------------------------------------- one write


def test_every_file_is_written_through_the_one_atomic_write():
    """No module writes a file a later stage reads except through worldmodels.atomic
    (one temporary-name scheme: .<name>.<pid>.partial, fsync, rename)."""
    import re

    root = Path(__file__).resolve().parent.parent
    direct = re.compile(r"os\.replace\(|\.write_text\(|\.write_bytes\(|torch\.save\(|"
                        r"savez(_compressed)?\(|save_file\(|(?<![\w.])open\([^)]*[\"'][wax]b?[\"']")
    offenders = []
    for folder in ("worldmodels", "agents", "envs", "tools", "."):
        for path in sorted((root / folder).glob("*.py")):
            if path.name == "atomic.py":
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if direct.search(line):
                    offenders.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_temporary_name_is_one_scheme(tmp_path, monkeypatch):
    from worldmodels.checkpoint import save_model, write_json_atomic
    from worldmodels.config import load_config, save_config
    from worldmodels.pictures import save_png
    from worldmodels.vae import ConvVAE

    renamed = []
    real_replace = os.replace

    def replace(src, dst):
        renamed.append((Path(src).name, Path(dst).name))
        return real_replace(src, dst)

    monkeypatch.setattr(worldmodels.atomic.os, "replace", replace)
    write_npz_atomic(tmp_path / "ep_000000.npz", {"a": np.zeros(2)})
    save_model(tmp_path / "v.safetensors", ConvVAE(z_dim=4))
    save_state(tmp_path / "train_state.safetensors", {"epoch": 1})
    save_png(tmp_path / "p.png", np.zeros((4, 4, 3), np.uint8))
    save_config(load_config("carracing"), tmp_path / "config.yaml")
    write_json_atomic(tmp_path / "m.json", {})
    assert len(renamed) == 7
    writer = worldmodels.atomic._writer()  # host and pid
    assert writer.endswith(f"-{os.getpid()}")
    assert all(src == f".{dst}.{writer}.partial" for src, dst in renamed)


def test_a_killed_writers_temporary_files_go_with_the_next_write_there(tmp_path):
    import subprocess
    import sys

    from worldmodels.checkpoint import write_json_atomic

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = worldmodels.atomic._writer().rsplit("-", 1)[0]
    stale = tmp_path / f".log.json.{host}-{dead}.partial"  # a writer killed mid-write
    other = tmp_path / f".other.json.{host}-{dead}.partial"  # another file's, as dead
    live = tmp_path / f".log.json.{host}-{os.getppid()}.partial"  # a writer at work
    remote = tmp_path / f".log.json.elsewhere-{dead}.partial"  # another host's writer
    for p in (stale, other, live, remote):
        p.write_bytes(b"half")
    write_json_atomic(tmp_path / "log.json", {"ok": 1})
    assert not stale.exists() and not other.exists()
    assert live.exists() and remote.exists()


def test_the_write_probe_is_a_tagged_temp_file_that_other_cleaners_spare(tmp_path, monkeypatch):
    """check_writable's probe carries its writer's tag: another process cleaning the
    directory (its first atomic write there) while the probe is open leaves it alone."""
    from worldmodels.atomic import check_writable, remove_stale_temps

    seen, real_fsync = [], os.fsync

    def fsync_while_another_cleans(fd):
        seen.extend(p.name for p in tmp_path.glob("*.partial"))
        remove_stale_temps(tmp_path)
        return real_fsync(fd)

    monkeypatch.setattr(worldmodels.atomic.os, "fsync", fsync_while_another_cleans)
    check_writable(tmp_path)
    assert seen == [f".write_probe.{worldmodels.atomic._writer()}.partial"]
    assert not list(tmp_path.glob("*.partial"))


def _write_often(path: str, tag: int, times: int) -> None:
    from worldmodels.checkpoint import write_json_atomic

    for i in range(times):
        write_json_atomic(Path(path), {"writer": tag, "i": i, "pad": "x" * 4096})


def test_processes_writing_one_file_never_share_a_temporary_file(tmp_path):
    """Two processes of one command (a population experiment's) write its results file
    at once: each write succeeds and the file is always one whole write."""
    import json
    import multiprocessing as mp

    target = tmp_path / "results.json"
    ctx = mp.get_context("spawn")
    writers = [ctx.Process(target=_write_often, args=(str(target), k, 200)) for k in (1, 2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(120)
    assert [w.exitcode for w in writers] == [0, 0]
    assert json.loads(target.read_text())["i"] == 199
    assert not list(tmp_path.glob("*.partial"))


def test_engine_ray_without_ray_is_refused_before_the_config_is_saved(
        run_dir, capsys, monkeypatch):
    """controller.engine=ray where ray is not installed: refused naming the key, and the
    run's config.yaml does not take the engine (a later plain command would fail)."""
    monkeypatch.setattr(worldmodels.config, "has_package", lambda name: name != "ray")
    with kept(run_dir, None):
        before = run_files(run_dir)
        err = refused(controller_script, ["--run", str(run_dir), "controller.engine=ray",
                                          "controller.generations=9"], capsys)
        assert "controller.engine" in err and "pip install" in err
        assert run_files(run_dir) == before


def test_an_engine_is_checked_only_where_the_command_sets_it(monkeypatch):
    """A run made on a Ray cluster (engine=ray saved) still trains V or M where ray is
    absent; a command that sets the engine, or a new run, is refused."""
    from worldmodels.config import load_config, refuse_missing_engines

    monkeypatch.setattr(worldmodels.config, "has_package", lambda name: name != "ray")
    cfg = load_config("carracing", [], ["controller.engine=ray"])
    refuse_missing_engines(cfg, {"memory.epochs"})
    for changed in (None, {"memory.epochs", "controller.engine"}):
        with pytest.raises(worldmodels.config.MissingPackageError, match="controller.engine"):
            refuse_missing_engines(cfg, changed)


def test_a_key_given_twice_is_said_and_the_last_is_used(capsys):
    from worldmodels.config import cli_parser, parse_cli

    args = parse_cli(cli_parser("x"), ["memory.epochs=2", "vae.epochs=1", "memory.epochs=3"])
    assert args.overrides[-1] == "memory.epochs=3"
    err = capsys.readouterr().err
    assert "memory.epochs is given 2 times; the last, memory.epochs=3, is used" in err
    assert "vae.epochs" not in err


@pytest.mark.parametrize(("tool", "argv", "names"), [
    ("dream_action_check", ["RUN", "-1"], "temperature"),
    ("dream_action_check", ["RUN", "nan"], "temperature"),
    ("dream_spread", ["RUN", "--taus", "1.0", "-1"], "--taus"),
    ("dream_spread", ["RUN", "--taus", "inf"], "--taus"),
    ("dream_action_check", ["RUN", "inf"], "temperature"),
    ("dream_spread", ["RUN", "--samples", "1"], "--samples"),
    ("dream_spread", ["RUN", "--episodes", "0"], "--episodes"),
    ("ensemble_eval", ["RUN", "--batch", "0"], "--batch"),  # (was: a traceback)
    ("ensemble_eval", ["RUN", "--episodes", "0"], "--episodes"),  # (was: NaN, exit 0)
    ("done_along_real", ["RUN", "--episodes", "0"], "--episodes"),  # (was: NaN, exit 0)
])
def test_tool_arguments_out_of_range_are_one_line(run_dir, capsys, tool, argv, names):
    module = __import__(f"tools.{tool}", fromlist=["main"])
    err = refused(module, [a.replace("RUN", str(run_dir)) for a in argv], capsys)
    assert names in err


def test_a_refused_command_leaves_the_runs_config_as_it_was(run_dir, tmp_path, capsys):
    """A command refused on its inputs puts the run's config.yaml and config.prev.yaml
    back (a review: train_controller.py wrote its changed config, then found a corrupt
    latent shard; after two such commands the config the run was trained with was in
    neither file). A command that went on to write outputs keeps its config."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = {name: (run / name).read_text() if (run / name).exists() else None
              for name in ("config.yaml", "config.prev.yaml")}
    shard = run / "latents" / "ep_000001.npz"
    good = shard.read_bytes()
    shard.write_bytes(good[:300])
    for generations in (2, 3):
        argv = ["--run", str(run), f"controller.generations={generations}"]
        err = refused(controller_script, argv, capsys, worked=True)
        assert str(shard) in err
        assert {name: (run / name).read_text() if (run / name).exists() else None
                for name in before} == before
    shard.write_bytes(good)
    # run.py: its first stage writes the config, its C stage refuses the CMA-ES history
    # (another population); progress.json, rewritten after every stage done or skipped,
    # is not an output
    err = refused(run_script, ["--run", str(run), "controller.population=4"], capsys,
                  worked=True)
    assert "other CMA-ES settings" in err, err
    assert {name: (run / name).read_text() if (run / name).exists() else None
            for name in before} == before
    run_cli(controller_script.main, ["--run", str(run), "controller.generations=2"])
    assert "generations: 2" in (run / "config.yaml").read_text()
    assert (run / "config.prev.yaml").read_text() == before["config.yaml"]
    # a later refused command of the same process undoes only what it wrote itself
    refused(evaluate_script, ["--run", str(run), "--episodes", "x"], capsys)
    assert "generations: 2" in (run / "config.yaml").read_text()


def test_skip_corrupt_passes_over_an_unreadable_first_latent_shard(run_dir, tmp_path):
    """data.skip_corrupt=true: C trains with the run's first latent shard truncated (the
    action space was read from that shard alone, so the skip stopped there)."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    first = run / "latents" / "ep_000000.npz"
    first.write_bytes(first.read_bytes()[:300])
    run_cli(controller_script.main, ["--run", str(run), "controller.generations=2",
                                     "data.skip_corrupt=true"])
    log = json.loads((run / "controller" / "generations.json").read_text())
    assert [g["generation"] for g in log] == [1, 2]


def test_a_trained_run_is_played_only_in_an_env_with_its_actions(run_dir, tmp_path,
                                                                  capsys):
    """evaluate.py / dream.py env.id=... or env.kwargs=... on a trained run: an env that
    acts otherwise is refused naming the key (was: a traceback from CartPole, an error
    blaming C's file, or the CarRacing agent scored in Pendulum); the same actions pass."""
    run = RunDir(run_dir)
    run.load_config(["env.kwargs={lap_complete_percent: 0.9}"])  # same actions: fine
    for script, extra in ((evaluate_script, ["--episodes", "1"]),
                          (dream_script, ["--steps", "2"]),
                          (controller_script, ["controller.generations=2"])):
        for override in ("env.id=Pendulum-v1", "env.kwargs={continuous: false}"):
            err = refused(script, ["--run", str(run_dir), *extra, override], capsys)
            assert "acts in" in err and "were trained on Box" in err, err
            assert f"'{override.split('=')[0]}'" in err
    # a run whose env.kwargs are not empty: one of its keys changed is a change too
    other = tmp_path / "kwargs"
    shutil.copytree(run_dir, other)
    config = other / "config.yaml"
    config.write_text(config.read_text().replace(
        "kwargs: {}", "kwargs:\n    lap_complete_percent: 0.95", 1))
    assert RunDir(other).load_config().env.kwargs == {"lap_complete_percent": 0.95}
    err = refused(evaluate_script, ["--run", str(other), "--episodes", "1",
                                    "env.kwargs.continuous=false"], capsys)
    assert "config key 'env.kwargs'" in err and "acts in Discrete(5)" in err, err
    # ... and a run on its V and M (--world-model) is checked when it starts
    err = refused(controller_script, ["--world-model", str(run_dir), "--run",
                                      str(tmp_path / "borrowed"), "env.id=Pendulum-v1"], capsys)
    assert "acts in" in err, err


def test_action_spaces_compare_by_what_they_take():
    """A float64 Box against M's recorded float32 one with the same bounds is the same
    (gymnasium's == compares dtypes); another shape, bound or kind is not."""
    from gymnasium.spaces import Box, Discrete

    from worldmodels.run_dir import same_actions

    f32 = Box(np.array([-1, 0, 0.1], np.float32), np.ones(3, np.float32))
    assert same_actions(Box(np.array([-1, 0, 0.1]), np.ones(3)), f32)
    assert not same_actions(Box(np.array([-1, 0, 0.2]), np.ones(3)), f32)
    assert not same_actions(Box(-1, 1, (2,)), Box(-1, 1, (3,)))
    assert same_actions(Discrete(3), Discrete(3)) and not same_actions(Discrete(3), Discrete(4))
    assert not same_actions(Discrete(3, start=1), Discrete(3))
    assert not same_actions(Discrete(3), Box(-1, 1, (3,)))
