/* faultshim: an LD_PRELOAD library that makes chosen file system calls fail, so that the
 * store's tests can give a real writer process the errors NFS and full disks give
 * (EIO, ENOSPC, EDQUOT at close, ESTALE after a rename that did happen, ...).
 *
 * PKGCKPT_FAULTS="rule[;rule...]", rule = "call:errno:nth:when:pattern"
 *   call     write read fsync close open rename link unlink ("write" covers writev)
 *   errno    a number
 *   nth      fail the nth call that matches (1 = the first), once
 *   when     "before": fail without doing the call; "after": do it, then report the error;
 *            "hang": block until the process is killed, as a call on a hard NFS mount
 *            whose server stopped answering does (that wait ends on a fatal signal)
 *   pattern  fnmatch(3) pattern for the path the call touches (a descriptor's path comes
 *            from /proc/self/fd; rename and link match either name)
 * PKGCKPT_FAULTS_LOG=FILE: one line per fault given, so a test can prove it fired.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_RULES 8

enum call { C_WRITE, C_READ, C_FSYNC, C_CLOSE, C_OPEN, C_RENAME, C_LINK, C_UNLINK, C_COUNT };
static const char *const call_names[C_COUNT] = {"write", "read",   "fsync", "close",
                                                "open",  "rename", "link",  "unlink"};

struct rule {
    enum call call;
    int error;
    long nth;
    long seen;
    int after;
    int hang;
    char pattern[PATH_MAX];
};

static struct rule rules[MAX_RULES];
static int nrules;
static int wanted[C_COUNT];
static char log_path[PATH_MAX];

static void parse_rule(char *text) {
    char *fields[5];
    int n = 0;
    for (char *p = text; n < 5; n++) {
        fields[n] = p;
        if (n == 4)
            break;
        p = strchr(p, ':');
        if (p == NULL)
            return;
        *p++ = '\0';
    }
    struct rule *r = &rules[nrules];
    int call = -1;
    for (int i = 0; i < C_COUNT; i++)
        if (strcmp(fields[0], call_names[i]) == 0)
            call = i;
    if (call < 0 || nrules == MAX_RULES)
        return;
    r->call = (enum call)call;
    r->error = atoi(fields[1]);
    r->nth = atol(fields[2]);
    r->after = strcmp(fields[3], "after") == 0;
    r->hang = strcmp(fields[3], "hang") == 0;
    snprintf(r->pattern, sizeof r->pattern, "%s", fields[4]);
    wanted[call] = 1;
    nrules++;
}

__attribute__((constructor)) static void load_rules(void) {
    const char *spec = getenv("PKGCKPT_FAULTS");
    const char *log = getenv("PKGCKPT_FAULTS_LOG");
    if (log != NULL)
        snprintf(log_path, sizeof log_path, "%s", log);
    if (spec == NULL)
        return;
    char *copy = strdup(spec);
    char *save = NULL;
    for (char *tok = strtok_r(copy, ";", &save); tok != NULL; tok = strtok_r(NULL, ";", &save))
        parse_rule(tok);
    free(copy);
}

static void fd_path(int fd, char *out, size_t size) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, size - 1);
    out[n < 0 ? 0 : n] = '\0';
}

static void at_path(int dirfd, const char *name, char *out, size_t size) {
    if (name[0] == '/' || dirfd == AT_FDCWD) {
        snprintf(out, size, "%s", name);
        return;
    }
    char dir[PATH_MAX];
    fd_path(dirfd, dir, sizeof dir);
    if (snprintf(out, size, "%s/%s", dir, name) < 0)
        out[0] = '\0';
}

static void note(const struct rule *r, const char *path) {
    if (log_path[0] == '\0')
        return;
    int saved = errno;
    FILE *f = fopen(log_path, "a");
    if (f != NULL) {
        fprintf(f, "%s %d %s %s\n", call_names[r->call], r->error,
                r->hang ? "hang" : r->after ? "after" : "before", path);
        fclose(f);
    }
    errno = saved;
}

/* The rule that fires for this call on these paths, if any; every matching rule counts it. */
static struct rule *match(enum call call, const char *a, const char *b) {
    struct rule *fires = NULL;
    for (int i = 0; i < nrules; i++) {
        struct rule *r = &rules[i];
        if (r->call != call)
            continue;
        if (fnmatch(r->pattern, a, 0) != 0 && (b == NULL || fnmatch(r->pattern, b, 0) != 0))
            continue;
        if (++r->seen == r->nth && fires == NULL)
            fires = r;
    }
    if (fires != NULL)
        note(fires, a);
    return fires;
}

static struct rule *match_fd(enum call call, int fd) {
    if (!wanted[call])
        return NULL;
    char path[PATH_MAX];
    fd_path(fd, path, sizeof path);
    return match(call, path, NULL);
}

static struct rule *match_at(enum call call, int dirfd, const char *name, int dirfd2,
                             const char *name2) {
    if (!wanted[call])
        return NULL;
    char path[PATH_MAX], path2[PATH_MAX];
    at_path(dirfd, name, path, sizeof path);
    if (name2 != NULL)
        at_path(dirfd2, name2, path2, sizeof path2);
    return match(call, path, name2 != NULL ? path2 : NULL);
}

#define REAL(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

/* Run `call` unless the rule says to fail before; report the rule's error either way. */
#define FAULTY(rule, type, call)                                                            \
    do {                                                                                    \
        if ((rule) != NULL) {                                                               \
            while ((rule)->hang)                                                            \
                pause();                                                                    \
            if ((rule)->after)                                                              \
                (void)(call);                                                               \
            errno = (rule)->error;                                                          \
            return (type)-1;                                                                \
        }                                                                                   \
        return (call);                                                                      \
    } while (0)

ssize_t write(int fd, const void *buf, size_t count) {
    struct rule *r = match_fd(C_WRITE, fd);
    FAULTY(r, ssize_t, REAL(write)(fd, buf, count));
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    struct rule *r = match_fd(C_WRITE, fd);
    FAULTY(r, ssize_t, REAL(writev)(fd, iov, iovcnt));
}

ssize_t read(int fd, void *buf, size_t count) {
    struct rule *r = match_fd(C_READ, fd);
    FAULTY(r, ssize_t, REAL(read)(fd, buf, count));
}

int fsync(int fd) {
    struct rule *r = match_fd(C_FSYNC, fd);
    FAULTY(r, int, REAL(fsync)(fd));
}

int fdatasync(int fd) {
    struct rule *r = match_fd(C_FSYNC, fd);
    FAULTY(r, int, REAL(fdatasync)(fd));
}

int close(int fd) {
    struct rule *r = match_fd(C_CLOSE, fd);
    FAULTY(r, int, REAL(close)(fd));
}

static mode_t open_mode(int flags, va_list ap) {
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    struct rule *r = match_at(C_OPEN, AT_FDCWD, path, 0, NULL);
    FAULTY(r, int, REAL(open)(path, flags, mode));
}

int open64(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    struct rule *r = match_at(C_OPEN, AT_FDCWD, path, 0, NULL);
    FAULTY(r, int, REAL(open64)(path, flags, mode));
}

int openat(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    struct rule *r = match_at(C_OPEN, dirfd, path, 0, NULL);
    FAULTY(r, int, REAL(openat)(dirfd, path, flags, mode));
}

int openat64(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    struct rule *r = match_at(C_OPEN, dirfd, path, 0, NULL);
    FAULTY(r, int, REAL(openat64)(dirfd, path, flags, mode));
}

int rename(const char *old, const char *new) {
    struct rule *r = match_at(C_RENAME, AT_FDCWD, old, AT_FDCWD, new);
    FAULTY(r, int, REAL(rename)(old, new));
}

int renameat(int olddir, const char *old, int newdir, const char *new) {
    struct rule *r = match_at(C_RENAME, olddir, old, newdir, new);
    FAULTY(r, int, REAL(renameat)(olddir, old, newdir, new));
}

int renameat2(int olddir, const char *old, int newdir, const char *new, unsigned int flags) {
    struct rule *r = match_at(C_RENAME, olddir, old, newdir, new);
    FAULTY(r, int, REAL(renameat2)(olddir, old, newdir, new, flags));
}

int link(const char *old, const char *new) {
    struct rule *r = match_at(C_LINK, AT_FDCWD, old, AT_FDCWD, new);
    FAULTY(r, int, REAL(link)(old, new));
}

int linkat(int olddir, const char *old, int newdir, const char *new, int flags) {
    struct rule *r = match_at(C_LINK, olddir, old, newdir, new);
    FAULTY(r, int, REAL(linkat)(olddir, old, newdir, new, flags));
}

int unlink(const char *path) {
    struct rule *r = match_at(C_UNLINK, AT_FDCWD, path, 0, NULL);
    FAULTY(r, int, REAL(unlink)(path));
}

int unlinkat(int dirfd, const char *path, int flags) {
    struct rule *r = match_at(C_UNLINK, dirfd, path, 0, NULL);
    FAULTY(r, int, REAL(unlinkat)(dirfd, path, flags));
}
