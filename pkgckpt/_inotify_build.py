"""cffi builder for pkgckpt._inotify (out-of-line API mode); run by the build, never imported."""

from __future__ import annotations

from cffi import FFI

# setuptools wants paths relative to setup.py, which is where the build runs.
CSRC = "csrc"

ffibuilder = FFI()
ffibuilder.cdef(
    """
    int pkw_open(void);
    int pkw_add_watch(int fd, const char *path, unsigned int mask);
    int pkw_rm_watch(int fd, int wd);
    """
)
ffibuilder.set_source(
    "_inotify",
    '#include "pkw.h"',
    sources=[f"{CSRC}/pkw.c"],
    include_dirs=[CSRC],
    extra_compile_args=["-std=c99", "-O2", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
