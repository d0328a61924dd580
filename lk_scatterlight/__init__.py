"""lk_scatterlight: remove TESS scattered light from target pixel files.

Importing the package registers the ``"scatterlight"`` method of
``TessTargetPixelFile.to_corrector`` and the ``tpf.scatterlight`` accessor
(see `register`), without importing lightkurve: if lightkurve is already
imported the hooks are added at once, otherwise as soon as lightkurve's own
import finishes. ``import lk_scatterlight`` itself stays cheap (no lightkurve,
matplotlib, pooch or requests); the public classes and functions are imported
on first use.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from astropy import config as _config

from .accessor import is_registered, register, unregister
from .exceptions import (
    CubeFormatError,
    CubeNotFoundError,
    DownloadError,
    OutsideCubeError,
    PublishError,
    ScatterLightError,
    ScatterLightWarning,
)

if TYPE_CHECKING:
    from .corrector import ScatterLightCorrector
    from .cube import ScatterLightCube
    from .model import ScatterLightModel
    from .registry import available_cubes, fetch_cube, load_cube

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
        "Folder for downloaded cubes and models; empty means the operating system's cache folder "
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

#: Public name -> submodule defining it, imported on first access (they import
#: lightkurve, pooch or astropy.table, which `import lk_scatterlight` avoids).
_LAZY = {
    "ScatterLightCube": "cube",
    "ScatterLightCorrector": "corrector",
    "ScatterLightModel": "model",
    "fetch_cube": "registry",
    "load_cube": "registry",
    "available_cubes": "registry",
}


#: Submodules reachable as attributes (``lk_scatterlight.registry``) before they are imported.
_SUBMODULES = frozenset(
    "accessor builder ccd cli corrector cube demo exceptions finelayer fusion interpolate model "
    "ondemand plotting registry simulate utils".split()
)


def __getattr__(name: str) -> Any:
    """Import the lazily loaded public names (`_LAZY`) and submodules on first access."""
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)


# ---------------------------------------------------------------------- lightkurve hook
#: Attribute marking our finder on ``sys.meta_path`` (survives `importlib.reload`,
#: which makes a new class).
_HOOK_MARK = "_lk_scatterlight_post_import_hook"


def _import_lightkurve_quietly(loader: importlib.abc.Loader, module) -> None:
    with warnings.catch_warnings():
        # lightkurve 2.x warns at import that its optional PRF module lacks
        # oktopus; irrelevant here, and it would greet every `lk-scatterlight` run.
        warnings.filterwarnings("ignore", "Warning: the tpfmodel submodule", UserWarning)
        loader.exec_module(module)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finder on ``sys.meta_path`` that runs `register` once lightkurve is imported.

    It finds nothing itself: for the module ``"lightkurve"`` it asks the
    other finders for the real spec and wraps its loader so that, after
    lightkurve's ``__init__`` has run, `register` is called and the finder
    removes itself from ``sys.meta_path``. A spec looked up without importing
    (``importlib.util.find_spec``) leaves it in place.
    """

    def __init__(self) -> None:
        setattr(self, _HOOK_MARK, True)

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "lightkurve":
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if find is None or getattr(finder, _HOOK_MARK, False):
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


class _RegisteringLoader(importlib.abc.Loader):
    """Wraps lightkurve's real loader; calls `register` after it executed the module."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        # The module keeps the real loader (resources, reload, inspect use it).
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        _import_lightkurve_quietly(self.loader, module)
        _remove_hook()
        register()


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, _HOOK_MARK, False)]


def _install_hook() -> None:
    if not any(getattr(f, _HOOK_MARK, False) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


if "lightkurve" in sys.modules:
    register()
else:
    _install_hook()
