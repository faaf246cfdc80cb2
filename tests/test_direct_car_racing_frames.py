"""DirectCarRacing's frames are those of the renderer before its speed-ups (issue 18).

``tests/direct_car_racing_frames.json`` holds the CRC-32 of every raw 96x96 frame
and every preprocessed 64x64 frame (``make_env(..., direct_render=True)``), and every
reward, drawn by the code before the speed-ups for fixed seeds and actions: episodes
through the first second's zoom-in (the field's edge on screen), at steady zoom, fast
driving (long dashboard bars), off the road, with domain-randomised colours and a
supersample of 3. The code now must draw the same bytes.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import numpy as np  # noqa: E402

from envs import make_env  # noqa: E402
from envs.direct_car_racing import DirectCarRacing  # noqa: E402

REFERENCE = Path(__file__).parent / "direct_car_racing_frames.json"

#: name -> drive() arguments
CASES: dict[str, dict] = {
    "seed0": {"seed": 0, "steps": 160},
    "seed5_fast": {"seed": 5, "steps": 160, "gas": 1.0},
    "seed9_random": {"seed": 9, "steps": 120, "domain_randomize": True},
    "seed2_ss3": {"seed": 2, "steps": 80, "supersample": 3},
}


def _action(rng: np.random.Generator, t: int, seed: int, gas: float) -> np.ndarray:
    action = np.array([np.sin(t / 15.0 + seed), gas, 0.0], dtype=np.float32)
    action[0] += rng.normal(0, 0.3)
    return action


def drive(seed: int, steps: int, gas: float = 0.6, **kwargs) -> dict[str, list]:
    """CRC-32s of the raw and the preprocessed frames, and the rewards, of one episode
    (the raw and the wrapped env each reset twice: the second reset reuses the env)."""
    raw = DirectCarRacing(**kwargs)
    wrapped = make_env("CarRacing-v3", direct_render=True, max_episode_steps=0, **kwargs)
    out: dict[str, list] = {"frames": [], "small": [], "rewards": []}
    for _ in range(2):
        out = {"frames": [], "small": [], "rewards": []}
        rng = np.random.default_rng(seed)
        a, _ = raw.reset(seed=seed)
        b, _ = wrapped.reset(seed=seed)
        for t in range(steps):
            out["frames"].append(zlib.crc32(np.ascontiguousarray(a).tobytes()))
            out["small"].append(zlib.crc32(np.ascontiguousarray(b).tobytes()))
            action = _action(rng, t, seed, gas)
            a, r, term, _, _ = raw.step(action)
            b, rb, _, _, _ = wrapped.step(action)
            assert r == rb
            out["rewards"].append(float(r))
            if term:
                break
    raw.close()
    wrapped.close()
    return out


def test_frames_are_the_reference_bytes():
    reference = json.loads(REFERENCE.read_text())
    assert set(reference) == set(CASES)
    for name, case in CASES.items():
        got, want = drive(**case), reference[name]
        assert got["rewards"] == want["rewards"], name
        for key in ("frames", "small"):
            bad = [t for t, (g, w) in enumerate(zip(got[key], want[key], strict=True))
                   if g != w]
            assert not bad, f"{name}: {key} differ at steps {bad[:10]} ({len(bad)} in all)"
