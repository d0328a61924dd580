"""Building scattered-light cubes from TESS Full Frame Images.

Submodules (imported on demand, so importing this package is cheap):

* `lk_scatterlight.builder.sources`: where FFIs come from (`FFISource`,
  `LocalFFISource` for SPOC ``*ffic.fits`` files on disk,
  `SimulatedFFISource` for synthetic frames with known truth).
* `lk_scatterlight.builder.straps`: the CCD strap columns (TESS Instrument
  Handbook Table A.3).
"""
