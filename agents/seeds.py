"""The env seeds of evaluations: the final report's (:func:`evaluation_seeds`) and CMA-ES's
model selection's (:func:`selection_seeds`), kept apart so that a reported score is never
measured on the episodes that chose the controller."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from worldmodels.config import ConfigError

#: selection seeds avoid the first this many evaluation seeds of the same ``seed`` (the
#: evaluation seeds of any size are prefixes of one stream, so every report of up to this
#: many episodes is disjoint from selection)
REPORT_EPISODES_MAX = 100_000


def evaluation_seeds(seed: int, episodes: int) -> list[int]:
    """The env seeds of a final evaluation (evaluate.py, run.py): the first ``episodes``
    distinct values of a stream fixed by ``seed`` (a repeat would count one episode
    twice), at most :data:`REPORT_EPISODES_MAX`."""
    if episodes > REPORT_EPISODES_MAX:
        raise ConfigError(f"{episodes} evaluation episodes: at most {REPORT_EPISODES_MAX} "
                          "(beyond that they are not kept apart from the selection seeds)")
    rng = np.random.default_rng([seed, 424242])
    out: list[int] = []
    seen: set[int] = set()
    while len(out) < episodes:  # draws continue one stream: a shorter list is a prefix
        for s in rng.integers(0, 2**31 - 1, size=episodes - len(out)):
            if int(s) not in seen:
                seen.add(int(s))
                out.append(int(s))
    return out


@lru_cache(maxsize=8)
def _reserved(seed: int) -> frozenset[int]:
    return frozenset(evaluation_seeds(seed, REPORT_EPISODES_MAX))


def selection_of(meta: dict) -> tuple[int, int] | None:
    """(seed, episodes) of the selection that chose a policy, from its meta: CMA-ES's
    ``selected`` controller (``selection_seed``, ``selection_episodes``) or an SB3
    policy (``seed``, ``selected.episodes``); None if nothing was selected on seeds (or
    ``meta`` is not a mapping: the policy's loader names that file)."""
    if not isinstance(meta, dict):
        return None
    if "selection_seed" in meta and "selection_episodes" in meta:
        return int(meta["selection_seed"]), int(meta["selection_episodes"])
    selected = meta.get("selected")
    if isinstance(selected, dict) and "episodes" in selected and "seed" in meta:
        return int(meta["seed"]), int(selected["episodes"])
    return None


def check_report_seeds(seeds: list[int], selection: tuple[int, int] | None,
                       what: str) -> None:
    """Refuse to report ``what`` on ``seeds`` that meet the seeds it was selected on."""
    if selection is None:
        return
    met = set(seeds) & set(selection_seeds(*selection))
    if met:
        raise ConfigError(
            f"{what} was selected on {selection[1]} episodes of selection seed "
            f"{selection[0]}; {len(met)} of these evaluation episodes are among them: "
            "give another seed=N")


def search_seed(seed: int, k: int) -> int:
    """The CMA-ES seed of search ``k`` of a run with ``seed``: the run's own for k = 0
    (``controller.restarts``, :mod:`agents.searches`)."""
    if k == 0:
        return seed
    return int(np.random.default_rng([seed, 60617, k]).integers(0, 2**31 - 1))


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
