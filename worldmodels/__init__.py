"""worldmodels: V (ConvVAE), M (the FRMDN, or another ``memory.kind``) and C for world models.

This package holds the models and their math, data shards and datasets, checkpoints
and configuration; it has no environment code (see ``envs``) and no acting or
collection (see ``agents``).
"""

__version__ = "0.1.0"
