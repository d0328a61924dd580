"""The errors and warnings raised by lk_scatterlight."""

from astropy.utils.exceptions import AstropyWarning

__all__ = [
    "ScatterLightError",
    "CubeFormatError",
    "CubeNotFoundError",
    "DownloadError",
    "OutsideCubeError",
    "ScatterLightWarning",
]


class ScatterLightError(Exception):
    """Base class of every error raised by lk_scatterlight."""


class CubeFormatError(ScatterLightError, ValueError):
    """A scattered-light cube file or array set is malformed or of an unknown version."""


class CubeNotFoundError(ScatterLightError, FileNotFoundError):
    """No scattered-light cube exists (locally or published) for the request."""


class DownloadError(ScatterLightError):
    """A published cube or model could not be downloaded (network, server or hash-check failure)."""


class OutsideCubeError(ScatterLightError, ValueError):
    """Times or pixels fall outside what a scattered-light cube covers."""


class ScatterLightWarning(AstropyWarning):
    """Warnings issued by lk_scatterlight."""


class FFISourceError(ScatterLightError, ValueError):
    """A set of Full Frame Images is missing, unreadable, malformed or inconsistent."""


__all__.append("FFISourceError")


class ModelNotFoundError(ScatterLightError, FileNotFoundError):
    """No learned model file at a path, and no published model of that name."""


__all__.append("ModelNotFoundError")


class PublishError(ScatterLightError):
    """Cubes could not be published (invalid file, Zenodo refused or failed, checksum mismatch)."""


__all__.append("PublishError")
