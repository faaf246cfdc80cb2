"""Compare M configurations on the same latents, same budget, several seeds.

Each (variant, seed) trains into ``<run>/memory_compare/<variant>__s<seed>/`` and
resumes like any M run, so an interrupted comparison picks up where it stopped.
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

from worldmodels.checkpoint import write_json_atomic, write_text_atomic
from worldmodels.config import ConfigError, ExperimentConfig, merge_into, validate
from worldmodels.frmdn_training import latent_split, report_dict, train_memory
from worldmodels.run_dir import RunDir

#: the ``memory.*`` keys the comparison varies: every variant sets each of them, so none
#: follows a default that may change (an unset flow_conditional once made frmdn_diag
#: equal frmdn_diag_conditional)
VARIED = ("flow", "precision", "flow_conditional")

#: name -> ``memory.*`` values; the RMDN baseline is the mixture with no flow (a flow's
#: conditioning does not apply to it)
VARIANTS: dict[str, dict[str, Any]] = {
    "rmdn_diag": {"flow": "none", "precision": "diag", "flow_conditional": False},
    "frmdn_diag": {"flow": "maf", "precision": "diag", "flow_conditional": False},
    "frmdn_square": {"flow": "maf", "precision": "square", "flow_conditional": False},
    "frmdn_overcomplete": {"flow": "maf", "precision": "overcomplete",
                           "flow_conditional": False},
    "frmdn_diag_conditional": {"flow": "maf", "precision": "diag", "flow_conditional": True},
    "frmdn_square_conditional": {"flow": "maf", "precision": "square",
                                 "flow_conditional": True},
}


def variant_config(cfg: ExperimentConfig, name: str) -> ExperimentConfig:
    """``cfg`` with variant ``name``'s ``memory.*`` values, checked like any config."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown variant '{name}' (known: {', '.join(VARIANTS)})")
    out = copy.deepcopy(cfg)
    merge_into(out, {"memory": VARIANTS[name]}, f"variant '{name}'")
    validate(out)
    return out


def compare(cfg: ExperimentConfig, run: RunDir, variants: list[str], seeds: list[int],
            progress: bool = True) -> list[dict[str, Any]]:
    """Train every variant with every seed on the run's latents (resuming each)."""
    for name in variants:  # refuse an unknown variant or a bad variant config up front
        variant_config(cfg, name)
    latent_split(cfg, run)  # the run has usable latents of its V
    run.write_config(cfg, outputs=(run.memory_compare_dir,))  # inputs accepted
    rows = []
    for name in variants:
        vcfg = variant_config(cfg, name)
        for seed in seeds:
            out = run.memory_compare_dir / f"{name}__s{seed}"
            report = report_dict(train_memory(vcfg, run, out, seed=seed, progress=progress))
            rows.append({"variant": name, "seed": seed, **report})
    return rows


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per variant, mean ± std over seeds."""
    lines = ["| M | held-out NLL (nats/dim) | reward MSE | done acc | s/epoch (median) | params "
             "| seeds |",
             "|---|---|---|---|---|---|---|"]
    baseline = [r["seconds_per_epoch"] for r in rows if r["variant"] == "rmdn_diag"]
    for name in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == name]
        secs = statistics.mean(r["seconds_per_epoch"] for r in rs)
        ratio = f" ({secs / statistics.mean(baseline):.2f}x)" if baseline else ""
        lines.append(
            f"| {name} | {_mean_std([r['holdout_nll'] for r in rs])} "
            f"| {_mean_std([r['holdout_reward_mse'] for r in rs])} "
            f"| {_mean_std([r['holdout_done_acc'] for r in rs])} "
            f"| {secs:.1f}{ratio} | {rs[0]['parameters']} | {len(rs)} |")
    return "\n".join(lines)


def write_results(run: RunDir, rows: list[dict[str, Any]]) -> str:
    """``memory_compare/results.json`` and ``results.md`` (the table, returned)."""
    text = table(rows)
    write_json_atomic(run.memory_compare_dir / "results.json", rows)
    write_text_atomic(run.memory_compare_dir / "results.md", text + "\n")
    return text
