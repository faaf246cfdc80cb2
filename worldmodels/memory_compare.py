"""Compare M configurations on the same latents, same budget, several seeds.

Each (variant, seed) trains into ``<run>/memory_compare/<variant>__s<seed>/`` and
resumes like any M run, so an interrupted comparison picks up where it stopped.
:func:`write_results` writes the table (``results.md``, ``results.json``).

The data curve (:func:`curve`): every variant and seed trained again on N of the
training episodes for each N asked (:func:`~worldmodels.datasets.nested_subset`),
scored on the same held-out episodes, into
``memory_compare/curve/n<N>_e<epochs>/<variant>__s<seed>/`` (the full-data point with
``memory.epochs`` is the table's own runs). The budget rule is ``steps`` (each size gets
about the gradient steps of ``memory.epochs`` epochs over the reference size, by default
the largest: epochs and ``memory.eval_every`` scaled by reference / N and rounded to
whole epochs, so every size is scored on the held-out episodes about as often per
gradient step) or ``epochs``
(``memory.epochs`` for every size). Either way the reported figure is the best held-out
epoch's (see :mod:`worldmodels.frmdn_training`).
:func:`write_curve` writes ``curve.md``, ``curve.json`` and ``curve.png``.

Figures are the headline held-out NLL (nats per latent dimension): mean over seeds ±
its standard error (sample std / sqrt(seeds)). A variant's gap to the RMDN is the
mean of its per-seed differences from the RMDN of the same seed (same data, same z
draws), ± the standard error of those differences.
"""

from __future__ import annotations

import copy
import math
import statistics
from pathlib import Path
from typing import Any

from worldmodels.checkpoint import read_json, write_json_atomic, write_text_atomic
from worldmodels.config import ConfigError, ExperimentConfig, merge_into, to_dict, validate
from worldmodels.frmdn_training import latent_split, report_dict, train_memory
from worldmodels.pictures import plot_errorbars
from worldmodels.run_dir import RunDir

#: the ``memory.*`` keys the comparison varies: every variant sets each of them, so none
#: follows a default that may change (an unset flow_conditional once made frmdn_diag
#: equal frmdn_diag_conditional)
VARIED = ("kind", "flow", "precision", "flow_conditional")

#: name -> ``memory.*`` values; the RMDN baseline is the mixture with no flow (a flow's
#: conditioning does not apply to it)
def _frmdn(flow: str, precision: str, conditional: bool) -> dict[str, Any]:
    return {"kind": "frmdn", "flow": flow, "precision": precision,
            "flow_conditional": conditional}


VARIANTS: dict[str, dict[str, Any]] = {
    "rmdn_diag": _frmdn("none", "diag", False),
    "frmdn_diag": _frmdn("maf", "diag", False),
    "frmdn_square": _frmdn("maf", "square", False),
    "frmdn_overcomplete": _frmdn("maf", "overcomplete", False),
    "frmdn_diag_conditional": _frmdn("maf", "diag", True),
    "frmdn_square_conditional": _frmdn("maf", "square", True),
    # the dream's FRMDN: a coupling flow inverts in two passes, a MAF in z_dim
    "frmdn_square_coupling_conditional": _frmdn("coupling", "square", True),
    # its ablation: the same flow with a diagonal precision (what the tied U adds)
    "frmdn_diag_coupling_conditional": _frmdn("coupling", "diag", True),
    # Ha & Schmidhuber's own M: a mixture per dimension of z (worldmodels/mdn_rnn.py); it
    # reads none of the FRMDN's keys, which are set all the same
    "mdn_rnn": {"kind": "mdn_rnn", "flow": "none", "precision": "diag",
                "flow_conditional": False},
}
#: compare_memory.py's default set: the paper's variants (MAF flows) and the baseline
PAPER_VARIANTS = tuple(v for v in VARIANTS if "coupling" not in v and v != "mdn_rnn")


def shared_settings(vcfg: ExperimentConfig) -> dict[str, Any]:
    """What the rows of one table share, whatever their variant: ``memory.*`` but the
    :data:`VARIED` keys (epochs, lr, sizes, ...) and ``data.*`` (the split)."""
    d = to_dict(vcfg)
    return {"memory": {k: v for k, v in d["memory"].items() if k not in VARIED},
            "data": d["data"]}


def variant_config(cfg: ExperimentConfig, name: str) -> ExperimentConfig:
    """``cfg`` with variant ``name``'s ``memory.*`` values, checked like any config."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown variant '{name}' (known: {', '.join(VARIANTS)})")
    out = copy.deepcopy(cfg)
    merge_into(out, {"memory": VARIANTS[name]}, f"variant '{name}'")
    out.memory.select_max_held = 0.0  # variants are compared by held-out NLL alone
    validate(out)
    return out


def run_config(cfg: ExperimentConfig, run: RunDir) -> ExperimentConfig:
    """What the comparison writes as the run's ``config.yaml``: ``cfg`` with the run's
    own ``memory.*`` and ``data.*``. Those given to compare_memory.py describe the
    variants' training, not the run's M: written there, the run's next M stage would
    train its own M on with them, and its C would be refused as scored with another M."""
    if not run.has_config():
        return cfg
    saved = run.load_config(trained=False)
    out = copy.deepcopy(cfg)
    out.memory, out.data = saved.memory, saved.data
    return out


BASELINE = "rmdn_diag"
BUDGETS = ("steps", "epochs")


def _point_dir(run: RunDir, cfg: ExperimentConfig, n: int, epochs: int, available: int,
               eval_every: int = 1) -> Path:
    """Where the runs of ``n`` training episodes and ``epochs`` epochs, scored every
    ``eval_every`` epochs, go (a point trained under another scoring rule is not reused)."""
    if n in (0, available) and epochs == cfg.memory.epochs and eval_every == cfg.memory.eval_every:
        return run.memory_compare_dir
    every = f"_k{eval_every}" if eval_every != 1 else ""
    return run.memory_compare_dir / "curve" / f"n{n or available}_e{epochs}{every}"


def compare(cfg: ExperimentConfig, run: RunDir, variants: list[str], seeds: list[int],
            progress: bool = True, train_episodes: int = 0, epochs: int = 0,
            eval_every: int = 0) -> list[dict[str, Any]]:
    """Train every variant with every seed on the run's latents (resuming each): on the
    first ``train_episodes`` training episodes (0: all), for ``epochs`` epochs (0:
    ``memory.epochs``), scored on the held-out episodes every ``eval_every`` epochs (0:
    ``memory.eval_every``)."""
    for name in variants:  # refuse an unknown variant or a bad variant config up front
        variant_config(cfg, name)
    train, _, _ = latent_split(cfg, run)  # the run has usable latents of its V
    if train_episodes > len(train):
        raise ConfigError(f"{train_episodes} training episodes asked, {len(train)} exist")
    run.write_config(run_config(cfg, run), outputs=(run.memory_compare_dir,))
    rows, m = [], cfg.memory
    for name in variants:
        vcfg = variant_config(cfg, name)
        if epochs or eval_every:
            # patience (in epochs) scales with the scoring interval; it stays on if it was
            scale = (eval_every or m.eval_every) / m.eval_every
            patience = max(1, round(m.patience * scale)) if m.patience else 0
            merge_into(vcfg, {"memory": {"epochs": epochs or m.epochs,
                                         "eval_every": eval_every or m.eval_every,
                                         "patience": patience}}, "compare")
            validate(vcfg)
        where = _point_dir(run, cfg, train_episodes, vcfg.memory.epochs, len(train),
                           vcfg.memory.eval_every)
        for seed in seeds:
            report = report_dict(train_memory(vcfg, run, where / f"{name}__s{seed}", seed=seed,
                                              progress=progress,
                                              train_episodes=train_episodes))
            rows.append({"variant": name, "seed": seed,
                         "train_episodes": train_episodes or len(train),
                         "epochs": vcfg.memory.epochs, **report,
                         "settings": shared_settings(vcfg)})
    return rows


def curve(cfg: ExperimentConfig, run: RunDir, variants: list[str], seeds: list[int],
          sizes: list[int], budget: str = "steps", progress: bool = True,
          budget_episodes: int = 0) -> list[dict[str, Any]]:
    """The data curve: :func:`compare` for each training-set size in ``sizes`` under the
    ``budget`` rule (see the module's docstring). ``budget_episodes`` (0: the largest
    size) is the size whose ``memory.epochs`` set the step budget, so that a larger size
    can be added to a finished curve without retraining its points."""
    if budget not in BUDGETS:
        raise ConfigError(f"budget must be one of {', '.join(BUDGETS)}, not '{budget}'")
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"training-set sizes must be positive, not {sizes}")
    available = len(latent_split(cfg, run)[0])
    if max(sizes) > available:
        raise ConfigError(f"{max(sizes)} training episodes asked, {available} exist")
    if budget_episodes < 0:
        raise ConfigError(f"the budget's size must be positive, not {budget_episodes}")
    reference, rows = budget_episodes or max(sizes), []
    for n in sorted(set(sizes)):
        # steps: about the reference size's gradient steps and its number of held-out
        # scorings, so that no size is scored more or less often per gradient step
        epochs, eval_every = cfg.memory.epochs, cfg.memory.eval_every
        if budget == "steps":
            epochs = max(1, round(cfg.memory.epochs * reference / n))
            eval_every = max(1, round(cfg.memory.eval_every * reference / n))
        rows += compare(cfg, run, variants, seeds, progress, train_episodes=n, epochs=epochs,
                        eval_every=eval_every)
    return rows


def mean_se(values: list[float]) -> tuple[float, float]:
    """(mean, standard error = sample std / sqrt(n)); the error is nan for one value."""
    mean = statistics.mean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return mean, se


def gap_to_baseline(rows: list[dict[str, Any]], name: str,
                    key: str = "holdout_nll") -> tuple[float, float] | None:
    """(mean, standard error) of variant ``name``'s per-seed difference from the RMDN of
    the same seed and training-set size; None without such RMDN runs."""
    base = {(r["seed"], r.get("train_episodes")): r[key] for r in rows
            if r["variant"] == BASELINE}
    diffs = [r[key] - base[(r["seed"], r.get("train_episodes"))] for r in rows
             if r["variant"] == name and (r["seed"], r.get("train_episodes")) in base]
    return mean_se(diffs) if diffs else None


def _fmt(pair: tuple[float, float] | None, sign: bool = False) -> str:
    if pair is None:
        return "—"
    mean, se = pair
    text = f"{mean:+.4f}" if sign else f"{mean:.4f}"
    return text if se != se else f"{text} ± {se:.4f}"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per variant, mean ± standard error over seeds."""
    lines = [f"| M | held-out NLL (nats/dim) | gap to {BASELINE} | z = mu | reset windows "
             "| draw SE | best epoch | reward MSE | done acc | s/epoch (median) | params "
             "| seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    baseline = [r["seconds_per_epoch"] for r in rows if r["variant"] == BASELINE]
    for name in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == name]

        def of(key: str, rs: list[dict[str, Any]] = rs) -> tuple[float, float]:
            return mean_se([r.get(key, math.nan) for r in rs])

        secs = statistics.mean(r["seconds_per_epoch"] for r in rs)
        ratio = f" ({secs / statistics.mean(baseline):.2f}x)" if baseline else ""
        gap = None if name == BASELINE else gap_to_baseline(rows, name)
        draw_se = statistics.mean(r.get("holdout_nll_se", math.nan) for r in rs)
        best = "/".join(str(r.get("best_epoch", "?")) for r in rs)
        # the epochs each M trained (a directory trained further than asked says so)
        done = "/".join(dict.fromkeys(str(r.get("epochs_done", r.get("epochs"))) for r in rs))
        lines.append(
            f"| {name} | {_fmt(of('holdout_nll'))} | {_fmt(gap, sign=True)} "
            f"| {_fmt(of('holdout_nll_mu'))} | {_fmt(of('holdout_nll_windows'))} "
            f"| {draw_se:.4f} | {best} of {done} "
            f"| {_fmt(of('holdout_reward_mse'))} | {_fmt(of('holdout_done_acc'))} "
            f"| {secs:.1f}{ratio} | {rs[0]['parameters']} | {len(rs)} |")
    return "\n".join(lines)


def curve_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per (training-set size, variant)."""
    lines = [f"| training episodes | epochs | M | held-out NLL (nats/dim) | gap to {BASELINE} "
             "| best epochs | seeds |", "|---|---|---|---|---|---|---|"]
    for n in sorted({r["train_episodes"] for r in rows}):
        at = [r for r in rows if r["train_episodes"] == n]
        for name in dict.fromkeys(r["variant"] for r in at):
            rs = [r for r in at if r["variant"] == name]
            gap = None if name == BASELINE else gap_to_baseline(at, name)
            lines.append(f"| {n} | {rs[0]['epochs']} | {name} "
                         f"| {_fmt(mean_se([r['holdout_nll'] for r in rs]))} "
                         f"| {_fmt(gap, sign=True)} "
                         f"| {'/'.join(str(r['best_epoch']) for r in rs)} | {len(rs)} |")
    return "\n".join(lines)


def _row_key(row: dict[str, Any]) -> tuple[Any, Any, Any]:
    return row["variant"], row["seed"], row.get("train_episodes")


def write_results(run: RunDir, rows: list[dict[str, Any]]) -> str:
    """``memory_compare/results.json`` and ``results.md`` (the table, returned).

    The table keeps the rows of earlier commands on the same training-set size and the
    same :func:`shared_settings` that ``rows`` does not redo (e.g. ``--variants mdn_rnn``
    after the paper's variants), in their order; a (variant, seed) trained again replaces
    its old row. Rows of other settings (another ``memory.epochs``, say) are left out of
    the table, said, and their Ms kept; rows from before settings were recorded are kept."""
    path = run.memory_compare_dir / "results.json"
    new = {_row_key(r): r for r in rows}
    sizes = {r.get("train_episodes") for r in rows}
    settings = [r["settings"] for r in rows if "settings" in r]
    old = [r for r in read_json(path, [], keys=("variant", "seed", "holdout_nll"))
           if r.get("train_episodes") in sizes]
    kept = [r for r in old if "settings" not in r or not settings or r["settings"] in settings]
    if len(kept) < len(old):
        print(f"{path}: {len(old) - len(kept)} earlier row(s) trained with other memory.* or "
              "data.* settings are left out of the table (their Ms stay)")
    rows = ([new.pop(_row_key(r), r) for r in kept]  # an old row, or its new one in place
            + [r for r in rows if _row_key(r) in new])
    text = table(rows)
    write_json_atomic(path, rows)
    write_text_atomic(run.memory_compare_dir / "results.md", text + "\n")
    return text


def write_curve(run: RunDir, rows: list[dict[str, Any]], budget: str) -> str:
    """``memory_compare/curve.json``, ``curve.md`` (returned) and ``curve.png``: held-out
    NLL against training episodes, one line per variant, ± standard error over seeds."""
    text = curve_table(rows)
    write_json_atomic(run.memory_compare_dir / "curve.json", rows)
    write_text_atomic(run.memory_compare_dir / "curve.md", text + "\n")
    series = {}
    for name in dict.fromkeys(r["variant"] for r in rows):
        sizes = sorted({r["train_episodes"] for r in rows if r["variant"] == name})
        stats = [mean_se([r["holdout_nll"] for r in rows
                          if r["variant"] == name and r["train_episodes"] == n]) for n in sizes]
        series[name] = (sizes, [m for m, _ in stats], [0.0 if e != e else e for _, e in stats])
    sizes = [r["train_episodes"] for r in rows]
    plot_errorbars(run.memory_compare_dir / "curve.png", series,
                   f"M's held-out NLL against data (budget: same {budget}; ± SE over seeds)",
                   "training episodes", "held-out NLL (nats / latent dim)",
                   logx=max(sizes) >= 10 * min(sizes))
    return text
