"""The strap response's reference: a line at the strap, blind to rows where the light curves."""

import numpy as np
import pytest

from lk_scatterlight.builder import strap_photometry

# A strap pair's references sit unevenly: 2-3 px on one side, 11-12 px on the other.
STRAPS = np.array([40, 41, 120])
REFS = np.array([[38, 37, 51, 52], [38, 37, 51, 52], [116, 115, 124, 125]])
RESPONSE = np.array([1.04, 1.04, 1.03])


def test_reference_weights_follow_a_line_and_see_a_bend():
    line, bend = strap_photometry.reference_weights(STRAPS, REFS)
    for s, refs, w, b in zip(STRAPS, REFS, line, bend, strict=True):
        x = refs - s
        assert w.sum() == pytest.approx(1)
        assert np.dot(w, 3 + 0.5 * x) == pytest.approx(3, abs=1e-5)  # the line, at the strap
        assert np.dot(b, 3 + 0.5 * x) == pytest.approx(0, abs=1e-5)  # no bend in a line
        assert np.dot(b, x**2) == pytest.approx(-np.dot(w, x**2), abs=1e-4)  # parabola at 0 is 0


def _frames(profile, nframes=6, nrows=2048, noise=0.0, seed=3):
    """Static-subtracted frames: amplitude a(t) times ``profile(row, column)``, straps scaled."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:nrows, 0:160].astype(float)
    out = []
    for t in range(nframes):
        light = (5 + 10 * t) * profile(rows, cols, t)
        light[:, STRAPS] *= RESPONSE
        out.append((light + noise * rng.standard_normal(light.shape)).astype(np.float32))
    return out


def _response(frames):
    clean = np.ones(frames[0].shape, dtype=bool)
    sums = sum(strap_photometry.strap_sums(f, clean, STRAPS, REFS) for f in frames)
    return sums[:, 0] / sums[:, 1]


def test_a_gradient_across_the_columns_leaves_no_bias():
    """The references' plain mean sits 4.5 px off the strap pair: 1.5 % off here."""
    response = _response(_frames(lambda r, c, t: 1 + 0.01 * (c - 40) / (1 + 0.001 * r)))
    np.testing.assert_allclose(response, RESPONSE, rtol=1e-5)


def test_a_ridge_crossing_the_straps_leaves_no_bias():
    """A 6-px wide ridge crossing the columns at a slant: without the curved rows left out,
    the response is ~0.15 % off (here 4x the tolerance); with them, within the sums' noise."""

    def ridge(r, c, t):
        across = (c - 80) * 0.8 + (r - 300 - 250 * t) * 0.6
        return 1 + 0.002 * c + 3 * np.exp(-0.5 * (across / 6) ** 2)

    frames = _frames(ridge, noise=0.05)
    response = _response(frames)
    np.testing.assert_allclose(response, RESPONSE, rtol=4e-4)
    # Without the curvature cut the bias is well outside that tolerance.
    clean = np.ones(frames[0].shape, dtype=bool)
    line, _ = strap_photometry.reference_weights(STRAPS, REFS)
    sr = rr = 0
    for f in frames:
        ref = np.einsum("rnk,nk->nr", f[:, REFS].astype(float), line)
        sr = sr + np.sum(f[:, STRAPS].T * ref * clean[:, STRAPS].T, axis=1)
        rr = rr + np.sum(ref**2, axis=1)
    assert np.max(np.abs(sr / rr / RESPONSE - 1)) > 4 * 4e-4


def test_pure_noise_loses_few_rows():
    rng = np.random.default_rng(5)
    curve = rng.standard_normal((3, 2048)).astype(np.float32)
    ok = np.ones(curve.shape, dtype=bool)
    lost = strap_photometry.curved_rows(curve, ok).mean()
    assert 0.01 < lost < 0.06  # 0.27 % beyond 3 sigma, each grown to 13 rows
    ok[1] = False
    assert not strap_photometry.curved_rows(curve, ok)[1].any()


def test_static_columns_gathered_once_give_the_same_sums():
    """The fine pass adds the static scene from its strap and reference columns, gathered
    once per build (`gather_columns`): bit for bit the sums of adding the whole image."""
    rng = np.random.default_rng(5)
    diff, static = rng.normal(0, 1, (2, 2048, 160)).astype(np.float32)
    static += 30
    clean = rng.random((2048, 160)) > 0.05
    columns = strap_photometry.gather_columns(static, STRAPS, REFS)
    assert columns.shape == (np.unique(np.r_[STRAPS, REFS.ravel()]).size, 2048)
    assert columns.flags.c_contiguous
    whole = strap_photometry.strap_sums(diff + static, clean, STRAPS, REFS)
    gathered = strap_photometry.strap_sums(diff, clean, STRAPS, REFS, static_columns=columns)
    np.testing.assert_array_equal(gathered, whole)
    alone = strap_photometry.strap_sums(diff, clean, STRAPS, REFS)
    assert not np.allclose(alone, whole)  # the static scene changed the sums
