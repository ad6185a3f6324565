"""cffi builder for pkgckpt._scan (out-of-line API mode); run by the build, never imported.

The cdef declares what pkgckpt/scan/listing.py calls; cffi checks the struct layout
against csrc/pks.h.
"""

from __future__ import annotations

from cffi import FFI  # type: ignore[import-untyped,unused-ignore]

# setuptools wants paths relative to setup.py, which is where the build runs.
CSRC = "csrc"

ffibuilder = FFI()
ffibuilder.cdef(
    """
    #define PKS_PROBED ...
    #define PKS_LOOKED ...

    struct pks_entry {
        uint64_t ino;
        int64_t mtime_ns;
        uint32_t mode;
        uint32_t flags;
        uint32_t name_off;
        uint32_t name_len;
    };

    int pks_list(int dfd, const char *suffixes, const char *probe_in, const char *probe,
                 struct pks_entry *out, uint32_t cap, char *names, uint32_t names_cap);
    """
)
ffibuilder.set_source(
    "_scan",
    '#include "pks.h"',
    sources=[f"{CSRC}/pks.c"],
    include_dirs=[CSRC],
    depends=[f"{CSRC}/pks.h"],
    extra_compile_args=["-std=c99", "-O2", "-Wall", "-Wextra"],
)
