import io
import zipfile

import numpy as np
import pytest

from tests.conftest import PicklePayload, synthetic_shard
from worldmodels import shards as shards_mod
from worldmodels.shards import (
    RolloutShard,
    ShardError,
    list_shards,
    remove_partial_files,
    shard_length,
    write_npz_atomic,
)


def test_round_trip_keeps_arrays_dtypes_and_meta(tmp_path):
    shard = synthetic_shard(3, T=25)
    shard.save(tmp_path / "ep_000003.npz")
    back = RolloutShard.load(tmp_path / "ep_000003.npz")
    for key in ("obs", "action", "reward", "terminated", "truncated"):
        np.testing.assert_array_equal(getattr(back, key), getattr(shard, key))
        assert getattr(back, key).dtype == getattr(shard, key).dtype
    assert back.meta == shard.meta and len(back) == 25
    assert shard_length(tmp_path / "ep_000003.npz") == 25


def test_discrete_actions_round_trip(tmp_path):
    shard = synthetic_shard(0, T=10)
    shard.action = np.arange(10, dtype=np.int64) % 3
    shard.save(tmp_path / "ep_000000.npz")
    assert RolloutShard.load(tmp_path / "ep_000000.npz").action.dtype == np.int64


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = np.lib.format.write_array

    def dies_on_second_array(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed mid-write")
        return real(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", dies_on_second_array)
    with pytest.raises(KeyboardInterrupt):
        synthetic_shard(0).save(tmp_path / "ep_000000.npz")
    assert list(tmp_path.iterdir()) == []


def test_partial_files_are_not_listed_and_are_cleaned(tmp_path):
    synthetic_shard(0).save(tmp_path / "ep_000000.npz")
    (tmp_path / ".ep_000001.npz.partial").write_bytes(b"half a shard")
    assert [p.name for p in list_shards(tmp_path)] == ["ep_000000.npz"]
    assert remove_partial_files(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ep_000000.npz"]


def test_copies_a_user_left_beside_the_shards_are_not_shards(tmp_path):
    """``ep_000000_bak.npz`` or ``ep_0.npz`` would count episode 0 twice (and the split
    hashes file names, so the copy could land in held-out while the original trains)."""
    synthetic_shard(0).save(tmp_path / "ep_000000.npz")
    for name in ("ep_000000_bak.npz", "ep_0.npz", "ep_backup.npz", "ep_0000000.npz"):
        (tmp_path / name).write_bytes((tmp_path / "ep_000000.npz").read_bytes())
    synthetic_shard(1).save(tmp_path / "ep_1000000.npz")  # past 6 digits, as written
    assert [p.name for p in list_shards(tmp_path)] == ["ep_000000.npz", "ep_1000000.npz"]


def test_cleaning_spares_a_live_writers_file(tmp_path):
    """A second collect/encode starting on a directory that another process still
    writes cleans only dead writers' files: the live write still lands."""
    import threading

    from worldmodels.atomic import write_atomic

    started, go, errors = threading.Event(), threading.Event(), []

    def slow(fh) -> None:
        fh.write(b"x" * 100)
        started.set()
        go.wait(30)

    def writer() -> None:
        try:
            write_atomic(tmp_path / "ep_000007.npz", slow)
        except BaseException as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    thread = threading.Thread(target=writer)
    thread.start()
    assert started.wait(30)
    (tmp_path / ".ep_000001.npz.partial").write_bytes(b"left by a killed writer")
    assert remove_partial_files(tmp_path) == 1
    go.set()
    thread.join(30)
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep_000007.npz"]


def test_truncated_shard_raises_naming_file(tmp_path):
    path = tmp_path / "ep_000000.npz"
    synthetic_shard(0).save(path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ShardError, match="ep_000000.npz"):
        RolloutShard.load(path)


def test_wrong_dtype_is_refused(tmp_path):
    shard = synthetic_shard(0)
    shard.obs = shard.obs.astype(np.float32)
    with pytest.raises(ShardError, match="obs dtype float32"):
        shard.save(tmp_path / "ep_000000.npz")
    # a shard written by another tool with the wrong shapes is refused on load
    good = synthetic_shard(0)
    write_npz_atomic(tmp_path / "ep_000001.npz", {
        "obs": good.obs[:-2], "action": good.action, "reward": good.reward,
        "terminated": good.terminated, "truncated": good.truncated,
        "meta": np.array("{}")})
    with pytest.raises(ShardError, match="frames for"):
        RolloutShard.load(tmp_path / "ep_000001.npz")


@pytest.mark.parametrize("reward", [np.array(["a", "b", "c"]), np.float32(1.0)])
def test_a_reward_of_another_type_is_a_shard_error_naming_the_file(tmp_path, reward):
    """Text rewards (or a scalar) from another tool: every reader, and the screen that
    data.skip_corrupt relies on, refuses the shard by name instead of a TypeError."""
    from worldmodels.datasets import read_latents
    from worldmodels.shards import ShardSpec, check_shard

    T = 3
    common = {"action": np.zeros(T, np.int64), "reward": np.asarray(reward),
              "terminated": np.zeros(T, bool), "truncated": np.zeros(T, bool),
              "meta": np.array("{}")}
    rollout, latent = tmp_path / "r" / "ep_000000.npz", tmp_path / "l" / "ep_000000.npz"
    write_npz_atomic(rollout, {"obs": np.zeros((T + 1, 8, 8, 3), np.uint8), **common})
    write_npz_atomic(latent, {"mu": np.zeros((T + 1, 4), np.float32),
                              "logvar": np.zeros((T + 1, 4), np.float32), **common})
    for path, kind in ((rollout, "rollouts"), (latent, "latents")):
        with pytest.raises(ShardError, match=f"{path}: 'reward' is"):
            check_shard(path, kind, ShardSpec())
    with pytest.raises(ShardError, match=f"{rollout}: reward is"):
        RolloutShard.load(rollout)
    with pytest.raises(ShardError, match=f"{latent}: reward is"):
        read_latents(latent, 4)


@pytest.mark.parametrize("space", [{"type": "box", "shape": [3]}, "box", {"type": "box",
                                   "low": [0], "high": [1], "shape": "x"}])
def test_an_unreadable_action_space_in_a_shards_meta_is_named(tmp_path, space):
    """A hand-made meta (a box without bounds, not a mapping): a ShardError naming the
    file, from the header screen and from the run's action space."""
    import json

    from worldmodels.run_dir import RunDir
    from worldmodels.shards import ShardSpec, action_space_from_meta, check_shard

    shard = synthetic_shard(0)
    shard.meta["action_space"] = space
    path = tmp_path / "latents" / "ep_000000.npz"
    write_npz_atomic(path, {"mu": np.zeros((len(shard) + 1, 4), np.float32),
                            "logvar": np.zeros((len(shard) + 1, 4), np.float32),
                            "action": shard.action, "reward": shard.reward,
                            "terminated": shard.terminated, "truncated": shard.truncated,
                            "meta": np.array(json.dumps(shard.meta))})
    if not isinstance(space, dict):  # (the screen reads only a mapping's shape)
        with pytest.raises(ShardError, match=f"{path}: "):
            check_shard(path, "latents", ShardSpec())
    with pytest.raises(ShardError, match=f"{path}: "):
        RunDir(tmp_path).action_space()
    with pytest.raises(ShardError, match="somewhere: "):
        action_space_from_meta(space, "somewhere")


def test_pickled_object_in_shard_is_refused_not_executed(tmp_path, pickle_marker):
    good = synthetic_shard(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for key in ("obs", "action", "reward", "terminated", "truncated"):
            with zf.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array(member, getattr(good, key))
        with zf.open("meta.npy", "w") as member:
            payload = np.array([PicklePayload(pickle_marker)], dtype=object)
            np.lib.format.write_array(member, payload, allow_pickle=True)
    path = tmp_path / "ep_000000.npz"
    path.write_bytes(buf.getvalue())
    assert b"pickle_was_executed" in path.read_bytes()  # the payload is there
    with pytest.raises(ShardError, match="ep_000000.npz"):
        RolloutShard.load(path)


def test_zip64_and_stored_levels_are_readable(tmp_path):
    for level in (0, 1, 9):
        path = tmp_path / f"ep_00000{level}.npz"
        synthetic_shard(level, T=5).save(path, compress_level=level)
        assert len(RolloutShard.load(path)) == 5
    assert shards_mod.shard_index(tmp_path / "ep_000009.npz") == 9
