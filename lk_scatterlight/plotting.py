"""Diagnostic plots. pyplot is imported inside each function, never at import."""

from __future__ import annotations

import numpy as np

__all__ = [
    "plot_correction",
    "plot_model_images",
    "plot_recovery",
    "animate_cube",
    "animate_maps",
    "plot_geometry_maps",
    "plot_dark_frame",
]


def _axes(ax, nrows: int, ncols: int, figsize):
    """The given Axes as a flat array, or new ones on a new figure."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return np.asarray(ax).ravel()
    _, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)
    return axes.ravel()


def plot_correction(original_lc, corrected_lc, model_lc, ax=None, fusion=None, aperture=None):
    """Original vs corrected light curve, the aperture-summed model and the fusion.

    Parameters
    ----------
    original_lc, corrected_lc, model_lc : `lightkurve.LightCurve`
    ax : array of `matplotlib.axes.Axes`, optional
        Two, or three with ``fusion``.
    fusion : `~lk_scatterlight.fusion.Fusion`, optional
        Per-cadence local estimate, model error and fused offset (third panel).
    aperture : ndarray of bool, optional
        The aperture: with a fitted surface, the fused correction averaged over it
        is drawn too.

    Returns
    -------
    axes : ndarray of `matplotlib.axes.Axes`
    """
    import lightkurve as lk
    import matplotlib.pyplot as plt

    with plt.style.context(lk.MPLSTYLE):
        n = 2 if fusion is None else 3
        axes = _axes(ax, n, 1, (8.5, 3 * n))
        original_lc.plot(ax=axes[0], normalize=False, label="original", c="0.6")
        corrected_lc.plot(ax=axes[0], normalize=False, label="scattered light removed", c="k")
        model_lc.plot(ax=axes[1], normalize=False, label="scattered-light model", c="C3")
        axes[0].set_xlabel("")
        if fusion is not None:
            axes[1].set_xlabel("")
            t = original_lc.time.value
            ax3 = axes[2]
            ax3.fill_between(
                t, -fusion.model_err, fusion.model_err, color="C3", alpha=0.2, label="model error"
            )
            ax3.errorbar(
                t, fusion.local, fusion.local_err, fmt=".", ms=2, c="0.5", lw=0.5,
                label="local estimate (faint pixels)",
            )  # fmt: skip
            points = ax3.scatter(
                t, fusion.offset, c=fusion.weight, s=4, cmap="viridis", vmin=0, vmax=1,
                label="fused offset", zorder=3,
            )  # fmt: skip
            if fusion.has_surface and aperture is not None:
                n = max(int(np.sum(aperture)), 1)
                ax3.plot(
                    t, fusion.aperture_correction(aperture) / n, c="C1", lw=0.8, zorder=2,
                    label="fused, with the surface (aperture mean)",
                )  # fmt: skip
            plt.colorbar(points, ax=ax3, label="weight of the local estimate")
            ax3.set_ylabel("level [e$^-$/s/pixel]")
            ax3.set_xlabel("Time - 2457000 [BTJD days]")
            ax3.legend(loc="upper right", fontsize="small")
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


def plot_recovery(time, original, corrected, true_flux, floor=0.0, window=None, ax=None):
    """A light curve before and after correction beside the injected truth (simulations).

    The top panel shows the light curve before (grey) and after (black)
    correction, the true flux without scattered light (red) and, dashed, the
    true flux plus ``floor``: the constant a correction is expected to leave
    (a cube models the light above its darkest frames, so their light stays).
    The bottom panel shows what the correction got wrong: corrected minus
    (true flux + floor).

    Parameters
    ----------
    time : array of float, shape (ntime,)
        BTJD [d].
    original, corrected : array of float, shape (ntime,)
        Flux before and after correction [e-/s].
    true_flux : array of float, shape (ntime,)
        ``original`` minus the injected scattered light [e-/s]: same noise,
        so the bottom panel shows the correction's error alone.
    floor : float
        Constant the correction leaves [e-/s]; 0 draws no dashed line.
    window : (float, float), optional
        BTJD range to show [d]; default all.
    ax : array of two `matplotlib.axes.Axes`, optional
        Light curve and error panels (share their x axis for a zoom).

    Returns
    -------
    axes : ndarray of two `matplotlib.axes.Axes`
    """
    import lightkurve as lk
    import matplotlib.pyplot as plt

    time, original, corrected, true_flux = (
        np.asarray(a, dtype=float) for a in (time, original, corrected, true_flux)
    )
    shown = np.ones(time.size, dtype=bool)
    if window is not None:
        shown = (time >= window[0]) & (time <= window[1])
    t = time[shown]
    with plt.style.context(lk.MPLSTYLE):
        axes = _axes(ax, 2, 1, (8.5, 6))
        top, bottom = axes
        top.plot(t, original[shown], ".", ms=3, c="0.6", label="original")
        top.plot(t, true_flux[shown], "-", lw=1, c="C3", label="injected: without scattered light")
        if floor:
            label = f"injected + constant floor ({floor:+.0f} e$^-$/s)"
            top.plot(t, true_flux[shown] + floor, "--", lw=1, c="C3", label=label)
        top.plot(t, corrected[shown], ".", ms=3, c="k", label="corrected")
        top.set_ylabel("Flux [e$^-$/s]")
        top.legend(loc="upper right", fontsize="small")
        error = corrected[shown] - true_flux[shown] - floor
        bottom.axhline(0, c="C3", lw=1)
        bottom.plot(t, error, ".", ms=3, c="k")
        bottom.set_ylabel("corrected $-$ injected\n$-$ floor [e$^-$/s]")
        bottom.set_xlabel("Time [BTJD]")
    return axes


# ---------------------------------------------------------------------- datasets and cubes
#: Default panels of `animate_maps`: dataset key -> (title, colormap, colour-bar label).
_MAP_PANELS = {
    "scatter_cube": ("scattered light", "viridis", "e$^-$/s"),
    "earth_alt_map": ("Earth angle", "magma_r", "deg"),
    "earth_az_map": ("Earth azimuth", "twilight", "deg"),
    "moon_alt_map": ("Moon angle", "cividis_r", "deg"),
    "moon_az_map": ("Moon azimuth", "twilight", "deg"),
    "earth_dist_map": ("Earth distance", "viridis", "R$_\\oplus$"),
    "moon_dist_map": ("Moon distance", "viridis", "R$_\\oplus$"),
    "scatter_cube_err": ("uncertainty", "viridis", "e$^-$/s"),
}


def _new_axes(ax, nrows: int, ncols: int, figsize):
    """The given Axes as a flat array, or new ones on a constrained-layout figure."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return np.atleast_1d(np.asarray(ax)).ravel()
    _, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, layout="constrained")
    return axes.ravel()


def _cube_arrays(cube) -> dict:
    """A dataset-like dict (scatter_cube, time, row, column) from a cube or a dataset."""
    if isinstance(cube, dict):
        return cube
    return {
        "scatter_cube": np.asarray(cube.flux.value),
        "time": np.asarray(cube.btjd),
        "row": np.asarray(cube.row),
        "column": np.asarray(cube.column),
    }


def _extent(row, column) -> tuple[float, float, float, float]:
    """imshow extent [pixel] of bin centres ``row``, ``column`` (1-based CCD pixels)."""
    row, column = np.asarray(row, float), np.asarray(column, float)
    dr = row[1] - row[0] if row.size > 1 else 1.0
    dc = column[1] - column[0] if column.size > 1 else 1.0
    return (column[0] - dc / 2, column[-1] + dc / 2, row[0] - dr / 2, row[-1] + dr / 2)


def _limits(key: str, array: np.ndarray) -> tuple[float, float]:
    if key.endswith("_az_map"):
        return 0.0, 360.0
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (
        np.percentile(finite, [1, 99])
        if key.startswith("scatter")
        else (
            finite.min(),
            finite.max(),
        )
    )
    return float(lo), float(hi if hi > lo else lo + 1)


def animate_maps(
    data,
    keys=("scatter_cube", "earth_alt_map", "earth_az_map", "moon_alt_map", "moon_az_map"),
    step: int = 1,
    path=None,
    fps: float = 10.0,
    ax=None,
):
    """Animate a training set's cube and geometry maps side by side over time.

    Parameters
    ----------
    data : dict
        From `lk_scatterlight.builder.dataset.make_dataset` or ``read_dataset``
        (needs ``time``, ``row``, ``column`` and the ``keys``).
    keys : sequence of str
        Arrays of shape (ntime, nrow, ncol) to show, one panel each.
    step : int
        Show every ``step``-th time plane.
    path : str or path-like, optional
        Write the animation to this GIF file (matplotlib's ``PillowWriter``).
    fps : float
        Frames per second of the GIF.
    ax : array of `matplotlib.axes.Axes`, optional
        One per key; default a new figure with one row of panels.

    Returns
    -------
    animation : `matplotlib.animation.FuncAnimation`
        Keep a reference to it while it is displayed.

    Examples
    --------
    >>> from lk_scatterlight.plotting import animate_maps
    >>> anim = animate_maps(data, step=10, path="s0001_4-3.gif")  # doctest: +SKIP
    """
    import lightkurve as lk
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation, PillowWriter

    keys = list(keys)
    frames = list(range(0, np.shape(data[keys[0]])[0], max(1, int(step))))
    extent = _extent(data["row"], data["column"])
    time = np.asarray(data["time"])
    with plt.style.context(lk.MPLSTYLE):
        axes = _new_axes(ax, 1, len(keys), (3.8 * len(keys), 3.6))
        images = []
        for axis, key in zip(axes, keys, strict=True):
            array = np.asarray(data[key])
            title, cmap, label = _MAP_PANELS.get(key, (key, "viridis", ""))
            vmin, vmax = _limits(key, array)
            im = axis.imshow(
                array[frames[0]],
                origin="lower",
                extent=extent,
                cmap=cmap,
                vmin=vmin,
                vmax=vmax,
                aspect="equal",
            )
            axis.figure.colorbar(im, ax=axis, label=label, shrink=0.8)
            axis.set_title(title)
            axis.set_xlabel("column")
            images.append((im, array))
        axes[0].set_ylabel("row")
        fig = axes[0].figure
        suptitle = fig.suptitle(f"BTJD {time[frames[0]]:.3f}")

        def update(index):
            for im, array in images:
                im.set_data(array[index])
            suptitle.set_text(f"BTJD {time[index]:.3f}")
            return [im for im, _ in images]

        animation = FuncAnimation(fig, update, frames=frames, interval=1000 / fps, blit=False)
        if path is not None:
            animation.save(str(path), writer=PillowWriter(fps=fps))
    return animation


def animate_cube(cube, step: int = 1, path=None, fps: float = 10.0, ax=None):
    """Animate a scattered-light cube over time.

    Parameters
    ----------
    cube : `~lk_scatterlight.ScatterLightCube` or dict
        A cube, or a training set dict (its ``scatter_cube``).
    step : int
        Show every ``step``-th plane.
    path : str or path-like, optional
        Write a GIF (matplotlib's ``PillowWriter``).
    fps : float
        Frames per second.
    ax : `matplotlib.axes.Axes`, optional

    Returns
    -------
    animation : `matplotlib.animation.FuncAnimation`
    """
    return animate_maps(_cube_arrays(cube), ("scatter_cube",), step=step, path=path, fps=fps, ax=ax)


def plot_geometry_maps(data, index: int = 0, ax=None):
    """The cube and the Earth and Moon maps at one time, with the boresight angles.

    Panels: scattered light, Earth angle map, Earth azimuth map (top); the
    boresight Earth and Moon angles over time with the plotted time marked,
    Moon angle map, Moon azimuth map (bottom). Angles are between the line of
    sight and the body [deg]; azimuths in the CCD frame (0 deg towards
    increasing column, 90 deg towards increasing row).

    Parameters
    ----------
    data : dict
        A training set (`lk_scatterlight.builder.dataset.make_dataset`).
    index : int
        Time plane to show.
    ax : array of six `matplotlib.axes.Axes`, optional

    Returns
    -------
    axes : ndarray of six `matplotlib.axes.Axes`
        In reading order.
    """
    import lightkurve as lk
    import matplotlib.pyplot as plt

    extent = _extent(data["row"], data["column"])
    time = np.asarray(data["time"])
    with plt.style.context(lk.MPLSTYLE):
        axes = _new_axes(ax, 2, 3, (13, 7.5))
        layout = (
            "scatter_cube",
            "earth_alt_map",
            "earth_az_map",
            None,
            "moon_alt_map",
            "moon_az_map",
        )
        for axis, key in zip(axes, layout, strict=True):
            if key is None:
                for body, colour in (("earth", "C0"), ("moon", "C1")):
                    axis.plot(time, data[f"{body}_alt"], ".", ms=2, c=colour, label=body.title())
                axis.axvline(time[index], c="k", lw=1)
                axis.ticklabel_format(axis="x", useOffset=False)
                axis.set_xlabel("BTJD [d]")
                axis.set_ylabel("boresight angle [deg]")
                axis.legend(loc="best")
                continue
            array = np.asarray(data[key])
            title, cmap, label = _MAP_PANELS[key]
            vmin, vmax = _limits(key, array)
            im = axis.imshow(
                array[index], origin="lower", extent=extent, cmap=cmap, vmin=vmin, vmax=vmax
            )
            axis.figure.colorbar(im, ax=axis, label=label, shrink=0.85)
            axis.set_title(title)
            axis.set_xlabel("column")
            axis.set_ylabel("row")
        axes[0].figure.suptitle(
            f"sector {int(data['sector'])} camera {int(data['camera'])} CCD {int(data['ccd'])}, "
            f"BTJD {time[index]:.3f}"
        )
    return axes


#: Colours (RGBA) of the mask overlay of `plot_dark_frame`.
_MASK_COLOURS = {
    "stars": (1.0, 0.1, 0.1, 0.55),
    "bleeds": (1.0, 0.85, 0.0, 0.9),
    "columns": (0.1, 0.6, 1.0, 0.6),
}


def plot_dark_frame(static, masks: dict, ax=None):
    """The dark frame (static scene) of a build, alone and with its masks.

    Parameters
    ----------
    static : ndarray, shape (2048, 2048)
        Static scene, science pixels [e-/s]
        (`lk_scatterlight.builder.preview.dark_frame`).
    masks : dict of str to ndarray of bool
        ``stars``, ``bleeds``, ``columns``
        (`lk_scatterlight.builder.preview.scene_masks`); other keys are drawn
        in grey.
    ax : array of two `matplotlib.axes.Axes`, optional

    Returns
    -------
    axes : ndarray of two `matplotlib.axes.Axes`
        The dark frame; the dark frame with the masks in colour.
    """
    import lightkurve as lk
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    static = np.asarray(static, dtype=float)
    nrow, ncol = static.shape
    extent = (44.5, 44.5 + ncol, 0.5, 0.5 + nrow)  # 1-based CCD pixels, collateral counted
    finite = static[np.isfinite(static)]
    vmin, vmax = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    with plt.style.context(lk.MPLSTYLE):
        axes = _new_axes(ax, 1, 2, (12, 5.6))
        for axis in axes:
            im = axis.imshow(
                static, origin="lower", extent=extent, cmap="Greys_r", vmin=vmin, vmax=vmax
            )
            axis.set_xlabel("column")
        axes[0].figure.colorbar(im, ax=axes[0], label="flux [e$^-$/s]", shrink=0.85)
        axes[0].set_ylabel("row")
        axes[0].set_title("dark frame (static scene)")
        overlay = np.zeros((nrow, ncol, 4))
        handles = []
        for name, mask in masks.items():
            colour = _MASK_COLOURS.get(name, (0.5, 0.5, 0.5, 0.6))
            overlay[np.asarray(mask, dtype=bool)] = colour
            fraction = 100 * np.mean(mask)
            handles.append(Patch(color=colour, label=f"{name} ({fraction:.3g} %)"))
        axes[1].imshow(overlay, origin="lower", extent=extent, interpolation="nearest")
        axes[1].set_title("masked pixels")
        axes[1].legend(handles=handles, loc="upper right", fontsize="small")
    return axes
