"""What an installed spine-pipeline tells a type checker and a caller about itself."""

from __future__ import annotations

from importlib import metadata, resources

import spine_pipeline


def test_version_is_the_installed_distribution_s():
    assert spine_pipeline.__version__ == metadata.version("spine-pipeline")


def test_the_package_is_marked_typed():
    """PEP 561: without `py.typed`, mypy ignores the package's annotations for its users."""
    assert resources.files("spine_pipeline").joinpath("py.typed").is_file()
