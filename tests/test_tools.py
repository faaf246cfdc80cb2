"""The diagnostic tools refuse bad input in one line, naming it, and every script in
tools/ and benchmarks/ imports the checkout it is run from."""

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tools.average_controllers import average
from worldmodels.errors import InputError


def test_average_controllers_names_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "not_a_run").mkdir()
    with pytest.raises(InputError, match="not_a_run.*no trained M"):
        average(tmp_path / "out", [tmp_path / "not_a_run"])
    assert not (tmp_path / "out").exists()


def test_average_controllers_never_writes_into_an_existing_run(tmp_path):
    member = tmp_path / "member"
    (member / "controller").mkdir(parents=True)
    weights = member / "controller" / "best.safetensors"
    weights.write_bytes(b"trained")
    other = tmp_path / "other"
    shutil.copytree(member, other)
    for out, why in ((member, "is one of the members"), (weights, "is a file"),
                     (other, "not an average")):
        with pytest.raises(InputError, match=f"{why}.*nothing is overwritten"):
            average(out, [member, member])
    assert weights.read_bytes() == b"trained"


ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "tools").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
REPO_PACKAGES = {"worldmodels", "agents", "envs", "configs", "tools", "benchmarks"}


def _imported_roots(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name.split(".")[0] for alias in node.names}
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return {node.module.split(".")[0]}
    return set()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_puts_its_checkout_first_on_the_path(script):
    """`python tools/x.py` puts tools/ first on sys.path, not the checkout: without the
    insert, a second clone's script would import whichever copy pip installed."""
    body = ast.parse(script.read_text()).body
    inserts = [i for i, node in enumerate(body) if "sys.path.insert(0" in ast.unparse(node)]
    repo_imports = [i for i, node in enumerate(body) if _imported_roots(node) & REPO_PACKAGES]
    assert inserts, f"{script}: no sys.path.insert(0, <checkout>)"
    assert not repo_imports or inserts[0] < repo_imports[0], \
        f"{script}: imports a repository package before putting its checkout on sys.path"


def test_a_script_imports_its_own_checkout_over_another_copy(tmp_path):
    """An importable `worldmodels` elsewhere on the path (an installed copy of another
    clone) does not shadow the checkout the script is run from."""
    shadow = tmp_path / "worldmodels"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the other copy was imported')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "score_vae.py"), "--help"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


AGENT = {"weights": "c1", "vae": "v1", "memory": "m1"}


def _run_with_eval(path: Path, own_seed: int, files: dict[str, list[tuple[int, float]]],
                   agent: dict[str, str] | None = AGENT):
    """A run directory (config only) whose eval/ holds ``files``: name -> (seed, return),
    each with a JSON naming ``agent``'s digests (None: no JSON, as before digests)."""
    from worldmodels.config import load_config, save_config
    from worldmodels.run_dir import RunDir

    run = RunDir(path)
    run.eval_dir.mkdir(parents=True)
    save_config(load_config("carracing", ["quick"], [f"seed={own_seed}"]), run.config_file)
    run.controller.dir.mkdir()  # CMA-ES selected a controller: evaluate.py's default
    run.controller.selected.write_bytes(b"")
    for name, rows in files.items():
        lines = ["episode,seed,return,steps"] + [f"{i},{s},{r},100"
                                                 for i, (s, r) in enumerate(rows)]
        (run.eval_dir / f"{name}.csv").write_text("\n".join(lines) + "\n")
        if agent is not None:
            (run.eval_dir / f"{name}.json").write_text(json.dumps({"digests": agent}))
    return run


def test_runs_summary_pools_each_runs_seed_sets_and_gives_the_median_over_runs(
        tmp_path, capsys):
    from tools.runs_summary import main

    rng = np.random.default_rng(0)
    pooled = {}
    for own in (0, 1, 2):  # each run's own seed set is unsuffixed, the other is _seed<s>
        sets = {s: [(1000 * s + i, float(rng.normal(500, 100))) for i in range(5)]
                for s in (0, 1)}
        _run_with_eval(tmp_path / f"r{own}", own, {
            ("controller_selected" if s == own else f"controller_selected_seed{s}"): rows
            for s, rows in sets.items()}, {**AGENT, "weights": f"c{own}"})
        pooled[own] = [r for rows in sets.values() for _, r in rows]
    scores = main([str(tmp_path / f"r{i}") for i in (0, 1, 2)] + ["--seeds", "0,1"])
    assert [len(s.returns) for s in scores] == [10, 10, 10]
    assert [s.mean for s in scores] == pytest.approx([np.mean(pooled[i]) for i in (0, 1, 2)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    median = float(np.median([np.mean(pooled[i]) for i in (0, 1, 2)]))
    assert last.startswith(f"median {median:.1f} over 3 runs")
    # a run named twice, or two runs of one agent (a run and its export), are one run
    with pytest.raises(InputError, match="again; the median is over independent runs"):
        main([str(tmp_path / "r0"), str(tmp_path / "r1"), str(tmp_path / "r0" / ".")])
    _run_with_eval(tmp_path / "export", 0, {"controller_selected": [(1, 1.0), (2, 2.0)]},
                   {**AGENT, "weights": "c1"})
    with pytest.raises(InputError, match=r"export: plays the agent of .*r1"):
        main([str(tmp_path / "r1"), str(tmp_path / "export")])


def test_runs_summary_reads_by_default_what_evaluate_writes_by_default(tmp_path):
    """A run without a selected controller (``controller.eval_every=0``): evaluate.py
    plays its best and writes ``controller.csv``, which the summary then reads (it named
    ``controller_selected.csv`` missing, with a command that did not write it)."""
    from tools.runs_summary import main

    run = _run_with_eval(tmp_path / "r", 0, {"controller": [(1, 1.0), (2, 3.0)]})
    run.controller.selected.unlink()
    run.controller.best.write_bytes(b"")
    assert main([str(run.path)])[0].files == ["controller.csv"]


def test_runs_summary_names_a_missing_evaluation_and_refuses_repeated_seeds(tmp_path):
    from tools.runs_summary import main

    _run_with_eval(tmp_path / "r", 0, {"controller_selected": [(1, 1.0), (2, 2.0)]})
    with pytest.raises(InputError, match=r"controller_selected_seed1\.csv: no such file.*"
                                         r"evaluate\.py --run .* seed=1"):
        main([str(tmp_path / "r"), "--seeds", "0,1"])
    _run_with_eval(tmp_path / "twice", 0, {"controller_selected": [(1, 1.0), (2, 2.0)],
                                           "controller_selected_seed1": [(2, 3.0)]})
    with pytest.raises(InputError, match="repeat env seeds"):
        main([str(tmp_path / "twice"), "--seeds", "0,1"])
    with pytest.raises(InputError, match="--seeds"):
        main([str(tmp_path / "r"), "--seeds", "0,x"])
    stale = _run_with_eval(tmp_path / "stale", 0, {"controller_selected": [(1, 1.0)],
                                                   "controller_selected_seed1": [(2, 3.0)]},
                           agent=None)
    with pytest.raises(InputError, match="--allow-unverified"):  # no digests recorded
        main([str(tmp_path / "stale"), "--seeds", "0,1"])
    assert len(main([str(tmp_path / "stale"), "--seeds", "0,1", "--allow-unverified"])[0]
               .returns) == 2
    # run.py's own file names the agent in its key; evaluate.py's in "digests"
    key = {"weights": "c1", "vae": "v1", "memory": "m1", "episodes": 1}
    (stale.eval_dir / "controller_selected.json").write_text(json.dumps({"key": key}))
    seed1 = stale.eval_dir / "controller_selected_seed1.json"
    seed1.write_text(json.dumps({"digests": {**AGENT, "memory": "m2"}}))  # M changed since
    with pytest.raises(InputError, match="different agents"):
        main([str(tmp_path / "stale"), "--seeds", "0,1"])
    seed1.write_text(json.dumps({"digests": AGENT}))
    assert len(main([str(tmp_path / "stale"), "--seeds", "0,1"])[0].returns) == 2


def test_dream_vs_real_ranks_and_refuses_what_it_cannot_compare(tiny_run, tmp_path):
    from agents.finalists import spearman
    from tools.dream_vs_real import main

    assert spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]) == pytest.approx(1.0)
    assert spearman([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert spearman([1.0, 2.0, 3.0], [1.0, 9.0, 2.0]) == pytest.approx(0.5)
    # ties share their average rank (scipy.stats.spearmanr's 0.866 here); NaN is no rank
    assert spearman([1.0, 1.0, 2.0], [1.0, 2.0, 3.0]) == pytest.approx(0.8660254)
    assert np.isnan(spearman([1.0, float("nan"), 2.0], [1.0, 2.0, 3.0]))
    from tests.conftest import run_of
    from worldmodels.config import ConfigError

    path = str(run_of(tiny_run))
    with pytest.raises(ConfigError, match="at least two runs"):
        main(["--runs", path])
    with pytest.raises(ConfigError, match="--dreams"):
        main(["--runs", f"{path},{path}", "--dreams", "0"])
    with pytest.raises(ConfigError, match="--real-seeds"):  # (was: a ValueError traceback)
        main(["--runs", f"{path},{path}", "--real-seeds", "x"])
    with pytest.raises(ConfigError, match="given twice in --runs"):
        main(["--runs", f"{path},{path}/", "--dreams", "1"])
    other = tmp_path / "other"
    shutil.copytree(path, other)
    with pytest.raises(ConfigError, match=r"only seed= and dream.\* overrides apply here, "
                                          r"not \['env.frame_skip=4'\]"):  # (was: ignored)
        main(["--runs", f"{path},{other}", "env.frame_skip=4"])


def test_terminal_frame_measures_the_black_frames_latent_and_counts_dream_steps(tiny_cfg):
    """Episodes whose last latent is V's latent of a black frame: distance 0 there, the
    terminal step's share of M's NLL as weighted, and every dream step that goes on is
    'near' for an infinite radius, none for a zero one."""
    from agents.cmaes import train_cmaes
    from tests.conftest import run_of
    from tests.test_dream import write_dream_run
    from tools.terminal_frame import main
    from worldmodels.run_dir import RunDir
    from worldmodels.shards import list_shards, write_npz_atomic

    cfg = write_dream_run(tiny_cfg, population=4, rollouts=1, generations=1)
    train_cmaes(cfg, progress=False)
    run = RunDir(run_of(cfg))
    with torch.no_grad():
        black = run.load_vae().encode_mean(torch.zeros(1, 64, 64, 3, dtype=torch.uint8))
    for path in list_shards(run.latents):
        with np.load(path, allow_pickle=False) as shard:
            data = {key: shard[key] for key in shard.files}
        data["mu"][-1] = black[0].numpy()
        write_npz_atomic(path, data)
    args = [str(run.path), "--latents", str(run.latents), "--every", "1", "--dreams", "5"]
    everywhere = main([*args, "--radius", "1e9"])
    assert everywhere["episodes"] == 6 and everywhere["last_distance_max"] < 1e-5
    assert everywhere["terminal_share"] == pytest.approx(6 / (6 * 12))
    share = everywhere["terminal_share"]
    assert everywhere["nll_with_terminal"] == pytest.approx(
        share * everywhere["terminal_nll"] + (1 - share) * everywhere["other_nll"])
    assert everywhere["dream_steps_on_from_black"] == everywhere["dream_steps"] - 5
    assert main([*args, "--radius", "1e-9"])["dream_steps_on_from_black"] == 0


TOOLS_WITH_OPTIONS = ["average_controllers", "done_along_real", "dream_action_check",
                      "dream_spread", "ensemble_eval", "export_pretrained", "frmdn_numerics",
                      "m_data_control", "m_on_policy", "runs_summary", "score_vae",
                      "terminal_frame"]


@pytest.mark.parametrize("tool", TOOLS_WITH_OPTIONS)
def test_a_tools_argument_error_is_one_line(tool, capsys):
    """An unknown option is `error: <prog>: ... (--help lists the options)`, exit 2, as
    for the staged scripts (the tools printed argparse's usage block)."""
    import importlib

    from worldmodels.errors import run_cli

    module = importlib.import_module(f"tools.{tool}")
    with pytest.raises(SystemExit) as stop:
        run_cli(module.main, ["--no-such-option"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "--help lists the options" in err


def test_score_vae_refuses_a_negative_frame_count(tmp_path):
    from tools.score_vae import main
    from worldmodels.config import ConfigError

    with pytest.raises(ConfigError, match=r"--frames must be >= 0 \(0: all\), got -5"):
        main(["--run", str(tmp_path), "--frames", "-5"])


def test_dream_spread_takes_a_discrete_runs_own_latents(tmp_path, capsys):
    """TakeCover's latents hold (T,) action indices, which its M one-hots: dream_spread
    compares them with M's number of actions, not their length (a review: every Discrete
    run was refused against its own latents); vectors for a Discrete M are refused."""
    from tests.test_frmdn_training import write_latents
    from tools import dream_spread

    run = tmp_path / "tc"
    shutil.copytree(Path(__file__).parent.parent / "pretrained" / "takecover", run)
    write_latents(run / "latents", n=2, T=6, z=64, discrete=True,
                  space={"type": "discrete", "n": 3, "start": 0})
    dream_spread.main([str(run), "--episodes", "2", "--samples", "2", "--taus", "1.0"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tc |")]
    assert len(rows) == 1 and all(np.isfinite(float(x)) for x in rows[0].split("|")[3:6])
    # a run of continuous actions against these indices
    racing = Path(__file__).parent.parent / "pretrained" / "carracing"
    with pytest.raises(InputError, match=r"carracing: its M takes z of 32 and actions of 3, "
                                         r".*hold z of 64 and action indices up to 2"):
        dream_spread.main([str(run), str(racing), "--episodes", "2", "--samples", "2"])


def test_finalists_of_a_shipped_agent_name_the_run_that_holds_their_history():
    """A shipped agent keeps no CMA-ES history, so its finalists cannot be rebuilt there:
    the tools that rebuild them (score_vote, score_finalists, ...) name the missing file
    and the run it was exported from (was: '... has 0 generations')."""
    import re

    from agents.finalists import finalists_of, rebuild
    from worldmodels.checkpoint import read_header
    from worldmodels.config import ConfigError
    from worldmodels.run_dir import RunDir

    run = RunDir(Path(__file__).parent.parent / "pretrained" / "takecover")
    cfg = run.load_config()
    points = finalists_of(read_header(run.controller.selected)["meta"], run.controller.selected)
    source = run.shipped_info()["source_run"]
    with pytest.raises(ConfigError, match=r"cmaes_history.npz: no such file.*shipped agent "
                                          rf"keeps none.*\({re.escape(source)}\)"):
        rebuild(cfg, run, points, cfg.seed)


def test_average_controllers_reads_every_member_before_writing(tmp_path):
    """A member without latents, or without a controller file to average, is refused
    before the average's run is begun (was: config.yaml, vae/ and memory/ written, then a
    traceback, leaving a half-made run)."""
    from worldmodels.checkpoint import CheckpointError

    member = tmp_path / "member"
    shutil.copytree(Path(__file__).parent.parent / "pretrained" / "takecover", member)
    (member / "shipped.json").unlink()  # (a run of its own: a shipped agent is only read)
    out = tmp_path / "out"
    with pytest.raises(InputError, match="latents: no such directory"):
        average(out, [member, member])
    assert not out.exists()
    (member / "latents").mkdir()
    with pytest.raises(CheckpointError, match=r"mean.safetensors"):
        average(out, [member, member])
    assert not out.exists()
