"""spine-pipeline: audit archiver and orchestrator for Spine runs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("spine-pipeline")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
