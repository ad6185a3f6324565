#define _GNU_SOURCE
#include "pks.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The getdents64 record; glibc only wraps it from 2.30 on. */
struct dirent64_raw {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

static int ends_with(const char *s, size_t len, const char *suffix)
{
    size_t n = strlen(suffix);
    return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

static int wanted(const char *name, size_t len, const char *suffixes)
{
    if (name[0] == '.' || name[0] == '~')
        return 0;
    for (const char *s = suffixes; *s; s += strlen(s) + 1)
        if (ends_with(name, len, s))
            return 1;
    return 0;
}

/* In nanoseconds, saturated: anyone who may write a shared library may set an entry's
 * time to year 2300 or 1600, which overflows int64 (undefined behaviour in C). The
 * Python listing clamps to the same bounds, so both give one answer. */
static int64_t mtime_ns(const struct timespec *t)
{
    int64_t ns;
    if (__builtin_mul_overflow((int64_t)t->tv_sec, (int64_t)1000000000, &ns)
        || __builtin_add_overflow(ns, (int64_t)t->tv_nsec, &ns))
        return t->tv_sec < 0 ? INT64_MIN : INT64_MAX;
    return ns;
}

static int probe_inside(int dfd, const char *name, const char *probe)
{
    char path[PATH_MAX];
    int n = snprintf(path, sizeof path, "%s/%s", name, probe);
    if (n < 0 || (size_t)n >= sizeof path)
        return 0;
    return faccessat(dfd, path, F_OK, 0) == 0;
}

int pks_list(int dfd, const char *suffixes, const char *probe_in, const char *probe,
             struct pks_entry *out, uint32_t cap, char *names, uint32_t names_cap)
{
    /* 32 KB: a 6,000-entry site-packages is listed in a dozen getdents64 calls. */
    char buf[32 * 1024] __attribute__((aligned(8)));
    uint32_t n = 0, used = 0;

    if (lseek(dfd, 0, SEEK_SET) < 0)
        return -1;
    for (;;) {
        long got = syscall(SYS_getdents64, dfd, buf, sizeof buf);
        if (got < 0)
            return -1;
        if (got == 0)
            return (int)n;
        for (long pos = 0; pos < got;) {
            const struct dirent64_raw *d = (const struct dirent64_raw *)(buf + pos);
            pos += d->d_reclen;
            size_t len = strlen(d->d_name);
            if (!wanted(d->d_name, len, suffixes))
                continue;
            struct stat st;
            if (fstatat(dfd, d->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                if (errno == ENOENT)
                    continue; /* removed since the listing */
                return -1;
            }
            if (n == cap || (size_t)names_cap - used < len + 1 || n == INT_MAX) {
                errno = ERANGE;
                return -1;
            }
            struct pks_entry *e = &out[n++];
            e->ino = (uint64_t)st.st_ino;
            e->mtime_ns = mtime_ns(&st.st_mtim);
            e->mode = (uint32_t)st.st_mode;
            e->flags = 0;
            if (probe && S_ISDIR(st.st_mode) && ends_with(d->d_name, len, probe_in)) {
                e->flags |= PKS_LOOKED;
                if (probe_inside(dfd, d->d_name, probe))
                    e->flags |= PKS_PROBED;
            }
            e->name_off = used;
            e->name_len = (uint32_t)len;
            memcpy(names + used, d->d_name, len + 1);
            used += (uint32_t)len + 1;
        }
    }
}
