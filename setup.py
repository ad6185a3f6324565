# Only the cffi hook lives here; metadata is in pyproject.toml.
from setuptools import setup

setup(
    cffi_modules=[
        "pkgckpt/_inotify_build.py:ffibuilder",
        "pkgckpt/_scan_build.py:ffibuilder",
    ],
    ext_package="pkgckpt",
)
