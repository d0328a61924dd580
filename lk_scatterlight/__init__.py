"""lk_scatterlight: remove TESS scattered light from target pixel files.

Importing the package registers the ``"scatterlight"`` method of
``TessTargetPixelFile.to_corrector`` and the ``tpf.scatterlight`` accessor
(see `register`).
"""

import warnings
from importlib.metadata import PackageNotFoundError, version

from astropy import config as _config

try:
    __version__ = version("lk_scatterlight")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"


class Conf(_config.ConfigNamespace):
    """Configuration of lk_scatterlight.

    Each item can be set in the astropy configuration file
    (``~/.astropy/config/lk_scatterlight.cfg``), at run time
    (``lk_scatterlight.conf.cache_dir = "/data/sl"``) or, winning over both,
    through the environment variable named in its description. Values are read
    when a function runs, never at import.
    """

    cache_dir = _config.ConfigItem(
        "",
        "Folder for downloaded cubes; empty means the operating system's cache folder "
        "(pooch.os_cache('lk_scatterlight')). Environment: LK_SCATTERLIGHT_CACHE.",
        cfgtype="string",
    )
    registry_url = _config.ConfigItem(
        "",
        "Base URL that replaces the published download URLs (mirrors, tests). "
        "Environment: LK_SCATTERLIGHT_URL.",
        cfgtype="string",
    )
    timeout = _config.ConfigItem(
        60.0, "Download timeout in seconds. Environment: LK_SCATTERLIGHT_TIMEOUT.", cfgtype="float"
    )


conf = Conf()

with warnings.catch_warnings():
    # lightkurve 2.x warns at import that its optional PRF module lacks
    # oktopus; irrelevant here, and it would greet every `lk-scatterlight` run.
    warnings.filterwarnings("ignore", "Warning: the tpfmodel submodule", UserWarning)
    import lightkurve  # noqa: F401

from .accessor import is_registered, register, unregister  # noqa: E402
from .corrector import ScatterLightCorrector  # noqa: E402
from .cube import ScatterLightCube  # noqa: E402
from .exceptions import (  # noqa: E402
    CubeFormatError,
    CubeNotFoundError,
    DownloadError,
    OutsideCubeError,
    PublishError,
    ScatterLightError,
    ScatterLightWarning,
)
from .model import ScatterLightModel  # noqa: E402
from .registry import available_cubes, fetch_cube, load_cube  # noqa: E402

__all__ = [
    "__version__",
    "conf",
    "ScatterLightCube",
    "ScatterLightCorrector",
    "ScatterLightModel",
    "register",
    "unregister",
    "is_registered",
    "ScatterLightError",
    "CubeFormatError",
    "CubeNotFoundError",
    "OutsideCubeError",
    "ScatterLightWarning",
    "DownloadError",
    "PublishError",
    "fetch_cube",
    "load_cube",
    "available_cubes",
]

register()
