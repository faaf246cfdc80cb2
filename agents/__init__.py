"""Acting and learning: data-collection policies, parallel collection, the V-M-C agent,
CMA-ES (real-env and dream evaluators) and SB3 training, dream checks, evaluation."""
