/* latencyshim: an LD_PRELOAD library that delays fsync, rename and open on one directory
 * tree, a stand-in for the NFS round trips of a store (benchmarks/fleet.py).
 *
 * PKGCKPT_LATENCY_PATH=DIR    only calls touching a path under DIR are delayed
 * PKGCKPT_LATENCY_MS=MIN:MAX  each such call first sleeps a uniform MIN..MAX ms (2:20)
 *
 * Calls: open, open64, openat, openat64, fsync, fdatasync, rename, renameat, renameat2.
 * A descriptor's path comes from /proc/self/fd; a name relative to a directory
 * descriptor is joined to that directory's path. The sleep comes before the real call,
 * as a round trip to the server would.
 *
 *   gcc -O2 -Wall -Wextra -shared -fPIC -o latencyshim.so latencyshim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char root[PATH_MAX];
static size_t root_len;
static long min_us = 2000, max_us = 20000;
static unsigned int seed;

__attribute__((constructor)) static void load(void) {
    const char *path = getenv("PKGCKPT_LATENCY_PATH");
    const char *ms = getenv("PKGCKPT_LATENCY_MS");
    if (path != NULL && realpath(path, root) != NULL)
        root_len = strlen(root);
    if (ms != NULL) {
        long lo = 0, hi = 0;
        if (sscanf(ms, "%ld:%ld", &lo, &hi) == 2 && lo >= 0 && hi >= lo) {
            min_us = lo * 1000;
            max_us = hi * 1000;
        }
    }
    seed = (unsigned int)getpid() ^ (unsigned int)time(NULL);
}

static int under_root(const char *path) {
    return root_len > 0 && strncmp(path, root, root_len) == 0 &&
           (path[root_len] == '\0' || path[root_len] == '/');
}

static void delay(void) {
    long us = min_us + (max_us > min_us ? rand_r(&seed) % (max_us - min_us + 1) : 0);
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static void fd_path(int fd, char *out, size_t size) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, size - 1);
    out[n > 0 ? n : 0] = '\0';
}

static int touches_at(int dirfd, const char *name) {
    char full[PATH_MAX];
    if (root_len == 0 || name == NULL)
        return 0;
    if (name[0] == '/' || dirfd == AT_FDCWD) {
        if (name[0] == '/')
            return under_root(name);
        if (getcwd(full, sizeof full) == NULL)
            return 0;
    } else {
        fd_path(dirfd, full, sizeof full);
    }
    size_t len = strlen(full);
    snprintf(full + len, sizeof full - len, "/%s", name);
    return under_root(full);
}

static int touches_fd(int fd) {
    char path[PATH_MAX];
    if (root_len == 0)
        return 0;
    fd_path(fd, path, sizeof path);
    return under_root(path);
}

#define REAL(name, ret, args)                                                               \
    static ret(*real_##name) args;                                                          \
    if (!real_##name)                                                                       \
    real_##name = (ret(*) args)dlsym(RTLD_NEXT, #name)

static mode_t mode_of(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    REAL(open, int, (const char *, int, ...));
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_of(flags, ap);
    va_end(ap);
    if (touches_at(AT_FDCWD, path))
        delay();
    return real_open(path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    REAL(open64, int, (const char *, int, ...));
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_of(flags, ap);
    va_end(ap);
    if (touches_at(AT_FDCWD, path))
        delay();
    return real_open64(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...) {
    REAL(openat, int, (int, const char *, int, ...));
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_of(flags, ap);
    va_end(ap);
    if (touches_at(dirfd, path))
        delay();
    return real_openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) {
    REAL(openat64, int, (int, const char *, int, ...));
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_of(flags, ap);
    va_end(ap);
    if (touches_at(dirfd, path))
        delay();
    return real_openat64(dirfd, path, flags, mode);
}

int fsync(int fd) {
    REAL(fsync, int, (int));
    if (touches_fd(fd))
        delay();
    return real_fsync(fd);
}

int fdatasync(int fd) {
    REAL(fdatasync, int, (int));
    if (touches_fd(fd))
        delay();
    return real_fdatasync(fd);
}

int rename(const char *old, const char *new) {
    REAL(rename, int, (const char *, const char *));
    if (touches_at(AT_FDCWD, old) || touches_at(AT_FDCWD, new))
        delay();
    return real_rename(old, new);
}

int renameat(int olddir, const char *old, int newdir, const char *new) {
    REAL(renameat, int, (int, const char *, int, const char *));
    if (touches_at(olddir, old) || touches_at(newdir, new))
        delay();
    return real_renameat(olddir, old, newdir, new);
}

int renameat2(int olddir, const char *old, int newdir, const char *new, unsigned int flags) {
    REAL(renameat2, int, (int, const char *, int, const char *, unsigned int));
    if (touches_at(olddir, old) || touches_at(newdir, new))
        delay();
    return real_renameat2(olddir, old, newdir, new, flags);
}
