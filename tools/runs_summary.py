"""Independent runs side by side: each run's score pooled over report seed sets, then the
median and spread over the runs (the figure a recipe is judged by, not its best run).

    R=/work/runs
    python tools/runs_summary.py $R/VizdoomTakeCover-v1/solve2 $R/solve2-c1 $R/solve2-c2 \\
        --result controller_selected --seeds 0,1

For each run and each seed ``s`` of ``--seeds`` it reads the evaluation evaluate.py (or
run.py) wrote for that seed set: ``eval/<result>.csv`` for the run's own ``seed``,
``eval/<result>_seed<s>.csv`` for another (``evaluate.py --run RUN --episodes 100
seed=<s>``). A missing file is named with the command that writes it. The pooled
episodes of one run must all be distinct env seeds. Prints a markdown table (one row a
run: episodes, mean, std, min, max) and last ``median <M> over <N> runs (min <a>, max
<b>)``. Writes nothing.
"""

from __future__ import annotations

import csv
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from agents.evaluation import default_policy, result_name
from worldmodels.checkpoint import read_json
from worldmodels.config import command_parser
from worldmodels.errors import InputError, run_cli
from worldmodels.run_dir import RunDir


@dataclass(frozen=True)
class RunScore:
    """One run's pooled report episodes: the files read, their env seeds and returns."""

    run: str
    files: list[str]
    seeds: list[int]
    returns: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))


def default_result(run: RunDir) -> str:
    """The name of what ``evaluate.py --run RUN`` writes with no ``--policy`` or
    ``--weights``: the run's controller (``controller_selected``, else ``controller``
    for its best), or its SB3 policy."""
    policy = default_policy(run)
    return result_name(policy, run.controller.default_weights() if policy == "controller"
                       else "best")


def result_file(run: RunDir, result: str, seed: int) -> Path:
    """The CSV of ``result`` on seed set ``seed``: unsuffixed for the run's own seed."""
    own = run.load_config().seed
    return run.eval_dir / (f"{result}.csv" if seed == own else f"{result}_seed{seed}.csv")


def read_returns(path: Path) -> tuple[list[int], list[float]]:
    """(env seeds, returns) of an evaluation's CSV (episode, seed, return, steps)."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        return [int(r["seed"]) for r in rows], [float(r["return"]) for r in rows]
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: not an evaluation CSV (episode, seed, return, steps): "
                         f"{err}") from err


def played_agent(csv_path: Path) -> tuple[str, str, str] | None:
    """The digests of (C's weights, V, M) an evaluation played, from the JSON beside its
    CSV (evaluate.py's ``digests``, or run.py's ``key``); None if it names none."""
    summary = read_json(csv_path.with_suffix(".json"), {})
    if not isinstance(summary, dict):
        return None
    for found in (summary.get("digests"), summary.get("key")):
        if isinstance(found, dict) and all(found.get(k) for k in ("weights", "vae", "memory")):
            return found["weights"], found["vae"], found["memory"]
    return None


def run_score(path: Path, result: str | None, seeds: list[int], unverified: bool = False,
              ) -> RunScore:
    """``result``'s episodes of the run at ``path`` (None: what evaluate.py plays by
    default, :func:`default_result`), pooled over the seed sets ``seeds``; ``unverified``:
    pool files that do not say which agent they played."""
    run = RunDir(path)
    result = result or default_result(run)
    files, env_seeds, returns = [], [], []
    for seed in seeds:
        csv_path = result_file(run, result, seed)
        if not csv_path.is_file():
            raise InputError(f"{csv_path}: no such file; write it with `python evaluate.py "
                             f"--run {path} --episodes 100 seed={seed}` (with the policy "
                             f"and weights that give '{result}')")
        got_seeds, got_returns = read_returns(csv_path)
        if not got_returns:
            raise InputError(f"{csv_path}: no episodes")
        files.append(csv_path.name)
        env_seeds += got_seeds
        returns += got_returns
    agents = {f: played_agent(run.eval_dir / f) for f in files}
    unknown = [f for f, a in agents.items() if a is None]
    if len(files) > 1 and unknown and not unverified:
        raise InputError(f"{path}: {', '.join(unknown)} do(es) not say which weights, V and "
                         "M played (an evaluation written before digests were recorded); "
                         "evaluate again, or pass --allow-unverified")
    if len({a for a in agents.values() if a}) > 1:
        raise InputError(f"{path}: the files {', '.join(files)} scored different agents "
                         "(C, V or M differ); evaluate the run's current policy on every "
                         "seed set again")
    if len(set(env_seeds)) != len(env_seeds):
        raise InputError(f"{path}: the files {', '.join(files)} repeat env seeds; pool "
                         "different seed sets")
    return RunScore(str(path), files, env_seeds, returns)


def summary_lines(scores: list[RunScore]) -> list[str]:
    """The table (one row a run) and the closing median line."""
    lines = ["| run | files | episodes | mean | std | min | max |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {s.run} | {', '.join(s.files)} | {len(s.returns)} | {s.mean:.1f} | "
              f"{s.std:.1f} | {min(s.returns):.1f} | {max(s.returns):.1f} |" for s in scores]
    means = [s.mean for s in scores]
    lines.append(f"median {statistics.median(means):.1f} over {len(scores)} runs "
                 f"(min {min(means):.1f}, max {max(means):.1f})")
    return lines


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise InputError(f"--seeds must be comma-separated integers, got {text!r}") from err
    if not seeds or len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds must name distinct seed sets, got {text!r}")
    return seeds


def main(argv: list[str] | None = None) -> list[RunScore]:
    parser = command_parser(__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--result", default=None,
                        help="the evaluation's name in eval/ (controller_selected, ppo, ...; "
                             "default: what evaluate.py plays by default in each run)")
    parser.add_argument("--seeds", default="0",
                        help="report seed sets to pool per run, e.g. 0,1 (default 0)")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="pool evaluations that do not record the agent they played")
    args = parser.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    homes: dict[Path, Path] = {}
    for path in args.runs:  # a run named twice (a/., a link) is not two runs
        if path.resolve() in homes:
            raise InputError(f"{path}: the run {homes[path.resolve()]} again; the median is "
                             "over independent runs")
        homes[path.resolve()] = path
    scores = [run_score(path, args.result, seeds, args.allow_unverified)
              for path in args.runs]
    agents: dict[tuple[str, str, str], str] = {}
    for score in scores:  # a run and its export play one agent: not two runs either
        agent = played_agent(RunDir(Path(score.run)).eval_dir / score.files[0])
        if agent is not None and agent in agents:
            raise InputError(f"{score.run}: plays the agent of {agents[agent]} (the same C, V "
                             "and M digests); the median is over independent runs")
        if agent is not None:
            agents[agent] = score.run
    print("\n".join(summary_lines(scores)))
    return scores


if __name__ == "__main__":
    run_cli(main)
