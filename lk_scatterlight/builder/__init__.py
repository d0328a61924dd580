"""Building scattered-light cubes from TESS Full Frame Images.

Submodules (imported on demand, so importing this package is cheap):

* `lk_scatterlight.builder.sources`: where FFIs come from (`FFISource`,
  `LocalFFISource` for SPOC ``*ffic.fits`` files on disk,
  `SimulatedFFISource` for synthetic frames with known truth);
  `lk_scatterlight.builder.tesscube_source`: MAST's FFI cubes on AWS.
* `lk_scatterlight.builder.pipeline`: `build_cube` and `BuildConfig`.
* `lk_scatterlight.builder.binning`, `lk_scatterlight.builder.masks`:
  per-bin plane fits, frame and pixel masks (the CCD strap columns,
  TESS Instrument Handbook Table A.3, are the core module `lk_scatterlight.straps`).
* `lk_scatterlight.builder.distributed`: the same build on a Dask cluster,
  and many sectors/cameras/CCDs at once.
* `lk_scatterlight.builder.geometry`, `lk_scatterlight.builder.dataset`:
  Earth and Moon angle maps and machine-learning training sets.
* `lk_scatterlight.builder.publish`: Zenodo upload and registry lines.
"""
