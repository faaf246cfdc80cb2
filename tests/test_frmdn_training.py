import json
from dataclasses import asdict

import numpy as np
import pytest

from tests.conftest import CAR_ACTIONS, run_of
from worldmodels.checkpoint import save_model
from worldmodels.config import ConfigError
from worldmodels.datasets import split_episodes
from worldmodels.frmdn_training import train_memory
from worldmodels.memory_compare import compare, table
from worldmodels.run_dir import RunDir
from worldmodels.shards import ShardError, write_npz_atomic
from worldmodels.vae import ConvVAE


def write_latents(directory, n=6, T=40, z=4, discrete=False, nan_in=None, digest=None,
                  logvar=-6.0, space=None):
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = np.random.default_rng(i)
        # a learnable process: z_{t+1} = 0.9 z_t + noise
        mu = np.zeros((T + 1, z), np.float32)
        for t in range(T):
            mu[t + 1] = 0.9 * mu[t] + 0.3 * rng.normal(size=z)
        if nan_in == i:  # finite in the shard (which refuses NaN), but its square overflows
            mu[5, 0] = np.float32(3e38)
        space = space or ({"type": "discrete", "n": 3} if discrete else CAR_ACTIONS)
        action = (rng.integers(0, 3, T) if discrete
                  else rng.uniform(-1, 1, (T, 3)).astype(np.float32))
        meta = {"action_space": space, "vae_digest": digest}
        write_npz_atomic(directory / f"ep_{i:06d}.npz", {
            "mu": mu, "logvar": np.full((T + 1, z), logvar, np.float32), "action": action,
            "reward": rng.normal(size=T).astype(np.float32),
            "terminated": np.eye(1, T, T - 1, dtype=bool)[0], "truncated": np.zeros(T, bool),
            "meta": np.array(json.dumps(meta))})


@pytest.fixture
def mem_cfg(tiny_cfg):
    for key, value in dict(hidden=16, mixtures=2, seq_len=10, batch_size=4, epochs=1,
                           flow_hidden=8, shuffle_buffer=8).items():
        setattr(tiny_cfg.memory, key, value)
    tiny_cfg.vae.z_dim = 4
    return tiny_cfg


@pytest.mark.parametrize("discrete", [False, True])
def test_train_memory_learns_and_resumes(mem_cfg, discrete):
    write_latents(run_of(mem_cfg) / "latents", discrete=discrete)
    mem_cfg.memory.epochs = 3
    mem_cfg.memory.lr = 3e-3
    report = train_memory(mem_cfg, progress=False)
    metrics = json.loads((run_of(mem_cfg) / "memory" / "metrics.json").read_text())
    assert report.epochs_done == 3 and np.isfinite(report.holdout_nll)
    assert metrics[-1]["holdout_nll"] < metrics[0]["holdout_nll"]  # it learns
    model = RunDir(run_of(mem_cfg)).load_memory()
    assert model.discrete_actions == discrete
    mem_cfg.memory.epochs = 4
    again = train_memory(mem_cfg, progress=False)
    assert again.epochs_done == 4
    metrics_path = run_of(mem_cfg) / "memory" / "metrics.json"
    epochs = [m["epoch"] for m in json.loads(metrics_path.read_text())]
    assert epochs == [1, 2, 3, 4]


def test_nonfinite_loss_raises_naming_step_or_is_skipped(mem_cfg):
    write_latents(run_of(mem_cfg) / "latents", n=8, nan_in=None)
    train, _ = split_episodes(sorted((run_of(mem_cfg) / "latents").glob("ep_*.npz")),
                              mem_cfg.data.holdout_fraction, mem_cfg.seed,
                              mem_cfg.data.holdout_min_episodes)
    victim = int(train[0].stem.split("_")[1])
    write_latents(run_of(mem_cfg) / "poisoned", n=8, nan_in=victim)
    (run_of(mem_cfg) / "poisoned" / train[0].name).replace(train[0])
    mem_cfg.memory.batch_size = 1
    with pytest.raises(FloatingPointError, match=r"at epoch 1, step \d+"):
        train_memory(mem_cfg, progress=False)
    mem_cfg.memory.nonfinite = "skip"
    report = train_memory(mem_cfg, out_dir=run_of(mem_cfg) / "memory_skip", progress=False)
    assert report.skipped_batches >= 1


def test_latents_from_another_vae_are_refused(mem_cfg):
    save_model(RunDir(run_of(mem_cfg)).vae.model, ConvVAE(z_dim=4))
    write_latents(run_of(mem_cfg) / "latents", digest="0123456789abcdef")
    # no rollouts here: encode.py cannot make them again, so the fix is to delete them
    with pytest.raises(ShardError, match=r"ep_000000\.npz is gone.*delete this latent"):
        train_memory(mem_cfg, progress=False)
    rollouts = run_of(mem_cfg) / "rollouts"
    rollouts.mkdir(exist_ok=True)
    for path in (run_of(mem_cfg) / "latents").glob("ep_*.npz"):
        (rollouts / path.name).write_bytes(b"a rollout")  # (only its presence is read)
    with pytest.raises(ShardError, match="rerun encode.py"):
        train_memory(mem_cfg, progress=False)


def test_compare_table_has_every_variant(mem_cfg):
    write_latents(run_of(mem_cfg) / "latents")
    rows = compare(mem_cfg, RunDir(run_of(mem_cfg)), ["rmdn_diag", "frmdn_square"], [0, 1],
                   progress=False)
    assert len(rows) == 4 and len({r["holdout_nll"] for r in rows}) == 4
    text = table(rows)
    assert "rmdn_diag" in text and "frmdn_square" in text and "(1.00x)" in text
    square = next(line for line in text.splitlines() if line.startswith("| frmdn_square "))
    assert square.count("±") >= 3  # NLL, gap to the RMDN, z = mu, windows: over 2 seeds


def test_one_command_makes_the_table_and_the_data_curve(mem_cfg, capsys):
    """compare_memory.py --episodes: the table, then every variant and seed on each
    training-set size (same held-out episodes), as markdown, JSON and a plot."""
    import compare_memory

    write_latents(run_of(mem_cfg) / "latents", n=14, T=20)
    mem_cfg.memory.eval_draws = 2
    run = RunDir(run_of(mem_cfg))
    run.write_config(mem_cfg)
    text = compare_memory.main(["--run", str(run.path), "--variants", "rmdn_diag,frmdn_diag",
                                "--seeds", "0,1,2", "--episodes", "3,6"])
    out = run.memory_compare_dir
    assert (out / "results.md").read_text().strip() in text
    assert (out / "curve.md").read_text().strip() in text
    assert (out / "curve.png").stat().st_size > 1000
    curve = json.loads((out / "curve.json").read_text())
    assert len(curve) == 2 * 2 * 3
    # budget: the same gradient steps, so half the episodes get twice the epochs
    assert {(r["train_episodes"], r["epochs"]) for r in curve} == {(3, 2), (6, 1)}
    rows = [line for line in (out / "curve.md").read_text().splitlines()
            if line.startswith("| 3 ") or line.startswith("| 6 ")]
    assert len(rows) == 4 and all(line.count("±") >= 1 for line in rows)
    assert sum("| frmdn_diag |" in line and line.count("±") == 2 for line in rows) == 2
    results = json.loads((out / "results.json").read_text())
    # the table is the largest size's: nothing is trained on all 9 training episodes
    assert {r["train_episodes"] for r in results} == {6} and len(results) == 2 * 3
    assert text.startswith("6 training episodes:")
    assert not list(out.glob("*__s*")) and not (out / "curve" / "n9_e1").exists()
    assert (out / "curve" / "n3_e2_k2" / "frmdn_diag__s2" / "best.safetensors").exists()
    # ... and is scored on the held-out episodes as often per gradient step: every 2 epochs
    small = json.loads((out / "curve" / "n3_e2_k2" / "frmdn_diag__s2" / "metrics.json").read_text())
    assert ["holdout_nll" in m for m in small] == [False, True]


def test_a_larger_size_joins_a_finished_curve_under_its_budget(mem_cfg):
    """--budget-episodes: the step budget stays the one the finished points were trained
    under, so they are reused as they are and only the new size trains."""
    import compare_memory

    write_latents(run_of(mem_cfg) / "latents", n=14, T=20)
    mem_cfg.memory.eval_draws, mem_cfg.memory.epochs, mem_cfg.memory.patience = 1, 2, 1
    run = RunDir(run_of(mem_cfg))
    run.write_config(mem_cfg)
    common = ["--run", str(run.path), "--variants", "rmdn_diag", "--seeds", "0"]
    compare_memory.main([*common, "--episodes", "2,4"])
    points = run.memory_compare_dir / "curve"
    before = {p: p.read_bytes() for p in sorted(points.glob("*/*/best.safetensors"))}
    assert [p.parent.parent.name for p in before] == ["n2_e4_k2", "n4_e2"]
    compare_memory.main([*common, "--episodes", "2,4,8", "--budget-episodes", "4"])
    assert all(p.read_bytes() == b for p, b in before.items())  # not retrained
    curve = json.loads((run.memory_compare_dir / "curve.json").read_text())
    # 8 episodes: 2 epochs' steps over 4 episodes = 1 epoch, scored every epoch
    assert {(r["train_episodes"], r["epochs"]) for r in curve} == {(2, 4), (4, 2), (8, 1)}
    assert (points / "n8_e1" / "rmdn_diag__s0" / "best.safetensors").exists()
    with pytest.raises(ConfigError, match="budget"):
        compare_memory.main([*common, "--episodes", "2", "--budget-episodes", "-1"])


def test_eval_every_scores_some_epochs_and_picks_the_best_among_them(mem_cfg):
    write_latents(run_of(mem_cfg) / "latents")
    mem_cfg.memory.epochs, mem_cfg.memory.eval_every, mem_cfg.memory.eval_draws = 5, 2, 1
    report = train_memory(mem_cfg, progress=False)
    metrics = json.loads((run_of(mem_cfg) / "memory" / "metrics.json").read_text())
    scored = [m["epoch"] for m in metrics if "holdout_nll" in m]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5] and scored == [2, 4, 5]
    best = min((m for m in metrics if "holdout_nll" in m), key=lambda m: m["holdout_nll"])
    assert report.best_epoch == best["epoch"] and report.holdout_nll == best["holdout_nll"]
    assert report.epochs_done == 5 and report.last_holdout_nll == metrics[-1]["holdout_nll"]
    # resumed to more epochs, the same rule goes on
    mem_cfg.memory.epochs = 7
    train_memory(mem_cfg, progress=False)
    metrics = json.loads((run_of(mem_cfg) / "memory" / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics if "holdout_nll" in m] == [2, 4, 5, 6, 7]


def test_shards_without_an_action_space_are_refused(tmp_path):
    from worldmodels.frmdn_training import action_info

    write_npz_atomic(tmp_path / "ep_000000.npz", {
        "action": np.zeros((5, 3), np.float32), "meta": np.array(json.dumps({}))})
    with pytest.raises(ShardError, match="no action_space"):
        action_info(tmp_path / "ep_000000.npz")


def test_linalg_error_follows_the_nonfinite_policy(mem_cfg, monkeypatch):
    """A LinAlgError from the loss (e.g. a Cholesky) is a non-finite batch: raise naming
    the step, or skip and count it."""
    import torch

    from worldmodels.frmdn import FRMDN

    write_latents(run_of(mem_cfg) / "latents")
    real_loss = FRMDN.loss
    calls = []

    def failing_once(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.linalg.LinAlgError("linalg.cholesky: The factorization could not be "
                                           "completed because the input is not positive-definite")
        return real_loss(self, *args, **kwargs)

    monkeypatch.setattr(FRMDN, "loss", failing_once)
    match = r"LinAlgError.*positive-definite.*at epoch 1, step 1\b"
    with pytest.raises(FloatingPointError, match=match):
        train_memory(mem_cfg, progress=False)
    calls.clear()
    mem_cfg.memory.nonfinite = "skip"
    report = train_memory(mem_cfg, out_dir=run_of(mem_cfg) / "memory_skip", progress=False)
    assert report.skipped_batches == 1
    metrics = json.loads((run_of(mem_cfg) / "memory_skip" / "metrics.json").read_text())
    assert metrics[0]["skipped"] == 1


def test_epoch_progress_total_is_the_batches_yielded(mem_cfg, monkeypatch):
    """Random window offsets give an episode one window more than ceil(T / L); the bar's
    total used to leave them out (14 batches of a total of 13)."""
    import worldmodels.frmdn_training as frmdn_training

    bars = []

    class Recording(frmdn_training.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(frmdn_training, "tqdm", Recording)
    write_latents(run_of(mem_cfg) / "latents", n=8, T=40)
    mem_cfg.memory.epochs = 3
    mem_cfg.memory.batch_size = 3
    train_memory(mem_cfg, progress=True)
    assert len(bars) == 3
    assert [bar.n for bar in bars] == [bar.total for bar in bars]



def _held_out(mem_cfg):
    import torch

    from worldmodels.frmdn_training import action_info, build_memory, latent_split

    run = RunDir(run_of(mem_cfg))
    _, held, _ = latent_split(mem_cfg, run)
    torch.manual_seed(0)
    return build_memory(mem_cfg, *action_info(held[0])), held


def test_the_k_draw_nll_is_the_mean_of_k_single_draws_and_z_mu_is_deterministic(mem_cfg):
    """On a fixed model, the K-draw NLL is the mean of the single-draw NLLs of seeds
    s .. s + K - 1 and its standard error their sample std / sqrt(K) (exact: the single
    draws are scored separately); single draws differ; z = mu needs no draw."""
    import torch

    from worldmodels.frmdn_training import evaluate_memory

    write_latents(run_of(mem_cfg) / "latents", n=10, T=30, logvar=-1.0)
    model, held = _held_out(mem_cfg)
    device = torch.device("cpu")
    mem_cfg.memory.eval_draws = 1
    single = [evaluate_memory(model, held, mem_cfg, device, draw_seed=100 + k)
              for k in range(4)]
    assert len({r["nll"] for r in single}) == 4  # the draws move the NLL
    assert len({r["nll_mu"] for r in single}) == 1  # z = mu: the same whatever the seed
    assert not any(np.isfinite(r["nll_se"]) for r in single)
    mem_cfg.memory.eval_draws = 4
    averaged = evaluate_memory(model, held, mem_cfg, device, draw_seed=100)
    nll = [r["nll"] for r in single]
    assert averaged["nll"] == pytest.approx(np.mean(nll), rel=1e-9)
    assert averaged["nll_se"] == pytest.approx(np.std(nll, ddof=1) / 2, rel=1e-9)
    assert averaged["nll_windows"] == pytest.approx(
        np.mean([r["nll_windows"] for r in single]), rel=1e-9)
    assert averaged["nll_mu"] == single[0]["nll_mu"]


def test_whole_episode_and_windowed_nll_agree_when_a_window_holds_an_episode(mem_cfg):
    import torch

    from worldmodels.frmdn_training import (
        episode_batches,
        evaluate_memory,
        score_memory,
        window_batches,
    )

    write_latents(run_of(mem_cfg) / "latents", n=10, T=30, logvar=-1.0)
    model, held = _held_out(mem_cfg)
    device = torch.device("cpu")
    mem_cfg.memory.eval_draws = 3
    mem_cfg.memory.seq_len = 30
    same = evaluate_memory(model, held, mem_cfg, device)
    assert same["nll"] == pytest.approx(same["nll_windows"], abs=1e-6)
    assert same["nll_se"] == pytest.approx(same["nll_windows_se"], abs=1e-6)
    mem_cfg.memory.seq_len = 50  # longer windows are padded: z = mu scores agree too
    whole = score_memory(model, episode_batches(held, mem_cfg), mem_cfg, device, None)
    windows = score_memory(model, window_batches(held, mem_cfg), mem_cfg, device, None)
    assert whole["nll"] == pytest.approx(windows["nll"], abs=1e-6)
    mem_cfg.memory.seq_len = 5  # state reset every 5 steps: another figure
    short = evaluate_memory(model, held, mem_cfg, device)
    assert short["nll"] == pytest.approx(same["nll"], abs=1e-6)
    assert abs(short["nll_windows"] - short["nll"]) > 1e-4


def test_best_epoch_is_kept_loaded_and_patience_stops(mem_cfg, monkeypatch):
    """The best held-out epoch's weights are kept beside the last's; later stages load the
    best; patience stops training and a rerun does not train on; resume is from the last."""
    from worldmodels import frmdn_training
    from worldmodels.checkpoint import read_header

    scripted = iter([1.0, 0.8, 0.9, 0.95, 0.97, 0.99, 0.7])

    def fake_evaluate(model, paths, cfg, device, draw_seed=0):
        nll = next(scripted)
        return {"nll": nll, "nll_se": 0.01, "nll_mu": nll - 0.1, "nll_windows": nll + 0.1,
                "nll_windows_se": 0.01}

    monkeypatch.setattr(frmdn_training, "evaluate_memory", fake_evaluate)
    write_latents(run_of(mem_cfg) / "latents")
    run = RunDir(run_of(mem_cfg))
    mem_cfg.memory.epochs = 6
    mem_cfg.memory.patience = 2
    report = train_memory(mem_cfg, progress=False)
    assert (report.epochs_done, report.best_epoch, report.stopped_early) == (4, 2, True)
    assert report.holdout_nll == 0.8 and report.last_holdout_nll == 0.95
    assert report.holdout_nll_mu == pytest.approx(0.7)
    assert read_header(run.memory.best)["meta"]["epoch"] == 2
    assert read_header(run.memory.model)["meta"]["epoch"] == 4
    assert run.memory.weights() == run.memory.best
    assert run.memory.weights("last") == run.memory.model
    best, last = run.load_memory(), run.load_memory(weights="last")
    assert any((a != b).any() for a, b in zip(best.state_dict().values(),
                                              last.state_dict().values(), strict=True))
    again = train_memory(mem_cfg, progress=False)  # still stopped: nothing more trained
    assert (again.epochs_done, again.best_epoch) == (4, 2)
    mem_cfg.memory.patience = 0  # resumed from the last epoch's weights, not the best
    report = train_memory(mem_cfg, progress=False)
    epochs = [m["epoch"] for m in json.loads(run.memory.metrics.read_text())]
    assert epochs == [1, 2, 3, 4, 5, 6] and report.best_epoch == 2
    # killed between the last weights and the best copy: the copy is made on resume
    mem_cfg.memory.epochs = 7
    train_memory(mem_cfg, progress=False)  # epoch 7 scores 0.7, the best
    run.memory.best.unlink()
    assert run.memory.weights() == run.memory.model  # an M without best weights
    report = train_memory(mem_cfg, progress=False)
    assert report.best_epoch == 7 and read_header(run.memory.best)["meta"]["epoch"] == 7


def test_padding_every_window_shares_is_cut_and_changes_no_loss(mem_cfg):
    """Windows longer than the episodes (whole-episode M) are trimmed to the longest
    window of the batch; the masked losses are those of the padded batch."""
    import torch

    from worldmodels.datasets import SequenceDataset, trim_padding
    from worldmodels.frmdn_training import build_memory
    from worldmodels.memory import sequence_loss

    write_latents(run_of(mem_cfg) / "latents", n=4, T=30)
    paths = sorted((run_of(mem_cfg) / "latents").glob("ep_*.npz"))
    batch = next(iter(SequenceDataset(paths, 100, 4, shuffle=False, z_dim=4)))
    assert batch["mask"].shape == (4, 30) and batch["mu"].shape == (4, 31, 4)
    assert batch["mask"].all()  # nothing left that every window pads
    padded = [{k: np.concatenate([v[i].numpy(), np.zeros_like(v[i, :1].numpy()).repeat(70, 0)])
               for k, v in batch.items()} for i in range(4)]
    trimmed = trim_padding(padded)
    assert all(np.array_equal(t[k], batch[k][i].numpy())
               for i, t in enumerate(trimmed) for k in batch)
    torch.manual_seed(0)
    memory = build_memory(mem_cfg, 3, False)
    stacked = {k: torch.from_numpy(np.stack([w[k] for w in padded])) for k in batch}
    assert stacked["mask"].shape == (4, 100)
    keys = ("mu", "action", "reward", "done", "mask")
    for k, v in sequence_loss(memory, *(stacked[k] for k in keys)).items():
        assert torch.allclose(v, sequence_loss(memory, *(batch[k] for k in keys))[k],
                              rtol=1e-5, atol=1e-6), k


def test_keep_epochs_keeps_the_scored_epochs_weights(mem_cfg):
    """memory.keep_epochs: one file per scored epoch (memory.eval_every=2: epochs 2 and
    4), the last of them the last epoch's weights."""
    from worldmodels.checkpoint import file_digest

    write_latents(run_of(mem_cfg) / "latents")
    mem_cfg.memory.epochs, mem_cfg.memory.eval_every = 4, 2
    mem_cfg.memory.keep_epochs, mem_cfg.memory.eval_draws = True, 1
    train_memory(mem_cfg, progress=False)
    run = RunDir(run_of(mem_cfg))
    kept = sorted(p.name for p in (run.memory.dir / "epochs").iterdir()
                  if p.suffix == ".safetensors")
    assert kept == ["epoch_002.safetensors", "epoch_004.safetensors"]
    assert file_digest(run.memory.epoch_weights(4)) == file_digest(run.memory.model)


def test_patience_is_judged_at_scored_epochs(mem_cfg, monkeypatch):
    """With memory.eval_every=2 and patience 1, an unscored epoch never stops M: it stops
    after the first scored epoch that did not improve."""
    import worldmodels.frmdn_training as training

    scores = iter([1.0, 2.0, 3.0, 4.0])  # worse at every scoring after the first
    monkeypatch.setattr(training, "evaluate_memory", lambda *a, **k: {"nll": next(scores)})
    write_latents(run_of(mem_cfg) / "latents")
    mem_cfg.memory.epochs, mem_cfg.memory.eval_every, mem_cfg.memory.patience = 8, 2, 1
    report = train_memory(mem_cfg, progress=False)
    metrics = json.loads((run_of(mem_cfg) / "memory" / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert [m.get("holdout_nll") for m in metrics] == [None, 1.0, None, 2.0]
    assert report.best_epoch == 2 and report.stopped_early


def test_a_later_command_adds_its_variants_to_the_table(mem_cfg):
    """compare_memory.py --variants B after --variants A: the table holds A and B; a
    (variant, seed) trained again replaces its row instead of adding one."""
    import compare_memory

    write_latents(run_of(mem_cfg) / "latents", n=8, T=20)
    mem_cfg.memory.eval_draws = 2
    run = RunDir(run_of(mem_cfg))
    run.write_config(mem_cfg)
    base = ["--run", str(run.path), "--seeds", "0"]
    compare_memory.main(base + ["--variants", "rmdn_diag"])
    text = compare_memory.main(base + ["--variants", "frmdn_diag", "--seeds", "0,1"])
    out = run.memory_compare_dir
    results = json.loads((out / "results.json").read_text())
    assert [(r["variant"], r["seed"]) for r in results] == [
        ("rmdn_diag", 0), ("frmdn_diag", 0), ("frmdn_diag", 1)]
    assert "| rmdn_diag |" in text and "| frmdn_diag |" in text
    # the gap to the RMDN uses the earlier command's RMDN row of the same seed
    line = next(x for x in text.splitlines() if x.startswith("| frmdn_diag |"))
    assert line.split("|")[3].strip() != "—"
    again = compare_memory.main(base + ["--variants", "rmdn_diag"])  # resumes: nothing new
    assert len(json.loads((out / "results.json").read_text())) == 3
    assert again == text


def test_a_comparison_leaves_the_runs_own_m_and_its_config_alone(mem_cfg):
    """compare_memory.py's memory.* describe its variants: the run's config.yaml keeps
    the run's own, so the run's M stage does not train its M on with them (it did:
    memory.epochs=2 here trained the run's M one more epoch, and memory.precision=diag
    made every later stage refuse the run's square-U M)."""
    import compare_memory

    write_latents(run_of(mem_cfg) / "latents", n=8, T=20)
    mem_cfg.memory.epochs, mem_cfg.memory.eval_draws = 1, 1
    train_memory(mem_cfg, progress=False)
    run = RunDir(run_of(mem_cfg))
    config = run.config_file.read_text()
    model = run.memory.model.read_bytes()
    compare_memory.main(["--run", str(run.path), "--variants", "rmdn_diag", "--seeds", "0",
                         "memory.epochs=2", "memory.precision=diag", "data.shuffle_buffer=32"])
    assert run.config_file.read_text() == config
    assert (run.memory_compare_dir / "rmdn_diag__s0" / "best.safetensors").exists()
    report = train_memory(run.load_config(), run, progress=False)  # the run's own M stage
    assert report.epochs_done == 1 and run.memory.model.read_bytes() == model


def test_rows_of_other_settings_are_not_averaged_into_the_table(mem_cfg, capsys):
    """A seed trained for 2 epochs and a later seed for 1 are not two seeds of one row;
    a directory trained further than asked says how far."""
    import compare_memory

    write_latents(run_of(mem_cfg) / "latents", n=8, T=20)
    run = RunDir(run_of(mem_cfg))
    run.write_config(mem_cfg)
    base = ["--run", str(run.path), "--variants", "rmdn_diag"]
    compare_memory.main([*base, "--seeds", "0", "memory.epochs=2"])
    text = compare_memory.main([*base, "--seeds", "1", "memory.epochs=1"])
    assert "1 earlier row(s) trained with other memory.*" in capsys.readouterr().out
    line = next(x for x in text.splitlines() if x.startswith("| rmdn_diag |"))
    assert line.rstrip(" |").endswith("| 1") and " of 1 " in line  # seed 1 alone, 1 epoch
    rows = json.loads((run.memory_compare_dir / "results.json").read_text())
    assert [(r["seed"], r["epochs_done"]) for r in rows] == [(1, 1)]
    text = compare_memory.main([*base, "--seeds", "0", "memory.epochs=1"])
    line = next(x for x in text.splitlines() if x.startswith("| rmdn_diag |"))
    assert " of 1/2 " in line  # seed 0's M had trained 2 epochs: the table says so


def test_select_max_held_keeps_the_lowest_nll_among_epochs_that_pass(mem_cfg, monkeypatch):
    """memory.select_max_held: the best epoch is the lowest NLL among the epochs whose
    held-action check passes, also across a kill; with none passing, the lowest NLL."""
    import run as run_py
    from worldmodels import frmdn_training
    from worldmodels.checkpoint import read_header

    nlls = {1: 0.9, 2: 0.7, 3: 0.8, 4: 0.6, 5: 0.85}
    ratios = {1: 1.0, 2: 2.0, 3: 1.1, 4: 1.9, 5: 1.05}
    epoch = {"n": 0}

    def fake_evaluate(model, paths, cfg, device, draw_seed=0):
        epoch["n"] += 1
        return {"nll": nlls[epoch["n"]]}

    def check(model):
        return {"held_worst_ratio": ratios[epoch["n"]], "held_worst_action": epoch["n"] % 3}

    monkeypatch.setattr(frmdn_training, "evaluate_memory", fake_evaluate)
    write_latents(run_of(mem_cfg) / "latents")
    run = RunDir(run_of(mem_cfg))
    mem_cfg.memory.select_max_held = 1.5
    with pytest.raises(ConfigError, match="select_max_held"):
        train_memory(mem_cfg, progress=False)  # no check to select by
    mem_cfg.memory.epochs = 3
    report = train_memory(mem_cfg, progress=False, epoch_check=check)
    assert (report.best_epoch, report.holdout_nll, report.held_passed) == (3, 0.8, 2)
    assert report.held_worst_ratio == 1.1 and report.held_worst_action == 0
    mem_cfg.memory.epochs = 5  # resumed: epoch 4 has the lowest NLL but fails the check
    report = train_memory(mem_cfg, progress=False, epoch_check=check)
    assert (report.best_epoch, report.holdout_nll, report.held_passed) == (3, 0.8, 3)
    assert read_header(run.memory.best)["meta"]["epoch"] == 3
    rows = json.loads(run.memory.metrics.read_text())
    assert [r["held_worst_ratio"] for r in rows] == [1.0, 2.0, 1.1, 1.9, 1.05]
    # none of a later round's epochs passes: the lowest NLL among them, as without the key
    nlls.update({6: 0.75, 7: 0.65})
    ratios.update({6: 3.0, 7: 2.5})
    mem_cfg.memory.epochs = 7
    report = train_memory(mem_cfg, progress=False, epoch_check=check, select_after=5)
    assert (report.best_epoch, report.held_passed) == (7, 0)
    assert "chosen by NLL alone" in run_py._memory(asdict(report))
    # killed between epoch 8's weights and the copy of the best: epoch 8 passes, so the
    # rerun copies it over epoch 7 (which failed, with a higher NLL)
    nlls[8], ratios[8] = 0.7, 1.0
    real_save = frmdn_training.save_model

    def killed_at_best(path, *args, **kwargs):
        if path == run.memory.best:
            raise KeyboardInterrupt
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(frmdn_training, "save_model", killed_at_best)
    mem_cfg.memory.epochs = 8
    with pytest.raises(KeyboardInterrupt):
        train_memory(mem_cfg, progress=False, epoch_check=check, select_after=5)
    monkeypatch.setattr(frmdn_training, "save_model", real_save)
    assert read_header(run.memory.best)["meta"]["epoch"] == 7
    report = train_memory(mem_cfg, progress=False, epoch_check=check, select_after=5)
    assert (report.best_epoch, report.held_passed) == (8, 1)
    assert read_header(run.memory.best)["meta"]["epoch"] == 8
