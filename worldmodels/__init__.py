"""worldmodels: V (ConvVAE), M (FRMDN) and C for Ha & Schmidhuber-style world models.

This package holds the models and their math, data shards and datasets, checkpoints
and configuration; it has no environment code (see ``envs``) and no acting or
collection (see ``agents``).
"""

__version__ = "0.1.0"
