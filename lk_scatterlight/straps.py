"""CCD strap columns of the TESS cameras (TESS Instrument Handbook, Table A.3).

The TESS CCDs are back-illuminated; metal straps (clock and bias lines) run
along a set of columns on the front side. Red light that passes through the
silicon is reflected back by the straps, so the pixels in those columns respond
a few percent more to diffuse light (sky, scattered light) than their
neighbours. A scattered-light builder has to treat these columns separately
(mask them or model their response), otherwise the strap pattern leaks into the
model.

The table below is Table A.3 of the TESS Instrument Handbook (Vanderspek et
al., "TESS Instrument Handbook", v0.1, 2018), as distributed with tess-backml
(``straps_handbook_tableA3.csv``). Its columns are **1-based science-column
indices** (1..2048); the 1-based CCD column, counting the 44 leading collateral
columns as lightkurve's ``tpf.column`` does, is the index + 44. The same
strap layout applies to every camera and CCD.

These are detector facts, so they live in the core: the simulator
(`lk_scatterlight.simulate`) draws the straps and the builder
(`lk_scatterlight.builder.pipeline`) measures their response;
``lk_scatterlight.builder.straps`` re-exports this module.

References
----------
1. Vanderspek, R., Doty, J., Fausnaugh, M., et al. 2018, "TESS Instrument
   Handbook", v0.1, Table A.3, https://archive.stsci.edu/missions/tess/doc/
   TESS_Instrument_Handbook_v0.1.pdf
"""

from __future__ import annotations

import numpy as np

from .ccd import COLLATERAL_COLUMNS, N_SCIENCE

__all__ = [
    "STRAP_TABLE",
    "STRAP_SCIENCE_COLUMNS",
    "STRAP_CCD_COLUMNS",
    "N_LEADING_COLLATERAL",
    "strap_groups",
    "strap_mask",
]

#: Number of leading collateral columns before the first science column
#: (`lk_scatterlight.ccd.COLLATERAL_COLUMNS`, under the name this module always used).
N_LEADING_COLLATERAL = COLLATERAL_COLUMNS

#: TESS Instrument Handbook Table A.3: (1-based science column, signal, metal layer).
STRAP_TABLE: tuple[tuple[int, str, str], ...] = (
    (77, "IA1", "M2"),
    (78, "IA1", "M2"),
    (81, "IA2", "M2"),
    (82, "IA2", "M2"),
    (85, "IA3", "M2"),
    (86, "IA3", "M2"),
    (205, "IA1", "M2"),
    (206, "IA1", "M2"),
    (209, "IA2", "M2"),
    (210, "IA2", "M2"),
    (213, "IA3", "M2"),
    (214, "IA3", "M2"),
    (333, "IA1", "M2"),
    (334, "IA1", "M2"),
    (337, "IA2", "M2"),
    (338, "IA2", "M2"),
    (341, "IA3", "M2"),
    (342, "IA3", "M2"),
    (461, "IA1", "M2"),
    (462, "IA1", "M2"),
    (465, "IA2", "M2"),
    (466, "IA2", "M2"),
    (469, "IA3", "M2"),
    (470, "IA3", "M2"),
    (516, "US2", "M1"),
    (517, "US2", "M1"),
    (520, "US1", "M1"),
    (521, "US1", "M1"),
    (524, "US3", "M1"),
    (525, "US3", "M1"),
    (589, "IA1", "M2"),
    (590, "IA1", "M2"),
    (593, "IA2", "M2"),
    (594, "IA2", "M2"),
    (597, "IA3", "M2"),
    (598, "IA3", "M2"),
    (673, "RTD1", "M2"),
    (674, "RTD1", "M2"),
    (675, "RTD2", "M2"),
    (676, "RTD2", "M2"),
    (717, "IA1", "M2"),
    (718, "IA1", "M2"),
    (721, "IA2", "M2"),
    (722, "IA2", "M2"),
    (725, "IA3", "M2"),
    (726, "IA3", "M2"),
    (845, "IA1", "M2"),
    (846, "IA1", "M2"),
    (849, "IA2", "M2"),
    (850, "IA2", "M2"),
    (853, "IA3", "M2"),
    (854, "IA3", "M2"),
    (973, "IA1", "M2"),
    (974, "IA1", "M2"),
    (977, "IA2", "M2"),
    (978, "IA2", "M2"),
    (981, "IA3", "M2"),
    (982, "IA3", "M2"),
    (1067, "IA3", "M2"),
    (1068, "IA3", "M2"),
    (1071, "IA2", "M2"),
    (1072, "IA2", "M2"),
    (1075, "IA1", "M2"),
    (1076, "IA1", "M2"),
    (1195, "IA3", "M2"),
    (1196, "IA3", "M2"),
    (1199, "IA2", "M2"),
    (1200, "IA2", "M2"),
    (1203, "IA1", "M2"),
    (1204, "IA1", "M2"),
    (1323, "IA3", "M2"),
    (1324, "IA3", "M2"),
    (1327, "IA2", "M2"),
    (1328, "IA2", "M2"),
    (1331, "IA1", "M2"),
    (1332, "IA1", "M2"),
    (1373, "RTD3", "M2"),
    (1374, "RTD3", "M2"),
    (1375, "RTD4", "M2"),
    (1376, "RTD4", "M2"),
    (1451, "IA3", "M2"),
    (1452, "IA3", "M2"),
    (1455, "IA2", "M2"),
    (1456, "IA2", "M2"),
    (1459, "IA1", "M2"),
    (1460, "IA1", "M2"),
    (1524, "US3", "M1"),
    (1525, "US3", "M1"),
    (1528, "US1", "M1"),
    (1529, "US1", "M1"),
    (1532, "US2", "M1"),
    (1533, "US2", "M1"),
    (1579, "IA3", "M2"),
    (1580, "IA3", "M2"),
    (1583, "IA2", "M2"),
    (1584, "IA2", "M2"),
    (1587, "IA1", "M2"),
    (1588, "IA1", "M2"),
    (1707, "IA3", "M2"),
    (1708, "IA3", "M2"),
    (1711, "IA2", "M2"),
    (1712, "IA2", "M2"),
    (1715, "IA1", "M2"),
    (1716, "IA1", "M2"),
    (1835, "IA3", "M2"),
    (1836, "IA3", "M2"),
    (1839, "IA2", "M2"),
    (1840, "IA2", "M2"),
    (1843, "IA1", "M2"),
    (1844, "IA1", "M2"),
    (1963, "IA3", "M2"),
    (1964, "IA3", "M2"),
    (1967, "IA2", "M2"),
    (1968, "IA2", "M2"),
    (1971, "IA1", "M2"),
    (1972, "IA1", "M2"),
)

#: Strap columns as 1-based science-column indices (1..2048), ascending.
STRAP_SCIENCE_COLUMNS: tuple[int, ...] = tuple(entry[0] for entry in STRAP_TABLE)

#: Strap columns as 1-based CCD columns (science index + 44; science columns are 45..2092).
STRAP_CCD_COLUMNS: tuple[int, ...] = tuple(c + N_LEADING_COLLATERAL for c in STRAP_SCIENCE_COLUMNS)


def strap_groups() -> tuple[tuple[int, ...], ...]:
    """Group the strap columns into physical straps.

    A strap is a run of adjacent columns carrying the same signal (two columns
    each in Table A.3).

    Returns
    -------
    groups : tuple of tuple of int
        1-based CCD columns of each strap, ascending.
    """
    groups: list[list[int]] = []
    previous: tuple[int, str] | None = None
    for column, signal, _layer in STRAP_TABLE:
        ccd_column = column + N_LEADING_COLLATERAL
        if previous is not None and signal == previous[1] and column == previous[0] + 1:
            groups[-1].append(ccd_column)
        else:
            groups.append([ccd_column])
        previous = (column, signal)
    return tuple(tuple(g) for g in groups)


def strap_mask() -> np.ndarray:
    """Boolean mask of the strap columns over the science columns.

    Returns
    -------
    mask : ndarray of bool, shape (2048,)
        True for strap columns; element ``i`` is CCD column ``i + 45`` (1-based),
        i.e. 0-based FFI array column ``i + 44``.
    """
    mask = np.zeros(N_SCIENCE, dtype=bool)
    mask[np.asarray(STRAP_SCIENCE_COLUMNS) - 1] = True
    return mask
