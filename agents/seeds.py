"""The env seeds of evaluations: the final report's (:func:`evaluation_seeds`) and CMA-ES's
model selection's (:func:`selection_seeds`), kept apart so that a reported score is never
measured on the episodes that chose the controller."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

#: selection seeds avoid the first this many evaluation seeds of the same ``seed`` (the
#: evaluation seeds of any size are prefixes of one stream, so every report of up to this
#: many episodes is disjoint from selection)
REPORT_EPISODES_MAX = 100_000


def _stream(seed: int, salt: int, size: int) -> np.ndarray:
    return np.random.default_rng([seed, salt]).integers(0, 2**31 - 1, size=size)


def evaluation_seeds(seed: int, episodes: int) -> list[int]:
    """The env seeds of a final evaluation (evaluate.py, run.py): the first ``episodes``
    of a stream fixed by ``seed``."""
    return [int(s) for s in _stream(seed, 424242, episodes)]


@lru_cache(maxsize=8)
def _reserved(seed: int) -> frozenset[int]:
    return frozenset(int(s) for s in _stream(seed, 424242, REPORT_EPISODES_MAX))


def selection_seeds(seed: int, episodes: int) -> list[int]:
    """The fixed env seeds on which CMA-ES's periodic evaluations compare controllers: the
    same at every evaluation of a run (paired comparisons), distinct from each other and
    from :func:`evaluation_seeds` of the same ``seed`` (up to
    :data:`REPORT_EPISODES_MAX` episodes)."""
    reserved, out, seen = _reserved(seed), [], set()
    rng = np.random.default_rng([seed, 271828])
    while len(out) < episodes:
        for s in rng.integers(0, 2**31 - 1, size=episodes - len(out)):
            s = int(s)
            if s not in reserved and s not in seen:
                seen.add(s)
                out.append(s)
    return out
