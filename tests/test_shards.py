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
