"""The offline demo, through the command line as users run it."""

import numpy as np
import pytest

from lk_scatterlight import simulate
from lk_scatterlight.cli import main


@pytest.mark.slow
def test_demo_command(tmp_path, capsys, monkeypatch):
    """The whole offline chain through `lk-scatterlight demo`: simulated FFIs, a regional
    build, local registry, fetch, correction. Over time the model is within 0.05% of the
    injected range of the injected light above the cube's darkest frames, and > 95% of
    the scattered light is removed; what stays is the darkest frames' light."""
    from lk_scatterlight import demo

    results = []
    run = demo.run_demo

    def keep(**kwargs):
        results.append(run(**kwargs))
        return results[-1]

    monkeypatch.setattr(demo, "run_demo", keep)
    out = tmp_path / "demo.png"
    assert main(["demo", "--out", str(out), "--seed", "1", "--no-progress"]) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "after correction" in text
    assert "local registry" in text
    assert out.stat().st_size > 20_000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["demo.png"]  # no temporary left
    (result,) = results
    # Progress: one line per step on stderr, as it ends, with its time.
    steps = [line.split()[0] for line in captured.err.splitlines() if " s  " in line]
    assert steps == ["simulate", "build", "publish", "fetch", "correct", "figure"]
    assert "%|" not in captured.err  # --no-progress: no bar, pooch's download bar included
    assert list(result.timings) == [*steps, "total"]
    assert result.ncadences > 1000  # a whole sector of 30-min FFIs
    assert "160 x 160 px" in result.region  # the TPF's neighbourhood, not the CCD
    assert result.model_rms < 0.0005 * result.injected_range
    assert abs(result.model_offset) < 0.005 * result.injected_range  # [e-/s] the level
    assert result.after_rms < 0.05 * result.before_rms
    assert result.lc_after_rms < 0.05 * result.lc_before_rms
    # The corrected light curve sits above the true stellar flux by the darkest
    # frames' light summed over the aperture (within 10%).
    assert result.floor > 1.0  # [e-/s per pixel]
    assert result.lc_offset == pytest.approx(result.floor * result.aperture_pixels, rel=0.1)
    assert result.cube_file.endswith(".fits")
    assert f"{result.after_rms:8.2f}" in text


def test_simulation_is_deterministic_and_continuous():
    field = simulate.ScatteredLightField(seed=9)
    again = simulate.ScatteredLightField(seed=9)
    time = simulate.sector_times(1)
    rows, cols = np.array([1.0, 1024, 2048]), np.array([45.0, 1000, 2092])
    values = field(time, rows, cols)
    np.testing.assert_array_equal(values, again(time, rows, cols))
    assert np.all(values > 0)
    # Continuous in time at 30-min cadence, perigee included (no jump > 10% of range).
    steps = np.abs(np.diff(values, axis=0))
    contiguous = np.diff(time) < 0.03
    assert steps[contiguous].max() < 0.1 * np.ptp(values)
    assert np.diff(time).max() > 0.9  # the orbit gap


def test_make_cube_checks_bin():
    with pytest.raises(ValueError, match="must divide 2048"):
        simulate.make_cube(simulate.ScatteredLightField(), pixel_bin=100)


def test_plot_recovery_shows_what_the_correction_got_wrong():
    from matplotlib.figure import Figure

    from lk_scatterlight.plotting import plot_recovery

    time = np.linspace(1325.0, 1330.0, 101)
    true_flux = 1000.0 + np.sin(time)  # the star, its noise included
    ramp = 500.0 * np.exp(-(time - 1325.0))
    original = true_flux + ramp + 20.0  # 20 e-/s of the darkest frames' light
    corrected = original - 0.99 * ramp  # the model misses 1 % of the ramp
    axes = Figure().subplots(2, 1)
    out = plot_recovery(
        time, original, corrected, true_flux, floor=20.0, window=(1325, 1326), ax=axes
    )
    assert list(out) == list(axes)
    shown = (time >= 1325) & (time <= 1326)
    (zero, error) = out[1].lines
    np.testing.assert_allclose(error.get_xdata(), time[shown])
    np.testing.assert_allclose(error.get_ydata(), 0.01 * ramp[shown])
    labels = [line.get_label() for line in out[0].lines]
    assert labels[2] == "injected + constant floor (+20 e$^-$/s)"
    np.testing.assert_allclose(out[0].lines[2].get_ydata(), true_flux[shown] + 20.0)
    no_floor = plot_recovery(time, original, corrected, true_flux, ax=Figure().subplots(2, 1))
    assert len(no_floor[0].lines) == 3  # no dashed line without a floor
