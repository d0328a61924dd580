"""Building scattered-light cubes from TESS Full Frame Images.

Submodules (imported on demand, so importing this package is cheap):

* `lk_scatterlight.builder.sources`: where FFIs come from (`FFISource`,
  `LocalFFISource` for SPOC ``*ffic.fits`` files on disk,
  `SimulatedFFISource` for synthetic frames with known truth);
  `lk_scatterlight.builder.tesscube_source`: MAST's FFI cubes on AWS;
  `lk_scatterlight.builder.source_factory`: a source from a ``--source`` description.
* `lk_scatterlight.builder.pipeline`: `build_cube` and `BuildConfig`, over the
  stages `lk_scatterlight.builder.config`, `lk_scatterlight.builder.plan`,
  `lk_scatterlight.builder.scene`, `lk_scatterlight.builder.framepass`,
  `lk_scatterlight.builder.strap_photometry`, `lk_scatterlight.builder.assembly`
  and `lk_scatterlight.builder.runner`.
* `lk_scatterlight.builder.binning`, `lk_scatterlight.builder.masks`:
  per-bin plane fits, frame and pixel masks (the CCD strap columns,
  TESS Instrument Handbook Table A.3, are the core module `lk_scatterlight.straps`).
* `lk_scatterlight.builder.distributed`: the same build on a Dask cluster,
  and many sectors/cameras/CCDs at once.
* `lk_scatterlight.builder.dataset`:
  Earth and Moon angle maps and machine-learning training sets.
* `lk_scatterlight.builder.publish`: checking and publishing cubes, over the
  Zenodo REST client `lk_scatterlight.builder.zenodo` and the registry file
  (`lk_scatterlight.registry_file`).

The builder may import the core; the core never imports the builder (see
``docs/developer.rst``).
"""
