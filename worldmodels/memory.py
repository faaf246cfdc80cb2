"""M's seam: the memory models a run can hold, by their checkpoint kind."""

from __future__ import annotations

from torch import nn

from worldmodels.frmdn import FRMDN

#: checkpoint kind -> memory model class
MEMORY_KINDS: dict[str, type[nn.Module]] = {"FRMDN": FRMDN}
