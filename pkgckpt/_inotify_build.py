"""cffi builder for pkgckpt._inotify (out-of-line API mode); run by the build, never imported.

The cdef declares only what pkgckpt/_inotify_native.py calls, plus what the smoke test
(tests/test_native.py) reads to hold the C to inotify.py's literal bits: PKW_RECORD,
PKW_INSIDE and PKW_DIRTY. The constants are filled in by the compiler from csrc/pkw.h,
and the compiler checks every prototype against it.
"""

from __future__ import annotations

from cffi import FFI  # type: ignore[import-untyped,unused-ignore]

# setuptools wants paths relative to setup.py, which is where the build runs.
CSRC = "csrc"

ffibuilder = FFI()
ffibuilder.cdef(
    """
    #define PKW_RECORD ...
    #define PKW_INSIDE ...
    #define PKW_DIRTY ...
    #define PKW_MARKERS ...
    #define PKW_LEADING ...

    struct pkw;

    struct pkw *pkw_new(uint32_t max_records);
    int pkw_fileno(const struct pkw *e);
    int pkw_free(struct pkw *e);
    int pkw_add_watch(struct pkw *e, const char *path, uint32_t mask, int flags);
    int pkw_add_marker(struct pkw *e, int parent_wd, const char *name);
    void pkw_drop_marker(struct pkw *e, int parent_wd, const char *name);
    int pkw_rm_watch(struct pkw *e, int wd);
    int pkw_wait(struct pkw *e, int wake_fd, int timeout_ms, int quiet_ms, int max_ms,
                 int flags, const char **text);
    """
)
ffibuilder.set_source(
    "_inotify",
    '#include "pkw.h"',
    sources=[f"{CSRC}/pkw.c"],
    include_dirs=[CSRC],
    depends=[f"{CSRC}/pkw.h"],
    extra_compile_args=["-std=c99", "-O2", "-Wall", "-Wextra"],
)
