"""pkgckpt: keep the packages users install in notebook containers across restarts."""

__version__ = "0.1.0"
