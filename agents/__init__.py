"""Acting and learning: data-collection policies, parallel collection, (later) the V-M-C
agent, CMA-ES and SB3 training, evaluation."""
