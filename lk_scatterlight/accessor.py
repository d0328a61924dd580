"""Hooks into lightkurve: ``tpf.to_corrector("scatterlight")`` and ``tpf.scatterlight``.

lightkurve 2.x has no plugin mechanism: ``TargetPixelFile.to_corrector``
accepts only the methods it knows. `register` therefore wraps that method on
`lightkurve.TessTargetPixelFile` only: ``"scatterlight"`` goes to
`ScatterLightCorrector`, every other method to lightkurve's own code, so its
behaviour and errors are unchanged (an unknown method's error also lists
``"scatterlight"``). The wrapper is marked, so registering twice, re-importing
or reloading this module never stacks wrappers, and `unregister` puts back the
original function object.
"""

from __future__ import annotations

import functools
import warnings

from .exceptions import ScatterLightWarning

__all__ = ["register", "unregister", "is_registered", "ScatterLightAccessor"]

ACCESSOR_NAME = "scatterlight"
METHOD_NAME = "scatterlight"
_MARK = "_lk_scatterlight_hook"


def _tess_class():
    from lightkurve import TessTargetPixelFile

    return TessTargetPixelFile


class ScatterLightAccessor:
    """``tpf.scatterlight``: scattered-light model and correction of a TESS TPF.

    Every method takes ``cube`` (a `ScatterLightCube`, a path, or None for the
    published cube of the TPF's sector/camera/CCD) and forwards other keyword
    arguments to `ScatterLightCorrector`.
    """

    def __init__(self, tpf):
        self._tpf = tpf

    def corrector(self, cube=None, **kwargs):
        """The `ScatterLightCorrector` of this TPF."""
        from .corrector import ScatterLightCorrector

        return ScatterLightCorrector(self._tpf, cube=cube, **kwargs)

    def model(self, cube=None, **kwargs):
        """Scattered-light model on the TPF's pixels and cadences.

        Returns
        -------
        model : `~astropy.units.Quantity`, shape (ntime, nrow, ncol) [e-/s]
            NaN at cadences the cube does not cover.
        """
        return self.corrector(cube, **kwargs)._evaluate().flux

    def correct(self, cube=None, **kwargs):
        """A copy of the TPF with the scattered light subtracted.

        See `~lk_scatterlight.ScatterLightCorrector.correct_tpf`.
        """
        return self.corrector(cube, **kwargs).correct_tpf()

    def to_lightcurve(self, aperture_mask="default", cube=None, **kwargs):
        """The scattered-light-corrected aperture light curve."""
        return self.corrector(cube, aperture_mask=aperture_mask, **kwargs).correct()

    def plot(self, frame: int = 0, cube=None, ax=None, **kwargs):
        """TPF, model and residual images at cadence ``frame``; returns the Axes."""
        return self.corrector(cube, **kwargs).diagnose_model(frame=frame, ax=ax)


class _AccessorProperty:
    """Descriptor making ``tpf.scatterlight`` a fresh `ScatterLightAccessor`."""

    def __init__(self):
        setattr(self, _MARK, True)

    def __get__(self, tpf, owner=None):
        if tpf is None:
            return ScatterLightAccessor
        return ScatterLightAccessor(tpf)


def _make_to_corrector(original):
    @functools.wraps(original)
    def to_corrector(self, method="pld", **kwargs):
        if method == METHOD_NAME:
            from .corrector import ScatterLightCorrector

            return ScatterLightCorrector(self, **kwargs)
        try:
            return original(self, method, **kwargs)
        except ValueError as err:
            if str(err).startswith("Unrecognized method"):
                message = f"{err}\n(with lk_scatterlight: also '{METHOD_NAME}')"
                raise ValueError(message) from None
            raise

    to_corrector.__doc__ = (original.__doc__ or "") + (
        f'\n        ``method="{METHOD_NAME}"`` (added by lk_scatterlight) returns a\n'
        "        `lk_scatterlight.ScatterLightCorrector`.\n"
    )
    setattr(to_corrector, _MARK, True)
    return to_corrector


def is_registered() -> bool:
    """Whether the lightkurve hooks are in place."""
    cls = _tess_class()
    return getattr(cls.__dict__.get("to_corrector"), _MARK, False) and getattr(
        cls.__dict__.get(ACCESSOR_NAME), _MARK, False
    )


def register() -> None:
    """Add ``"scatterlight"`` to ``TessTargetPixelFile.to_corrector`` and the accessor.

    Idempotent. Warns if another package already defines
    ``TessTargetPixelFile.scatterlight`` (the accessor then replaces it, as
    pandas does for accessors).
    """
    cls = _tess_class()
    current = cls.__dict__.get("to_corrector")
    if not getattr(current, _MARK, False):
        cls.to_corrector = _make_to_corrector(cls.to_corrector)
    existing = getattr(cls, ACCESSOR_NAME, None)
    if not getattr(cls.__dict__.get(ACCESSOR_NAME), _MARK, False):
        if existing is not None:
            warnings.warn(
                f"TessTargetPixelFile.{ACCESSOR_NAME} is already defined ({existing!r}); "
                "lk_scatterlight's accessor replaces it.",
                ScatterLightWarning,
                stacklevel=2,
            )
        setattr(cls, ACCESSOR_NAME, _AccessorProperty())


def unregister() -> None:
    """Remove the hooks, restoring lightkurve's own ``to_corrector``."""
    cls = _tess_class()
    current = cls.__dict__.get("to_corrector")
    if getattr(current, _MARK, False):
        original = current.__wrapped__
        if original is getattr(super(cls, cls), "to_corrector", None):
            delattr(cls, "to_corrector")  # it was inherited: drop the override
        else:
            cls.to_corrector = original
    if getattr(cls.__dict__.get(ACCESSOR_NAME), _MARK, False):
        delattr(cls, ACCESSOR_NAME)
