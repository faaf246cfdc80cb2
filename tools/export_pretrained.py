"""Ship a trained run's agent: its resolved config, V, M and one C in a new directory.

    python tools/export_pretrained.py runs/CarRacing-v3/solve pretrained/carracing --fp16
    python tools/export_pretrained.py RUN DEST --weights best     # another controller
    python tools/export_pretrained.py RUN DEST --fp16 env.direct_render=false
    python tools/export_pretrained.py RUN DEST --policy ppo --fp16   # an SB3 policy instead
    python tools/export_pretrained.py RUN DEST --round 2 --fp16      # a finished round's agent
    python tools/export_pretrained.py RUN DEST --round 1 --memory-epoch 19  # a kept epoch's M
    python evaluate.py --run pretrained/carracing --episodes 100

DEST gets ``config.yaml`` (the run's resolved config, with the optional ``KEY=VALUE``
overrides that a trained run leaves open, e.g. ``env.direct_render=false`` so that the
shipped agent plays Gymnasium's own CarRacing renderer by default), ``vae/model.safetensors``,
``memory/model.safetensors`` (M's best held-out epoch, with the action space its training
recorded), ``dream_starts.npz`` (the first latents of M's training episodes, which dreams
start from), the policy, and ``shipped.json`` (the source run, the policy, each file's
SHA-256 and size). The policy is CMA-ES's ``controller/<weights>.safetensors`` (by default
the one evaluate.py plays: ``selected``, else ``best``), or with ``--policy ppo`` (any SB3
algorithm) the run's SB3 policy ``controller/sb3_<algo>.safetensors`` and its
description; policies stay fp32, and evaluate.py and dream.py play the shipped one by
default. A run that dreamt beside other runs' Ms (``dream.ensemble``) ships without
them: its config dreams with its own M alone, and ``shipped.json`` records the ensemble
under ``dream_ensemble``.
``--fp16`` stores V's and M's floating-point tensors in half precision (half the size);
they load into fp32 models, which the export checks before it finishes. DEST is written
in full beside itself and renamed into place, and a DEST that exists non-empty is refused.

``--round N`` ships round ``N`` of Ha's iterative training (``run.iterations``) as that
round left it: its M and C from ``iterations/round_<N>/`` (V is trained in round 1 only),
so a finished round can be played, dreamt or trained on (``train_controller.py
--world-model``) while the run goes on or after its run directory is lost. Its dream
start latents are those of the training episodes that round's M saw. ``--memory-epoch
E`` ships M's weights of epoch E instead (kept by ``memory.keep_epochs``; give the round
that trained it for its start latents), with the run's or round's C: a world model for
``train_controller.py --world-model`` to train C on, so that M's epoch can be chosen by
the controllers its dream trains.

A shipped directory is a run for evaluate.py and dream.py that is only read: their
outputs go to ``runs/pretrained/<DEST's name>/`` under the working directory (or
``--out``); training entry points refuse it (see :class:`worldmodels.run_dir.RunDir`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from agents.agent_round import round_in_place
from agents.iterations import round_start_latents
from agents.sb3 import SB3_ALGORITHMS, sb3_controller
from envs.dream_env import without_ensemble
from worldmodels.checkpoint import (
    file_digest,
    load_model,
    load_weights,
    read_header,
    read_json,
    save_model,
    write_json_atomic,
)
from worldmodels.config import command_parser, save_config
from worldmodels.dream import read_start_latents
from worldmodels.errors import InputError, run_cli
from worldmodels.memory import checkpoint_kinds
from worldmodels.run_dir import CONTROLLER_WEIGHTS, SHIPPED_FILE, ControllerFiles, RunDir
from worldmodels.shards import ShardError, write_npz_atomic

#: the file that marks DEST.partial as an export's, which a later export may delete
PARTIAL_MARK = ".export_in_progress"


def sha256(path: Path) -> str:
    """The full SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _policy_files(policies: ControllerFiles, cfg: Any, policy: str,
                  weights: str) -> tuple[Path, Path]:
    """(weights, description) of the policy to ship from ``policies`` (a run's or a
    round's controller files), checked to exist."""
    if policy == "controller":
        if weights not in CONTROLLER_WEIGHTS:
            raise InputError(f"--weights must be one of {', '.join(CONTROLLER_WEIGHTS)}")
        controller = policies.weights(weights)
        if not controller.exists():
            raise InputError(f"{controller}: no such controller (CMA-ES writes "
                             "selected.safetensors when eval_every > 0); choose another "
                             "with --weights")
        return controller, Path(str(controller) + ".json")
    if policy not in SB3_ALGORITHMS:
        raise InputError(f"--policy must be controller or one of {', '.join(SB3_ALGORITHMS)}")
    files = policies.sb3(policy, cfg.controller.environment)
    for path in files:
        if not path.exists():
            raise InputError(f"{path}: no {policy} policy there (train_controller.py "
                             f"--algo {policy})")
    return files


def _check_epoch_in_round(run: RunDir, cfg: Any, epoch: int, round_number: int | None) -> None:
    """Refuse an M epoch that did not train on round ``round_number``'s episodes (whose
    start latents and C ship with it): it must come after the round's first epoch and,
    unless the round is the run's last, not after its last. A run of several rounds
    needs the round named."""
    if round_number is None:
        if run.plays_rounds and cfg.run.iterations > 1:
            raise InputError(f"{run.path}: --memory-epoch on a run of {cfg.run.iterations} "
                             "rounds needs --round, the round whose episodes epoch "
                             f"{epoch} trained on")
        return
    done = read_json(run.round(round_number).summary, {}).get("memory", {})
    start = int(done.get("round_start_epoch", 0))
    end = int(done.get("epochs_done", 0)) if round_number < cfg.run.iterations else None
    if epoch <= start or (end is not None and epoch > end):
        span = f"{start + 1}-{end}" if end is not None else f"{start + 1} on"
        raise InputError(f"{run.path}: epoch {epoch} of M is not of round {round_number} "
                         f"(its epochs: {span})")


def export(run_path: Path, dest: Path, fp16: bool = False,
           weights: str | None = None, overrides: list[str] | None = None,
           policy: str = "controller", round_number: int | None = None,
           memory_epoch: int | None = None) -> dict[str, Any]:
    """Write the shipped agent of the run at ``run_path`` to ``dest``; returns what
    ``shipped.json`` holds. ``overrides`` (dotted ``key=value``) change the shipped
    config where :meth:`RunDir.load_config` allows a trained run to (how it plays, not
    what its files fix). ``policy``: ``controller`` (CMA-ES's ``weights``; None: the
    run's default, ``selected`` else ``best``, as evaluate.py plays) or an SB3
    algorithm whose policy the run trained. ``round_number``: ship that finished round
    of iterative training (its kept M and C) instead of the run's latest.
    ``memory_epoch``: ship M's weights of that scored epoch, kept by
    ``memory.keep_epochs``, instead of the chosen epoch's."""
    run, dest = RunDir(run_path), Path(dest).expanduser().absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InputError(f"{dest}: exists and is not an empty directory; ship to a new one")
    # a whole, valid config; overrides only where a trained run allows them
    cfg = run.load_config(list(overrides or []), trained=True)
    # the other Ms a dream ran beside M are not shipped: the agent dreams with M alone
    ensemble = cfg.dream.ensemble
    if ensemble:
        cfg = without_ensemble(cfg)
        print(f"note: dream.ensemble ({ensemble}) is not shipped: the agent dreams with its "
              f"own M alone (shipped.json records the ensemble C was trained in)")
    if round_number is None:
        policies, memory_path = run.controller, run.memory.weights("best")
    else:
        if not run.plays_rounds:  # its iterations/ would be another run's
            raise InputError(f"{run.home}: --round ships a round this run played; it "
                             "plays none (a run on another's world model, or a shipped agent)")
        kept = run.round(round_number)
        if not kept.summary.is_file():
            raise InputError(f"{kept.summary}: round {round_number} of {run.path} is not "
                             f"finished (run.iterations={cfg.run.iterations})")
        policies, memory_path = kept.controller, kept.memory.best
    if memory_epoch is not None:
        _check_epoch_in_round(run, cfg, memory_epoch, round_number)
        memory_path = run.memory.epoch_weights(memory_epoch)
        if not memory_path.is_file():
            kept = sorted(p.stem for p in memory_path.parent.glob("epoch_*.safetensors"))
            raise InputError(f"{memory_path}: no weights kept of epoch {memory_epoch} (kept: "
                             f"{', '.join(kept) or 'none; train M with memory.keep_epochs=true'})")
    # the round shipped: --round N, or the earlier round run.agent_round=best put in place
    shipped_round = round_number if round_number is not None else (
        round_in_place(run) if run.agent_round_file.exists() else None)
    weights = weights or policies.default_weights()
    controller, sidecar = _policy_files(policies, cfg, policy, weights)
    vae = run.load_vae(cfg.vae.z_dim)
    memory = load_model(memory_path, kinds=checkpoint_kinds())
    run.check_memory_fits(memory_path, memory)  # M of this V (not trained again since)
    if policy == "controller":  # a bad file is named where it is, before anything is written
        load_weights(controller, run.new_controller(cfg, run.action_space(), memory))
    memory_meta = {**run.memory_meta(), **read_header(memory_path).get("meta", {})}
    if memory_epoch is not None or "weights" not in memory_meta:  # (a shipped M's: "best")
        memory_meta["weights"] = memory_path.stem
    dtype = torch.float16 if fp16 else None
    partial = dest.with_name(dest.name + ".partial")
    mark = partial / PARTIAL_MARK
    if partial.exists() or partial.is_symlink():
        if not (partial.is_dir() and not partial.is_symlink() and mark.is_file()):
            raise InputError(f"{partial}: exists and is not an export's (no {PARTIAL_MARK} "
                             "in it), so it is left as it is; move it away, or give "
                             "another DEST")
        shutil.rmtree(partial)  # an export killed half way
    partial.mkdir(parents=True)
    mark.touch()  # (removed before the rename: the shipped agent holds no mark)
    with _removed_on_failure(partial):  # a refused export leaves nothing behind
        shipped = RunDir(partial)
        if overrides or ensemble:
            save_config(cfg, shipped.config_file)
        else:
            shutil.copyfile(run.config_file, shipped.config_file)
        save_model(shipped.vae.model, vae, meta=read_header(run.vae.model).get("meta", {}),
                   dtype=dtype)
        if "vae_digest" in memory_meta:  # the same V weights, in the shipped V's file
            memory_meta["vae_digest"] = file_digest(shipped.vae.model)
        save_model(shipped.memory.model, memory, meta=memory_meta, dtype=dtype)
        # a shipped agent's (under a run on its world model), or those of the earlier round
        # that run.agent_round=best put in the run's places; --round N computes round N's
        if round_number is None and run.dream_starts.exists():
            read_start_latents(run.dream_starts, cfg.vae.z_dim)  # (checked before it ships)
            shutil.copyfile(run.dream_starts, shipped.dream_starts)
        else:
            try:  # what dreams start from (dream.py, evaluate.py --in-dream)
                # with --round, the episodes that round's M trained on
                mu0, logvar0 = round_start_latents(cfg, run, round_number)
                write_npz_atomic(shipped.dream_starts,
                                 {"mu": mu0.numpy(), "logvar": logvar0.numpy()})
            except ShardError as err:  # (no latents kept, or none usable: the real env only)
                print(f"note: no dream start latents shipped ({err}): the agent plays the real "
                      "env only")
        target = shipped.controller.dir / controller.name
        target.parent.mkdir(parents=True)
        shutil.copyfile(controller, target)
        if sidecar.exists():
            shutil.copyfile(sidecar, shipped.controller.dir / sidecar.name)
        # the shipped parts load into the fp32 models a run builds
        loaded = [shipped.load_vae(cfg.vae.z_dim), shipped.load_memory()]
        agent_cfg = shipped.load_config(rounds=False)  # (shipped.json comes last)
        if policy == "controller":
            loaded.append(shipped.load_controller(agent_cfg, shipped.action_space(), loaded[1],
                                                  weights))
            meta = read_header(controller).get("meta", {})
        else:
            loaded.append(sb3_controller(shipped, agent_cfg, policy,
                                         agent_cfg.controller.environment).policy)
            meta = json.loads(sidecar.read_text())
        for model in loaded:
            dtypes = {p.dtype for p in model.state_dict().values() if p.is_floating_point()}
            if dtypes != {torch.float32}:
                raise InputError(f"{partial}: a shipped model loads as {dtypes}, not float32")
        files = {str(p.relative_to(partial)): {"sha256": sha256(p), "bytes": p.stat().st_size}
                 for p in sorted(partial.rglob("*")) if p.is_file() and p != mark}
        info = {"source_run": str(run.home), "env": cfg.env.id, "policy": policy,
                **({"weights": weights} if policy == "controller" else
                   {"sb3_environment": cfg.controller.environment}),
                **({"world_model": str(run.path)} if run.borrows_world_model else {}),
                **({"round": shipped_round} if shipped_round is not None else {}),
                **({"memory_epoch": memory_epoch} if memory_epoch is not None else {}),
                **({"dream_ensemble": ensemble} if ensemble else {}),
                "controller_meta": meta,
                "config_overrides": list(overrides or []), "fp16": fp16,
                "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "bytes": sum(f["bytes"] for f in files.values()), "files": files}
        write_json_atomic(partial / SHIPPED_FILE, info)
        if dest.exists():
            dest.rmdir()  # empty, checked above
        mark.unlink()
        partial.rename(dest)
    return info


@contextmanager
def _removed_on_failure(directory: Path) -> Iterator[None]:
    """Delete ``directory`` (an export's ``.partial``) if the block raises."""
    try:
        yield
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def main(argv: list[str]) -> dict[str, Any]:
    parser = command_parser(__doc__)
    parser.add_argument("run", type=Path, help="the trained run's directory")
    parser.add_argument("dest", type=Path, help="a new (or empty) directory")
    parser.add_argument("--fp16", action="store_true",
                        help="store V and M in half precision (they load as fp32)")
    parser.add_argument("--weights", choices=list(CONTROLLER_WEIGHTS), default=None,
                        help="the controller to ship (default: CMA-ES's selected one, else "
                             "its best, as evaluate.py plays)")
    parser.add_argument("--policy", choices=["controller", *SB3_ALGORITHMS],
                        default="controller",
                        help="ship CMA-ES's controller (default) or the run's SB3 policy")
    parser.add_argument("--round", type=int, default=None, metavar="N", dest="round_number",
                        help="ship finished round N of iterative training (run.iterations) "
                             "instead of the run's latest M and C")
    parser.add_argument("--memory-epoch", type=int, default=None, metavar="E",
                        help="ship M's weights of scored epoch E, kept in memory/epochs/ "
                             "(memory.keep_epochs=true)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides of the shipped config.yaml that a trained run "
                             "allows, e.g. env.direct_render=false")
    args = parser.parse_intermixed_args(argv)  # the overrides may follow --fp16
    info = export(args.run, args.dest, args.fp16, args.weights, args.overrides, args.policy,
                  args.round_number, args.memory_epoch)
    what = f"controller {info['weights']}" if args.policy == "controller" else args.policy
    if args.round_number is not None:
        what += f" of round {args.round_number}"
    if args.memory_epoch is not None:
        what += f", M of epoch {args.memory_epoch}"
    print(f"{args.dest}: {len(info['files'])} files, {info['bytes'] / 1e6:.1f} MB, "
          f"{what}" + (", V and M in fp16" if args.fp16 else ""))
    return info


if __name__ == "__main__":
    run_cli(main)
