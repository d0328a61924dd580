"""Earth and Moon geometry (`lk_scatterlight.geometry`) against real TESS files.

Real data (``../shared/data``): the TESS Vectors of sector 1 camera 4 (HEASARC),
a JPL Horizons vector table of TESS for sectors 1-5 and a cropped SPOC FFI of
sector 1 camera 1 CCD 4. The SPICE path uses lkspacecraft's truncated test
kernels (sector 4), with its test mode set and undone in a fixture.

`test_tessvectors_all_cameras` reads each file from ``../shared/data`` when it
is there; otherwise it is a ``remote_data`` test (run with ``--remote-data``)
that downloads the files in `PINNED` from GitHub at a fixed commit, checked
against their SHA256. ``LK_SCATTERLIGHT_TEST_DATA_URL`` replaces
``https://raw.githubusercontent.com`` by a server with the same layout (a
mirror; `test_pinned_download` uses one on 127.0.0.1).
"""

import functools
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import HORIZONS, SHARED_DATA_DIR

from lk_scatterlight import geometry, tessvectors
from lk_scatterlight.exceptions import ScatterLightError
from lk_scatterlight.simulate import sector_times

pytest.importorskip("tesswcs", reason="tesswcs (the builder extra) provides the sector WCS")

VECTORS = "TessVectors_S001_C4_FFI.csv"
#: TESS Vectors of sector 1 by camera: camera 4 as HEASARC's CSV; cameras 1-3 as the
#: tessgi/tessvectors repository distributes them (xz-compressed CSV).
TESSVECTORS_FILES = {
    1: "TessVectors_S001_C1_FFI.xz",
    2: "TessVectors_S001_C2_FFI.xz",
    3: "TessVectors_S001_C3_FFI.xz",
    4: VECTORS,
}
#: tessgi/tessvectors commit of 2024-08-01, the last holding cameras 1-3 of sector 1 (the
#: next one removed them). Its camera-4 CSV is the file in ../shared/data, byte for byte.
TESSVECTORS_COMMIT = "92330ea152b12c3e20ea59e2337f39ed5866f8cd"
#: TeHanHunter/TESS_Gaia_Light_Curve (tglc) commit whose ephemeris table for 2018 is the
#: Horizons table in ../shared/data, byte for byte.
TGLC_COMMIT = "e860b0c29254c3304313e0c2db87472a77ab3b3c"
_VECTORS_PATH = f"tessgi/tessvectors/{TESSVECTORS_COMMIT}/Products/Vectors/FFI_Cadence"
#: Files the tests download when ../shared/data lacks them: name -> (path under
#: raw.githubusercontent.com, SHA256 of the file at that commit).
PINNED = {
    "TessVectors_S001_C1_FFI.xz": (
        f"{_VECTORS_PATH}/TessVectors_S001_C1_FFI.xz",
        "38905632cec883b02a88fa8f68d46b6be60d56ef82b2399541354a3765cb189f",
    ),
    "TessVectors_S001_C2_FFI.xz": (
        f"{_VECTORS_PATH}/TessVectors_S001_C2_FFI.xz",
        "19f95d813e0fa5b4fd818f8afda563a28ac6b846b4e62b092e1ff29cb6d2becf",
    ),
    "TessVectors_S001_C3_FFI.xz": (
        f"{_VECTORS_PATH}/TessVectors_S001_C3_FFI.xz",
        "3360df3efc171d770a24b24b88700ad374dc43335492d181a8f74e8ac459fd5b",
    ),
    VECTORS: (
        f"{_VECTORS_PATH}/{VECTORS}",
        "0689ec61730c0a4c219c55c5d086505cde3135a71bc591b96ea5e625a011dbea",
    ),
    HORIZONS: (
        f"TeHanHunter/TESS_Gaia_Light_Curve/{TGLC_COMMIT}/tglc/ephemeris_data/"
        "20180720_tess_ephem.csv",
        "68de070c9ae3edb2d8647015332fdbade8058bd5864b5fa738863934bd99aeee",
    ),
}
GITHUB_RAW = "https://raw.githubusercontent.com"
#: Environment variable naming a server laid out like raw.githubusercontent.com.
DATA_URL_ENV = "LK_SCATTERLIGHT_TEST_DATA_URL"
FFI = "tess2018206192942-s0001-1-4-0120-s_ffic_corner128x173.fits"
#: TESS pixel scale [deg/pixel] (21 arcsec).
PIXEL_DEG = 21 / 3600


@pytest.fixture(scope="module")
def vectors(shared_data):
    return tessvectors.read_tessvectors(shared_data(VECTORS))


def fetch_pinned(name: str, cache: Path, host: str | None = None) -> Path:
    """Download one of the `PINNED` files into ``cache`` and return its path.

    pooch writes to a temporary file, checks its SHA256 and only then moves it
    into place; a file already in ``cache`` with the right hash is not fetched
    again. ``host`` (else ``$LK_SCATTERLIGHT_TEST_DATA_URL``, else GitHub) is
    the server, laid out like raw.githubusercontent.com.
    """
    import pooch

    path, sha256 = PINNED[name]
    host = host or os.environ.get(DATA_URL_ENV) or GITHUB_RAW
    downloader = pooch.HTTPDownloader(timeout=60, progressbar=False)
    url = f"{host.rstrip('/')}/{path}"
    found = pooch.retrieve(
        url, known_hash=f"sha256:{sha256}", fname=name, path=cache, downloader=downloader
    )
    return Path(found)


def _shared_or_remote(camera: int):
    """A camera's parameter: plain if ../shared/data has its files, else ``remote_data``."""
    if all((SHARED_DATA_DIR / name).is_file() for name in (TESSVECTORS_FILES[camera], HORIZONS)):
        return pytest.param(camera, id=f"camera{camera}")
    return pytest.param(camera, id=f"camera{camera}-download", marks=pytest.mark.remote_data)


@pytest.fixture(scope="module")
def real_file(tmp_path_factory):
    """``real_file(name) -> Path``: ``../shared/data/name``, else the `PINNED` download."""
    cache = tmp_path_factory.mktemp("pinned")

    def get(name: str) -> Path:
        shared = SHARED_DATA_DIR / name
        return shared if shared.is_file() else fetch_pinned(name, cache)

    return get


@pytest.fixture(scope="module")
def real_horizons(request, real_file):
    """The sectors 1-5 Horizons table: the session's copy, or read from the download."""
    if (SHARED_DATA_DIR / HORIZONS).is_file():
        return request.getfixturevalue("horizons")
    return geometry.HorizonsEphemeris.read(real_file(HORIZONS))


@pytest.fixture(scope="module")
def pointings():
    """Sector 1 camera 4, all four CCDs (tesswcs)."""
    return {ccd: geometry.CCDPointing.from_sector(1, 4, ccd) for ccd in range(1, 5)}


@pytest.fixture(scope="module")
def spice():
    """A SPICE ephemeris on lkspacecraft's offline sector-4 kernels; global state undone."""
    lkspacecraft = pytest.importorskip("lkspacecraft")
    spiceypy = pytest.importorskip("spiceypy")
    lkspacecraft.enable_test_mode()
    try:
        ephemeris = geometry.SpiceEphemeris()
    finally:
        lkspacecraft.disable_test_mode()
    try:
        yield ephemeris
    finally:
        spiceypy.kclear()


# ---------------------------------------------------------------------- readers
def test_read_tessvectors_quirks(shared_data):
    path = shared_data(VECTORS)
    table = tessvectors.read_tessvectors(path)
    full = tessvectors.read_tessvectors(path, drop_invalid=False)
    # The header is found past the comment line without '#'; 1282 cadences, the last
    # one zero-filled.
    assert len(full) == 1282
    assert len(table) == 1281
    assert not full["valid"][-1]
    assert full["valid"][:-1].all()
    assert full["Earth_Distance"][-1] == 0
    assert full["MidTime"][-1] > 1353
    assert table.meta["sector"] == 1
    assert table.meta["camera"] == 4
    assert table.meta["cadence"] == "FFI"
    assert list(table["Cadence"][:3]) == [0, 1, 2]
    assert np.all(np.diff(table["MidTime"]) > 0)
    assert table["index"][0] == 0
    assert str(table["FFIFile"][0]).endswith("_ffic.fits")
    # The producing code copies the Earth azimuth into the Moon's spacecraft azimuth.
    assert np.array_equal(table["Moon_Spacecraft_Azimuth"], table["Earth_Spacecraft_Azimuth"])


def test_read_tessvectors_rejects(tmp_path):
    bad = tmp_path / "vectors.csv"
    bad.write_text("# TESSVector\nIndex,MidTime\n0,1325.3\n")
    with pytest.raises(ScatterLightError, match="',Cadence' or 'Cadence,'"):
        tessvectors.read_tessvectors(bad)
    bad.write_text("# TESSVector\nCadence,MidTime\n0,1325.3\n")
    with pytest.raises(ScatterLightError, match="no Earth_"):
        tessvectors.read_tessvectors(bad)
    with pytest.raises(ScatterLightError, match="Cannot read"):
        tessvectors.read_tessvectors(tmp_path / "missing.csv")


def test_horizons_reader_and_interpolation(horizons):
    assert horizons.center == "ssb"
    assert "TESS -95" in horizons.description
    assert horizons.jd.size == 10225
    assert np.all(np.diff(horizons.jd) > 0)
    lo, hi = horizons.coverage
    assert lo - 2457000 < 1300
    assert hi - 2457000 > 1480
    # First row of the file, au -> km.
    assert horizons.position[0] == pytest.approx(
        np.array([-3.413546885971429e-01, -8.681884035530514e-01, -3.760568786235993e-01])
        * geometry.AU_KM
    )
    # The spline passes through the samples and is smooth: built from hourly samples it
    # predicts the omitted half-hour samples to < 20 km at perigee, ~1 m elsewhere
    # (at the full 30-minute step the perigee error is ~16 times smaller).
    assert np.allclose(horizons.spacecraft_position(horizons.jd[:50]), horizons.position[:50])
    hourly = geometry.HorizonsEphemeris(horizons.jd[::2], horizons.position[::2])
    error = np.linalg.norm(
        hourly.spacecraft_position(horizons.jd[1:-1:2]) - horizons.position[1:-1:2], axis=1
    )
    assert error.max() < 20
    assert np.median(error) < 0.01
    with pytest.raises(ScatterLightError, match="outside the ephemeris"):
        horizons.body_vectors([lo - 1.0])


def test_horizons_layouts(horizons, tmp_path):
    # Round trip through the plain Horizons layout (no '#', header before $$SOE, km).
    path = horizons.write(tmp_path / "tess.csv")
    back = geometry.HorizonsEphemeris.read(path)
    assert back.center == "ssb"
    assert np.allclose(back.position, horizons.position, rtol=0, atol=1e-5)
    with pytest.raises(FileExistsError):
        horizons.write(path)
    # A geocentric table gives the same Earth and Moon vectors.
    jd = horizons.jd[2000:2010] + 0.013
    earth = geometry._builtin_body("earth", horizons.jd, "builtin")
    geo = geometry.HorizonsEphemeris(horizons.jd, horizons.position - earth, center="earth")
    for body, vector in horizons.body_vectors(jd).items():
        assert np.allclose(geo.body_vectors(jd)[body], vector, rtol=0, atol=1e-3)
    assert np.allclose(geo.spacecraft_position(jd), horizons.spacecraft_position(jd), atol=1e-3)
    text = path.read_text()
    for change, message in (
        (("Earth Mean Equator", "Ecliptic of J2000"), "ecliptic"),
        (("TESS (spacecraft) (-95)", "Mars (499)"), "not of TESS"),
        (("Solar System Barycenter (0)", "Sun (10)"), "centre"),
        (("$$SOE", "SOE"), r"\$\$SOE"),
    ):
        bad = tmp_path / "bad.csv"
        bad.write_text(text.replace(*change))
        with pytest.raises(ScatterLightError, match=message):
            geometry.HorizonsEphemeris.read(bad)


# ---------------------------------------------------------------------- pointing
def test_wcs_pixel_convention(shared_data):
    """tesswcs pixel (x, y) is the FFI array index: CCD column x + 1, row y + 1."""
    ffi = geometry.CCDPointing.from_ffi(shared_data(FFI))
    archive = geometry.CCDPointing.from_sector(1, 1, 4)
    assert (ffi.sector, ffi.camera, ffi.ccd) == (1, 1, 4)
    row = np.array([1.0, 1.0, 128.0, 1001.0, 2048.0])
    column = np.array([1.0, 45.0, 173.0, 1045.0, 2092.0])
    separation = np.rad2deg(
        np.arccos(
            np.clip(
                np.sum(ffi.line_of_sight(row, column) * archive.line_of_sight(row, column), -1),
                -1,
                1,
            )
        )
    )
    assert separation.max() < 5 / 3600  # one pixel would be 21 arcsec
    assert np.abs(ffi.axes - archive.axes).max() < 1e-5  # RA_NOM/DEC_NOM/ROLL_NOM == tesswcs


def test_barycentric_correction(shared_data, horizons):
    """BTJD -> spacecraft time reproduces SPOC's own correction (primary vs image TSTART)."""
    from astropy.io import fits

    path = shared_data(FFI)
    with fits.open(path) as hdul:
        primary, image = hdul[0].header, hdul[1].header
    btjd = 0.5 * (image["TSTART"] + image["TSTOP"])
    tjd = 0.5 * (primary["TSTART"] + primary["TSTOP"])
    assert (image["BTC_PIX2"], image["BTC_PIX1"]) == geometry.BARYCENTRIC_REFERENCE_PIXEL
    for pointing in (
        geometry.CCDPointing.from_ffi(path),
        geometry.CCDPointing.from_sector(1, 1, 4),
    ):
        found = geometry.spacecraft_time([btjd], pointing, horizons)[0]
        assert abs(found - tjd) * 86400 < 0.005  # s; BARYCORR is 490.59 s


def test_boresight(pointings, shared_data):
    first = pointings[1]
    assert first.boresight_spread < 0.005  # the four CCDs agree on the optical axis
    for ccd, pointing in pointings.items():
        assert np.allclose(pointing.boresight, first.boresight)
        row, column = pointing.boresight_pixel
        # Beyond the science corner nearest the camera centre (rows increase towards it).
        assert 2048 < row < 2130
        assert (2092 < column < 2170) if ccd in (1, 3) else (-30 < column < 45)
        los = pointing.line_of_sight(row, column)
        assert np.rad2deg(np.arccos(min(1.0, los @ pointing.boresight))) < 1e-6
    ra, dec = first.boresight_radec
    assert ra == pytest.approx(89.944, abs=0.01)
    assert dec == pytest.approx(-66.571, abs=0.01)
    # One CCD's own FFI WCS gives the same boresight as tesswcs' four CCDs.
    ffi = geometry.CCDPointing.from_ffi(shared_data(FFI))
    archive = geometry.CCDPointing.from_sector(1, 1, 4)
    assert np.rad2deg(np.arccos(ffi.boresight @ archive.boresight)) < 0.01


def test_optical_axis_pixel():
    row, column = geometry.optical_axis_pixel(4, 3)
    assert row == pytest.approx(2115.8, abs=0.5)
    assert column == pytest.approx(2152.3, abs=0.5)
    with pytest.raises(ScatterLightError, match="camera and ccd must be 1-4"):
        geometry.optical_axis_pixel(5, 1)


# ---------------------------------------------------------------------- TESS Vectors
#: Lag [s] of the TESS Vectors' values behind ``MidTime`` (fitted, see docs/geometry.rst).
TESSVECTORS_LAG = 57.0


@pytest.mark.parametrize("camera", [_shared_or_remote(camera) for camera in (1, 2, 3, 4)])
def test_tessvectors_all_cameras(camera, real_file, real_horizons):
    """Every camera of sector 1 against TESS Vectors, every cadence, both boresights.

    Numbers in the comments: measured on all four cameras with the `PINNED` files.
    """
    vectors = tessvectors.read_tessvectors(real_file(TESSVECTORS_FILES[camera]))
    assert (vectors.meta["sector"], vectors.meta["camera"]) == (1, camera)
    pointing = geometry.CCDPointing.from_sector(1, camera, 1)
    separation = np.rad2deg(np.arccos(pointing.boresight @ pointing.nominal_frame[2]))
    assert 0.005 < separation < 0.08  # optical axis vs nominal (measured 0.012-0.069)
    residuals = functools.partial(tessvectors.tessvectors_residuals, vectors, real_horizons)
    nominal = residuals(pointing)
    optical = residuals(pointing, boresight="optical")
    lagged = residuals(pointing, lag=TESSVECTORS_LAG)
    for body in geometry.BODIES:
        # TESS Vectors' own definition: within 0.05 deg even without the lag (measured
        # 0.037 deg angle, 0.070 deg azimuth), within 0.01 deg with it.
        assert np.abs(nominal[f"{body}_angle"]).max() < 0.05
        assert np.abs(nominal[f"{body}_azimuth"]).max() < 0.08
        assert np.abs(lagged[f"{body}_angle"]).max() < 0.006  # measured 0.0037
        assert np.abs(lagged[f"{body}_azimuth"]).max() < 0.01  # measured 0.0066
        # Around the optical axis the angle differs by at most the axes' separation, and
        # to_tessvectors_azimuth's conversion holds on every camera (it was 180 deg off on
        # cameras 1-2): within 0.2 deg (measured 0.17, the Moon on camera 1).
        difference = optical[f"{body}_angle"] - nominal[f"{body}_angle"]
        assert np.abs(difference).max() <= separation + 1e-6
        assert np.abs(optical[f"{body}_azimuth"]).max() < 0.2
        # Distances: one scale factor for the Earth and the Moon on every camera (medians
        # 1.002585 and 1.002574; after it at most 0.0020 Earth radii left): TESS Vectors'
        # "Earth radius" is 6394.6 km. The factor is already in the mission's Earth/Moon
        # tables (not an ephemeris, origin, lag or light-time effect; docs/geometry.rst).
        found = np.asarray(vectors[f"{body.title()}_Distance"])
        ratio = (lagged[f"{body}_distance"] + found) / found
        assert np.median(ratio) == pytest.approx(1.00258, abs=3e-5)
        assert np.abs(lagged[f"{body}_distance"] - (np.median(ratio) - 1) * found).max() < 0.005
    if camera == 1:  # the optical axis is farthest from the nominal one on camera 1
        assert np.abs(optical["earth_angle"]).max() > 0.05  # measured 0.106


def test_tessvectors_residual_errors(vectors, horizons, pointings):
    with pytest.raises(ScatterLightError, match="sector 1 camera 4"):
        tessvectors.tessvectors_residuals(
            vectors, horizons, geometry.CCDPointing.from_sector(1, 1, 4)
        )
    with pytest.raises(ScatterLightError, match="'nominal' or 'optical'"):
        tessvectors.tessvectors_residuals(vectors, horizons, pointings[1], boresight="centre")
    with pytest.raises(ScatterLightError, match="time_frame"):
        tessvectors.tessvectors_geometry([1330.0], pointings[1], horizons, time_frame="utc")


def test_tessvectors_geometry_btjd(horizons, pointings):
    """BTJD input is first converted to spacecraft time, as in compute_geometry."""
    btjd = sector_times(1)[100:103]
    pointing = pointings[2]
    tjd = geometry.spacecraft_time(btjd, pointing, horizons)
    a = tessvectors.tessvectors_geometry(btjd, pointing, horizons, time_frame="btjd")
    b = tessvectors.tessvectors_geometry(tjd, pointing, horizons)
    for key, value in a.items():
        assert value == pytest.approx(b[key], abs=1e-9)


def test_nominal_camera_frame(pointings):
    axes = pointings[1].axes
    for camera, tilt in geometry.NOMINAL_CAMERA_TILT.items():
        frame = geometry.nominal_camera_frame(axes, camera)
        assert frame @ frame.T == pytest.approx(np.eye(3), abs=1e-12)
        assert np.linalg.det(frame) == pytest.approx(1.0)  # right-handed
        # Boresight tilted from spacecraft +Z towards +X; zero point away from +Z.
        assert np.rad2deg(np.arccos(frame[2] @ axes[2])) == pytest.approx(abs(tilt))
        assert np.sign(frame[2] @ axes[0]) == np.sign(tilt)
        assert frame[0] @ axes[2] < 0
    with pytest.raises(ScatterLightError, match="camera must be 1-4"):
        geometry.nominal_camera_frame(axes, 0)


def test_read_tessvectors_repository_layout(tmp_path):
    """The tessgi/tessvectors .xz files: no comments, header 'Cadence,', meta from the name."""
    import lzma

    text = (
        "Cadence,MidTime,Earth_Distance,Earth_Camera_Angle,FFIFile\n"
        "0.0,1410.9,30.5,80.25,a.fits\n"
        "1.0,1410.92,30.6,80.5,b.fits\n"
        "2.0,1410.94,0.0,0.0,c.fits\n"
    )
    path = tmp_path / "TessVectors_S005_C2_FFI.xz"
    with lzma.open(path, "wt") as stream:
        stream.write(text)
    table = tessvectors.read_tessvectors(path)
    assert table.meta["sector"] == 5
    assert table.meta["camera"] == 2
    assert table.meta["cadence"] == "FFI"
    assert list(table["Earth_Camera_Angle"]) == [80.25, 80.5]
    assert "index" not in table.colnames
    broken = tmp_path / "TessVectors_S005_C3_FFI.xz"
    broken.write_bytes(b"not xz")
    with pytest.raises(ScatterLightError, match="Cannot read"):
        tessvectors.read_tessvectors(broken)


def test_read_tessvectors_timecorr_layout(tmp_path):
    """The repository's CSV files of July 2024 give the TPF's BTJD as MidTime, with TimeCorr."""
    # The first cadence of camera 1 in that layout (commit 66185eb); the later files give
    # MidTime 1325.3234944783037, the spacecraft time.
    text = (
        "# TESS Quaternions downsampled to end-user cadences\n"
        "# Sector: \t1\n# Camera: \t1\n# Cadence:\tFFI\n"
        "Cadence,MidTime,TimeCorr,Earth_Distance,Earth_Camera_Angle\n"
        "0.0,1325.328789628751,0.005295150447636843,20.3395949761793,115.913149725274\n"
        "1.0,0.0,0.0,0.0,0.0\n"
    )
    path = tmp_path / "TessVectors_S001_C1_FFI.csv"
    path.write_text(text)
    table = tessvectors.read_tessvectors(path)
    assert len(table) == 1
    assert table["MidTime_BTJD"][0] == 1325.328789628751
    assert table["MidTime"][0] == pytest.approx(1325.3234944783037, abs=1e-9)
    assert table.meta["camera"] == 1


def test_pinned_files_are_the_shared_ones(shared_data):
    """The pins name the very files of ../shared/data, so both paths measure the same."""
    import pooch

    for name in (VECTORS, HORIZONS):
        assert pooch.file_hash(str(shared_data(name))) == PINNED[name][1], name


def test_pinned_download(shared_data, server, tmp_path, monkeypatch):
    """The download path against a local server laid out like raw.githubusercontent.com."""
    path, _ = PINNED[VECTORS]
    served = server.directory / path
    served.parent.mkdir(parents=True)
    shutil.copyfile(shared_data(VECTORS), served)
    cache = tmp_path / "cache"
    monkeypatch.setenv(DATA_URL_ENV, server.url)
    found = fetch_pinned(VECTORS, cache)
    assert found == cache / VECTORS
    assert found.read_bytes() == served.read_bytes()
    assert tessvectors.read_tessvectors(found).meta["camera"] == 4
    assert server.requests == [f"/{path}"]
    fetch_pinned(VECTORS, cache)  # cached and hash-checked: not fetched again
    assert len(server.requests) == 1
    # A corrupted download is refused with a message naming both hashes, and not kept.
    server.mode = "tamper"
    other = tmp_path / "other"
    with pytest.raises(ValueError, match=f"does not match the known hash.*{PINNED[VECTORS][1]}"):
        fetch_pinned(VECTORS, other)
    assert not (other / VECTORS).exists()
    assert not [p for p in other.iterdir() if p.is_file()]


def test_tessvectors_spacecraft_columns(vectors, horizons, pointings):
    """The spacecraft-boresight columns use the same spacecraft axes (from tesswcs' pointing)."""
    x_axis, y_axis, z_axis = pointings[1].axes
    assert np.allclose(z_axis, geometry._unit_vector(352.6844, -64.8531))  # sector 1 pointing
    vectors_km = horizons.body_vectors(np.asarray(vectors["MidTime"]) + 2457000)
    for body in geometry.BODIES:
        unit = vectors_km[body] / np.linalg.norm(vectors_km[body], axis=1)[:, None]
        elevation = 90 - np.rad2deg(np.arccos(unit @ z_axis))
        found = np.asarray(vectors[f"{body.title()}_Spacecraft_Angle"])
        assert np.abs(elevation - found).max() < 0.03  # measured 0.014
    earth = np.asarray(vectors["Earth_Spacecraft_Azimuth"])
    unit = vectors_km["earth"] / np.linalg.norm(vectors_km["earth"], axis=1)[:, None]
    azimuth = np.rad2deg(np.arctan2(unit @ y_axis, unit @ x_axis)) % 360
    assert np.abs((azimuth - earth + 180) % 360 - 180).max() < 0.1  # measured 0.068


def test_tessvectors_azimuth_frame(pointings):
    offsets = {ccd: p.tessvectors_frame() for ccd, p in pointings.items()}
    assert all(sense == 1 for _, sense in offsets.values())
    # CCDs 1-2 and 3-4 are rotated by 180 deg; the zero point is along +row on CCDs 1-2.
    assert offsets[1][0] == pytest.approx(90, abs=0.2)
    assert offsets[3][0] == pytest.approx(-90, abs=0.2)
    assert geometry.to_tessvectors_azimuth([0.0, 180.0], pointings[3]) == pytest.approx(
        [90.07, 270.07], abs=0.01
    )
    # Cameras 1-2 are turned by 180 deg with respect to the spacecraft, but their
    # TESS Vectors frame is turned with them: the same CCD offsets on every camera.
    for camera in (1, 2):
        for ccd, expected in ((1, 90), (3, -90)):
            offset, sense = geometry.CCDPointing.from_sector(1, camera, ccd).tessvectors_frame()
            assert sense == 1
            assert offset == pytest.approx(expected, abs=0.3)
    bare = geometry.CCDPointing(
        pointings[1].wcs, 1, 4, 1, pointings[1].boresight, axes=None, description="no axes"
    )
    with pytest.raises(ScatterLightError, match="no spacecraft axes"):
        bare.tessvectors_frame()


# ---------------------------------------------------------------------- SPICE
def test_spice_vs_horizons_sector4(spice, horizons):
    import lkspacecraft

    assert not lkspacecraft.is_test_mode()  # the fixture undid the global switch
    pointing = geometry.CCDPointing.from_sector(4, 1, 1)
    time = sector_times(4)[::5]
    row, column = np.meshgrid(np.linspace(8.5, 2040.5, 16), np.linspace(52.5, 2084.5, 16))
    a = geometry.compute_geometry(time, row, column, pointing, horizons)
    b = geometry.compute_geometry(time, row, column, pointing, spice)
    assert np.abs(a.spacecraft_time - b.spacecraft_time).max() * 86400 < 0.005  # s
    for body in geometry.BODIES:
        ga, gb = a[body], b[body]
        assert np.abs(ga.angle - gb.angle).max() < 0.03  # deg (measured 0.012)
        assert np.abs(ga.boresight_angle - gb.boresight_angle).max() < 0.03
        assert np.abs(ga.distance - gb.distance).max() < 0.01  # Earth radii (~60 km)
        assert np.abs(ga.size - gb.size).max() < 0.002
        far = ga.angle > 5  # azimuth is ill-defined near the body
        assert np.abs((ga.azimuth - gb.azimuth + 180) % 360 - 180)[far].max() < 0.1
    with pytest.raises(ScatterLightError, match="outside the ephemeris"):
        geometry.compute_geometry(sector_times(1)[:3], 1000, 1000, pointing, spice)


def test_spice_download_failure_is_explained(monkeypatch):
    lkspacecraft = pytest.importorskip("lkspacecraft")

    def offline():
        raise OSError("urlopen error [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(lkspacecraft, "TESSSpacecraft", offline)
    with pytest.raises(ScatterLightError, match="--ephemeris horizons FILE"):
        geometry.SpiceEphemeris()


# ---------------------------------------------------------------------- maps
def test_maps_continuous_and_exact(horizons, pointings):
    """Maps vary smoothly at the pixel scale; angles match astropy's separation."""
    from astropy.coordinates import SkyCoord

    pointing = pointings[3]
    step = 32
    rows = np.arange(0.5, 2049, step)
    columns = np.arange(44.5, 2093, step)
    row, column = np.meshgrid(rows, columns, indexing="ij")
    time = sector_times(1)[::64]
    geo = geometry.compute_geometry(time, row, column, pointing, horizons)
    for body in geometry.BODIES:
        g = geo[body]
        assert np.all(np.isfinite(g.angle))
        assert np.all(np.isfinite(g.azimuth))
        assert g.angle.min() >= 0
        assert g.angle.max() <= 180
        assert g.azimuth.min() >= 0
        assert g.azimuth.max() < 360
        bound = 1.1 * step * PIXEL_DEG  # an angle moves at most by the pixel separation
        # The azimuth turns by about (separation / sin(angle)) between neighbours, plus the
        # slow turn of the pixel axes themselves across the field.
        sin = np.sin(np.deg2rad(g.angle))
        for axis in (1, 2):
            assert np.abs(np.diff(g.angle, axis=axis)).max() < bound
            daz = np.abs((np.diff(g.azimuth, axis=axis) + 180) % 360 - 180)
            first = np.take(sin, np.arange(sin.shape[axis] - 1), axis=axis)
            assert (daz * first).max() < 1.5 * bound
    # Independent angle: astropy separation between the pixel and the body direction.
    vectors = horizons.body_vectors(geo.spacecraft_time[:1] + 2457000)
    los = pointing.line_of_sight(row[::8, ::8], column[::8, ::8]).reshape(-1, 3)
    for body in geometry.BODIES:
        v = vectors[body][0]
        sep = SkyCoord(*los.T, representation_type="cartesian").separation(
            SkyCoord(*v, representation_type="cartesian")
        )
        assert np.allclose(geo[body].angle[0, ::8, ::8].ravel(), sep.deg, atol=1e-9)


def test_azimuth_points_at_the_body(horizons, pointings):
    """Stepping along the azimuth direction in (column, row) moves towards the body."""
    pointing = pointings[2]
    row = np.array([300.0, 1000.0, 1800.0])
    column = np.array([200.0, 1100.0, 2000.0])
    time = sector_times(1)[[10, 400, 900]]
    geo = geometry.compute_geometry(time, row, column, pointing, horizons)
    for body in geometry.BODIES:
        az = np.deg2rad(geo[body].azimuth)
        for sign, expected in ((1, -1), (-1, 1)):
            moved = geometry.compute_geometry(
                geo.spacecraft_time,
                row[None, :] + sign * 5 * np.sin(az),
                column[None, :] + sign * 5 * np.cos(az),
                pointing,
                horizons,
                time_frame="spacecraft",
            )
            change = np.diagonal(moved[body].angle, axis1=0, axis2=1).T - geo[body].angle
            # ~5 pixels of 21 arcsec towards (away from) the body.
            assert np.all(expected * change > 0.85 * 5 * PIXEL_DEG)
            assert np.all(expected * change < 1.15 * 5 * PIXEL_DEG)


def test_boresight_pixel_equals_boresight_value(horizons, pointings):
    # Spacecraft times: the same BTJD is a different instant on CCDs 1 and 3 (SPOC corrects
    # each CCD's times towards its own centre).
    time = sector_times(1)[::100]
    values = {}
    for ccd in (1, 3):
        pointing = pointings[ccd]
        row, column = pointing.boresight_pixel
        geo = geometry.compute_geometry(
            time,
            np.array([row, 1024.0]),
            np.array([column, 1068.0]),
            pointing,
            horizons,
            time_frame="spacecraft",
        )
        for body in geometry.BODIES:
            g = geo[body]
            assert np.allclose(g.angle[:, 0], g.boresight_angle, rtol=0, atol=1e-9)
            assert np.allclose(g.azimuth[:, 0], g.boresight_azimuth, rtol=0, atol=1e-9)
            # Direct formula on the boresight vector.
            v = horizons.body_vectors(geo.spacecraft_time + 2457000)[body]
            cos = v @ pointing.boresight / np.linalg.norm(v, axis=1)
            assert np.allclose(g.boresight_angle, np.rad2deg(np.arccos(cos)), atol=1e-6)
        values[ccd] = geo
    # Same boresight from CCDs 1 and 3; their frames are rotated by 180 deg (+-0.1).
    for body in geometry.BODIES:
        a, b = values[1][body], values[3][body]
        assert np.allclose(a.boresight_angle, b.boresight_angle, atol=1e-9)
        turn = (a.boresight_azimuth - b.boresight_azimuth) % 360
        assert np.abs(turn - 180).max() < 0.1


def test_angular_size(horizons, pointings):
    time = sector_times(1)[::10]
    geo = geometry.compute_geometry(time, 1024.0, 1068.0, pointings[1], horizons)
    vectors = horizons.body_vectors(geo.spacecraft_time + 2457000)
    for body, radius in (("earth", geometry.R_EARTH_KM), ("moon", geometry.R_MOON_KM)):
        d = np.linalg.norm(vectors[body], axis=1)
        assert np.allclose(geo[body].distance, d / geometry.R_EARTH_KM)
        assert np.allclose(geo[body].size, np.rad2deg(2 * np.arctan(radius / d)))
    assert 1.8 < geo.earth.size.min()
    assert geo.earth.size.max() < 7
    assert 0.2 < geo.moon.size.min()
    assert geo.moon.size.max() < 1.1
    assert geo.earth.angle.shape == (time.size,)
    assert geo.earth.distance.shape == (time.size,)


def test_make_ephemeris(horizons_path):
    ephemeris = geometry.make_ephemeris(["horizons", str(horizons_path)])
    assert isinstance(ephemeris, geometry.HorizonsEphemeris)
    with pytest.raises(ScatterLightError, match="Unknown ephemeris"):
        geometry.make_ephemeris(["jpl"])


def test_cube_geometry_and_errors(horizons, pointings):
    from lk_scatterlight import simulate

    cube = simulate.make_cube(
        simulate.ScatteredLightField(), 1, 4, 3, pixel_bin=512, time=sector_times(1)[:5]
    )
    geo = geometry.cube_geometry(cube, horizons, pointings[3], dtype=np.float32)
    assert geo.earth.angle.shape == cube.shape
    assert geo.earth.angle.dtype == np.float32
    assert np.array_equal(geo.row[:, 0], cube.row)
    assert np.array_equal(geo.column[0], cube.column)
    with pytest.raises(ScatterLightError, match="the cube sector 1 camera 4 CCD 3"):
        geometry.cube_geometry(cube, horizons, pointings[1])
    with pytest.raises(ScatterLightError, match="time_frame"):
        geometry.compute_geometry(cube.btjd, 1, 1, pointings[3], horizons, time_frame="utc")
    with pytest.raises(KeyError, match="body must be one of"):
        geo["sun"]
