"""Diagnostic plots. pyplot is imported inside each function, never at import."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_correction", "plot_model_images"]


def _axes(ax, nrows: int, ncols: int, figsize):
    """The given Axes as a flat array, or new ones on a new figure."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return np.asarray(ax).ravel()
    _, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)
    return axes.ravel()


def plot_correction(original_lc, corrected_lc, model_lc, ax=None):
    """Original vs corrected light curve (top) and the aperture-summed model (bottom).

    Parameters
    ----------
    original_lc, corrected_lc, model_lc : `lightkurve.LightCurve`
    ax : array of two `matplotlib.axes.Axes`, optional

    Returns
    -------
    axes : ndarray of two `matplotlib.axes.Axes`
    """
    import lightkurve as lk
    import matplotlib.pyplot as plt

    with plt.style.context(lk.MPLSTYLE):
        axes = _axes(ax, 2, 1, (8.5, 6))
        original_lc.plot(ax=axes[0], normalize=False, label="original", c="0.6")
        corrected_lc.plot(ax=axes[0], normalize=False, label="scattered light removed", c="k")
        model_lc.plot(ax=axes[1], normalize=False, label="scattered-light model", c="C3")
        axes[0].set_xlabel("")
    return axes


def plot_model_images(flux, model, time=None, ax=None):
    """TPF image, scattered-light model and residual at one cadence.

    Parameters
    ----------
    flux, model : ndarray, shape (nrow, ncol) [e-/s]
    time : float, optional
        BTJD of the cadence, for the title.
    ax : array of three `matplotlib.axes.Axes`, optional

    Returns
    -------
    axes : ndarray of three `matplotlib.axes.Axes`
    """
    import lightkurve as lk
    import matplotlib.pyplot as plt

    with plt.style.context(lk.MPLSTYLE):
        axes = _axes(ax, 1, 3, (12, 3.8))
        lo, hi = np.nanpercentile(flux, [1, 95])
        panels = (
            (flux, "TPF flux", (lo, hi)),
            (model, "scattered-light model", None),
            (flux - model, "TPF - model", None),
        )
        for axis, (image, title, limits) in zip(axes, panels, strict=False):
            vmin, vmax = limits or np.nanpercentile(image, [1, 95])
            im = axis.imshow(image, origin="lower", vmin=vmin, vmax=vmax, cmap="viridis")
            axis.figure.colorbar(im, ax=axis, label="e$^-$/s")
            axis.set_title(title if time is None else f"{title}\nBTJD {time:.3f}")
    return axes
