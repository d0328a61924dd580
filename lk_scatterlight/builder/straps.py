"""The CCD strap columns; moved to the core module `lk_scatterlight.straps`.

The strap layout is a detector fact that the simulator needs as well as the
builder, and the core never imports the builder. Every name is re-exported here
so existing imports keep working.
"""

from __future__ import annotations

from ..straps import (
    N_LEADING_COLLATERAL,
    STRAP_CCD_COLUMNS,
    STRAP_SCIENCE_COLUMNS,
    STRAP_TABLE,
    strap_groups,
    strap_mask,
)

__all__ = [
    "STRAP_TABLE",
    "STRAP_SCIENCE_COLUMNS",
    "STRAP_CCD_COLUMNS",
    "N_LEADING_COLLATERAL",
    "strap_groups",
    "strap_mask",
]
