import dataclasses

import numpy as np
import pytest
import torch

from tests.conftest import write_shards
from worldmodels.datasets import (
    FrameDataset,
    SequenceDataset,
    count_frames,
    mean_frame,
    nested_subset,
    split_episodes,
)
from worldmodels.shards import RolloutShard, write_npz_atomic


def _ids(batch: torch.Tensor) -> list[tuple[int, int]]:
    px = batch[:, 0, 0].numpy().astype(int)
    return [(e, s + 256 * h) for e, s, h in px]


def test_split_is_fixed_by_seed_disjoint_and_stable(tmp_path):
    paths = write_shards(tmp_path, 40, T=3)
    train, held = split_episodes(paths, 0.25, seed=0)
    assert set(train).isdisjoint(held) and len(train) + len(held) == 40
    assert 3 <= len(held) <= 20
    assert split_episodes(paths, 0.25, seed=0) == (train, held)
    assert split_episodes(paths, 0.25, seed=1) != (train, held)
    more = write_shards(tmp_path / "more", 0)  # noqa: F841
    # adding episodes never moves an existing one across the split
    extra = [tmp_path / f"ep_{i:06d}.npz" for i in range(40, 60)]
    for p in extra:
        p.write_bytes(b"")
    train2, held2 = split_episodes(paths + extra, 0.25, seed=0)
    assert set(held) <= set(held2) and set(train) <= set(train2)
    tiny_train, tiny_held = split_episodes(paths[:2], 0.01, seed=0)
    assert len(tiny_train) == len(tiny_held) == 1


def test_split_holds_out_a_minimum_of_episodes(tmp_path, capsys):
    """The fraction's episodes topped up to min_episodes; the minimum takes at most half
    the episodes, with a one-line warning on stderr when it cannot be met."""
    paths = write_shards(tmp_path, 40, T=3)
    train, held = split_episodes(paths, 0.05, seed=0, min_episodes=5)
    assert len(held) == 5 and len(train) == 35 and set(train).isdisjoint(held)
    assert capsys.readouterr().err == ""
    # the below-threshold episodes stay held out; the minimum tops them up
    assert set(split_episodes(paths, 0.05, seed=0)[1]) <= set(held)
    assert split_episodes(paths, 0.25, seed=0, min_episodes=5) == \
        split_episodes(paths, 0.25, seed=0)  # the fraction already holds out more
    for n, expect in ((10, 5), (9, 4), (4, 2), (2, 1)):
        train, held = split_episodes(paths[:n], 0.05, seed=0, min_episodes=5)
        assert (len(held), len(train)) == (expect, n - expect)
        err = capsys.readouterr().err
        assert (err.count("\n"), "data.holdout_min_episodes=5" in err) == \
            ((0, False) if n >= 10 else (1, True))


def test_nested_subset_is_nested_fixed_by_seed_and_mixes_the_data(tmp_path):
    """A data curve's training sets: each smaller set inside the larger, fixed by the
    seed, and drawn from the whole collection, not from its first episodes by name."""
    paths = [tmp_path / f"ep_{i:06d}.npz" for i in range(400)]
    sets = [nested_subset(paths, n, seed=0) for n in (10, 40, 200, 400)]
    for small, big in zip(sets, sets[1:], strict=False):
        assert set(small) < set(big) and small == sorted(small)
    assert set(sets[-1]) == set(paths)
    assert nested_subset(list(reversed(paths)), 40, seed=0) == sets[1]
    assert nested_subset(paths, 40, seed=1) != sets[1]
    # half the collection is "policy A" (the first 200 by name): a subset holds both
    first_half = sum(p in set(paths[:200]) for p in sets[1])
    assert 8 <= first_half <= 32


def test_v_and_m_split_the_same_episodes(tmp_path, tiny_cfg):
    """V's frames and M's latents of the same episodes are held out alike."""
    from tests.test_frmdn_training import write_latents
    from worldmodels.frmdn_training import latent_split
    from worldmodels.run_dir import RunDir
    from worldmodels.vae_training import rollout_split

    run = RunDir(tmp_path / "run")
    tiny_cfg.vae.z_dim = 4  # as write_latents writes them
    write_shards(run.rollouts, 12, T=3)
    write_latents(run.latents, n=12, T=3)
    v_train, v_held, _ = rollout_split(tiny_cfg, run)
    m_train, m_held, _ = latent_split(tiny_cfg, run)
    assert len(v_held) == tiny_cfg.data.holdout_min_episodes == 5
    assert [p.name for p in v_held] == [p.name for p in m_held]
    assert [p.name for p in v_train] == [p.name for p in m_train]

    # once V is trained, seed=N (another M or CMA-ES seed) no longer moves the split
    from worldmodels.checkpoint import save_model
    from worldmodels.vae import ConvVAE
    save_model(run.vae.model, ConvVAE(z_dim=4), meta={"epoch": 1, "seed": tiny_cfg.seed,
                                                 "data_seed": tiny_cfg.seed})
    other = dataclasses.replace(tiny_cfg, seed=tiny_cfg.seed + 1)
    assert [p.name for p in rollout_split(other, run)[1]] == [p.name for p in v_held]
    assert [p.name for p in latent_split(other, run, check_digest=False)[1]] == \
        [p.name for p in m_held]
    run.vae.model.unlink()  # without V the config's seed splits: another split
    assert [p.name for p in rollout_split(other, run)[1]] != [p.name for p in v_held]


def test_every_frame_once_per_epoch_shuffled_with_bounded_buffer(tmp_path):
    paths = write_shards(tmp_path, 6, T=49)  # 300 frames
    ds = FrameDataset(paths, batch_size=16, shuffle_buffer=64, seed=0)
    ids = [i for batch in ds for i in _ids(batch)]
    assert len(ids) == 300 and len(set(ids)) == 300
    assert ids != sorted(ids)
    ds.set_epoch(1)
    again = [i for batch in ds for i in _ids(batch)]
    assert sorted(again) == sorted(ids) and again != ids
    assert ds.capacity == 64  # the buffer never holds more than this many frames
    ordered = [i for batch in FrameDataset(paths, 16, shuffle=False) for i in _ids(batch)]
    assert ordered == sorted(ordered)
    capped = sum(len(b) for b in FrameDataset(paths, 16, 64, max_frames=100))
    assert 100 <= capped < 116
    assert count_frames(paths) == 300


def test_mean_frame_matches_numpy(tmp_path):
    paths = write_shards(tmp_path, 3, T=9)
    frames = np.concatenate([RolloutShard.load(p).obs for p in paths]).astype(np.float64)
    np.testing.assert_allclose(mean_frame(paths), frames.mean(0) / 255.0)


def test_corrupt_shard_skipped_when_asked(tmp_path):
    paths = write_shards(tmp_path, 3, T=9)
    paths[1].write_bytes(b"not a zip")
    ds = FrameDataset(paths, 8, 32, skip_corrupt=True)
    assert sum(len(b) for b in ds) == 20 and ds.skipped == [str(paths[1])]
    import pytest

    from worldmodels.shards import ShardError

    with pytest.raises(ShardError, match="ep_000001.npz"):
        list(FrameDataset(paths, 8, 32))


def test_sequence_windows_shapes_and_mask(tmp_path):
    z = 4
    for i, T in enumerate([25, 7]):
        rng = np.random.default_rng(i)
        write_npz_atomic(tmp_path / f"ep_{i:06d}.npz", {
            "mu": rng.normal(size=(T + 1, z)).astype(np.float32),
            "logvar": np.zeros((T + 1, z), np.float32),
            "action": rng.normal(size=(T, 3)).astype(np.float32),
            "reward": np.arange(T, dtype=np.float32),
            "terminated": np.eye(1, T, T - 1, dtype=bool)[0],
            "truncated": np.zeros(T, bool), "meta": np.array("{}")})
    paths = sorted(tmp_path.glob("ep_*.npz"))
    batches = list(SequenceDataset(paths, seq_len=10, batch_size=4, shuffle=False))
    windows = sum(len(b["reward"]) for b in batches)
    assert windows == 4  # 25 steps -> 10 + 10 + 5 (padded), 7 steps -> 1 padded window
    b = batches[0]
    assert b["mu"].shape[1:] == (11, z) and b["action"].shape[1:] == (10, 3)
    for shuffle, epoch in [(False, 0), (True, 0), (True, 1), (True, 2)]:
        ds = SequenceDataset(paths, seq_len=10, batch_size=4, shuffle=shuffle, seed=3)
        ds.set_epoch(epoch)
        batches = list(ds)
        # (a batch whose windows all end early is cut to its longest: lengths differ)
        assert sum(x["mask"].sum() for x in batches) == 25 + 7  # every step once per epoch
        assert sum(x["done"].sum() for x in batches) == 2  # both terminal steps, every epoch
        # rewards are arange(T): each step's target appears exactly once
        seen = sorted(torch.cat([x["reward"][x["mask"] > 0] for x in batches]).tolist())
        assert seen == sorted(list(range(25)) + list(range(7)))


@pytest.mark.parametrize("workers", [0, 2])
def test_sequence_batches_per_epoch_is_what_a_loader_yields(tmp_path, workers):
    from torch.utils.data import DataLoader

    for i, T in enumerate([25, 7, 40, 13, 31, 9, 22]):
        rng = np.random.default_rng(i)
        write_npz_atomic(tmp_path / f"ep_{i:06d}.npz", {
            "mu": rng.normal(size=(T + 1, 2)).astype(np.float32),
            "logvar": np.zeros((T + 1, 2), np.float32),
            "action": rng.normal(size=(T, 1)).astype(np.float32),
            "reward": np.zeros(T, np.float32), "terminated": np.zeros(T, bool),
            "truncated": np.zeros(T, bool), "meta": np.array("{}")})
    paths = sorted(tmp_path.glob("ep_*.npz"))
    for shuffle, epoch in [(False, 0), (True, 0), (True, 1), (True, 2)]:
        ds = SequenceDataset(paths, seq_len=6, batch_size=3, shuffle_buffer=6, shuffle=shuffle,
                             seed=1)
        ds.set_epoch(epoch)
        yielded = sum(1 for _ in DataLoader(ds, batch_size=None, num_workers=workers))
        assert ds.batches_per_epoch(workers) == yielded
