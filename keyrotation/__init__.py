"""keyrotation: encrypted Django model fields and blind indexes with zero-downtime key rotation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("django-keyrotation")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
