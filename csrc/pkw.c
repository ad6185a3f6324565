#define _GNU_SOURCE
#include "pkw.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

/* A marker only needs its RECORD's arrival (written, or moved into place); its own
   disappearance is seen by its parent. Files being written count as activity; their
   creations and deletions would only wake the engine once more each. */
#define MARKER_MASK (IN_CLOSE_WRITE | IN_MOVED_TO | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)

/* inotify names are at most NAME_MAX bytes. */
#define PKW_NAME_MAX 255

struct pkw_record {
    int wd;
    uint32_t mask;               /* union of the event masks (plus PKW_* bits) */
    char name[PKW_NAME_MAX + 1]; /* "" for the watched directory itself */
};

/* Bounds of one field of the batch's text (see pkw_wait), its NUL included: the four
   numbers of the head, and a record's int wd, uint32_t mask and name. */
#define TEXT_HEAD (2 + 2 + 12 + 21)
#define TEXT_RECORD (12 + 11 + PKW_NAME_MAX + 1)

struct watch {
    int wd;
    int parent; /* wd of the directory a marker watch belongs to; -1 for top-level watches */
    int flags;
    char *path; /* top-level PKW_MARKERS watches: to build marker paths */
    char *name; /* marker watches: the marker's name in its parent */
};

struct pkw {
    int fd;
    uint32_t max_records;

    /* Watches sorted by wd, for bsearch; a few roots plus the markers being installed. */
    struct watch *watches;
    uint32_t n_watches, cap_watches;
    uint32_t n_top;

    /* The batch: named records in rec[0, max_records), one record per top-level watch
       for events on the directory itself in rec[max_records, max_records + self_cap). */
    struct pkw_record *rec;
    uint32_t n_named, n_self, self_cap;
    uint32_t *slots; /* open addressing over named records: index + 1, 0 = empty */
    uint32_t slot_mask;
    int overflow, woken, error;
    int recorded;        /* a RECORD was reported in this batch */
    int64_t last_ms;     /* when the batch's last event was read; 0: none yet */
    int64_t returned_ms; /* when the last batch with records was returned */
    char *text;          /* the batch as pkw_wait returns it; TEXT_HEAD + TEXT_RECORD per record */

    char buf[64 * 1024] __attribute__((aligned(__alignof__(struct inotify_event))));
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- watch table ------------------------------------------------------------------- */

static uint32_t watch_index(const struct pkw *e, int wd, int *found)
{
    uint32_t lo = 0, hi = e->n_watches;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (e->watches[mid].wd < wd)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < e->n_watches && e->watches[lo].wd == wd;
    return lo;
}

static struct watch *watch_find(struct pkw *e, int wd)
{
    int found;
    uint32_t i = watch_index(e, wd, &found);
    return found ? &e->watches[i] : NULL;
}

static size_t text_size(size_t records) { return TEXT_HEAD + TEXT_RECORD * records; }

static int grow_self(struct pkw *e, uint32_t want)
{
    struct pkw_record *rec;
    char *text;
    size_t records = (size_t)e->max_records + want;
    if (want <= e->self_cap)
        return 0;
    rec = realloc(e->rec, sizeof *rec * records);
    if (!rec)
        return -1;
    e->rec = rec;
    text = realloc(e->text, text_size(records));
    if (!text)
        return -1; /* the larger rec stays: self_cap, which bounds both, is unchanged */
    e->text = text;
    e->self_cap = want;
    return 0;
}

/* Inserts a new entry for wd (which must not be in the table yet). */
static struct watch *watch_insert(struct pkw *e, int wd)
{
    int found;
    uint32_t i;
    if (e->n_watches == e->cap_watches) {
        uint32_t cap = e->cap_watches ? e->cap_watches * 2 : 16;
        struct watch *w = realloc(e->watches, sizeof *w * cap);
        if (!w)
            return NULL;
        e->watches = w;
        e->cap_watches = cap;
    }
    i = watch_index(e, wd, &found);
    memmove(&e->watches[i + 1], &e->watches[i], sizeof *e->watches * (e->n_watches - i));
    e->n_watches++;
    memset(&e->watches[i], 0, sizeof e->watches[i]);
    e->watches[i].wd = wd;
    e->watches[i].parent = -1;
    return &e->watches[i];
}

/* Forgets wd (the kernel already dropped it, or the caller removes it). */
static void watch_forget(struct pkw *e, int wd)
{
    int found;
    uint32_t i = watch_index(e, wd, &found);
    if (!found)
        return;
    if (e->watches[i].parent < 0)
        e->n_top--;
    free(e->watches[i].path);
    free(e->watches[i].name);
    e->n_watches--;
    memmove(&e->watches[i], &e->watches[i + 1], sizeof *e->watches * (e->n_watches - i));
}

static void marker_drop(struct pkw *e, int wd)
{
    /* EINVAL means the kernel dropped it already; its IN_IGNORED is then ignored too. */
    inotify_rm_watch(e->fd, wd);
    watch_forget(e, wd);
}

static void drop_markers_of(struct pkw *e, int parent)
{
    uint32_t i = 0;
    while (i < e->n_watches) {
        if (e->watches[i].parent == parent)
            marker_drop(e, e->watches[i].wd); /* shifts the rest down onto i */
        else
            i++;
    }
}

static struct watch *marker_find(struct pkw *e, int parent, const char *name)
{
    uint32_t i;
    for (i = 0; i < e->n_watches; i++)
        if (e->watches[i].parent == parent && strcmp(e->watches[i].name, name) == 0)
            return &e->watches[i];
    return NULL;
}

/* ---- batch records ----------------------------------------------------------------- */

static uint32_t hash(int wd, const char *name)
{
    uint32_t h = 2166136261u ^ (uint32_t)wd;
    for (; *name; name++)
        h = (h ^ (unsigned char)*name) * 16777619u;
    return h;
}

static void batch_reset(struct pkw *e)
{
    uint32_t i, s;
    /* Clears the slots the last batch used, not the whole table: a batch is mostly one or
       two records, and the table is 8 KB that an idle wait would otherwise touch. */
    for (i = 0; i < e->n_named; i++) {
        s = hash(e->rec[i].wd, e->rec[i].name) & e->slot_mask;
        while (e->slots[s] != i + 1)
            s = (s + 1) & e->slot_mask;
        e->slots[s] = 0;
    }
    e->n_named = e->n_self = 0;
    e->overflow = e->woken = e->error = e->recorded = 0;
    e->last_ms = 0;
}

static void self_add(struct pkw *e, int wd, uint32_t bits)
{
    struct pkw_record *r = e->rec + e->max_records;
    uint32_t i;
    for (i = 0; i < e->n_self; i++) {
        if (r[i].wd == wd) {
            r[i].mask |= bits;
            return;
        }
    }
    /* Cannot fail: self_cap >= top-level watches at the batch start, and none are added
       during a batch. The check keeps a broken invariant from writing out of bounds. */
    if (e->n_self < e->self_cap) {
        r[e->n_self].wd = wd;
        r[e->n_self].mask = bits;
        r[e->n_self].name[0] = '\0';
        e->n_self++;
    }
}

static void named_add(struct pkw *e, int wd, const char *name, uint32_t bits)
{
    uint32_t s = hash(wd, name) & e->slot_mask;
    struct pkw_record *r;
    while (e->slots[s]) {
        r = &e->rec[e->slots[s] - 1];
        if (r->wd == wd && strcmp(r->name, name) == 0) {
            r->mask |= bits;
            return;
        }
        s = (s + 1) & e->slot_mask;
    }
    if (e->n_named == e->max_records) {
        /* Bounded memory: the watch as a whole becomes dirty instead of losing anything. */
        self_add(e, wd, PKW_DIRTY);
        return;
    }
    r = &e->rec[e->n_named];
    r->wd = wd;
    r->mask = bits;
    /* inotify names are at most NAME_MAX (255) bytes. */
    snprintf(r->name, sizeof r->name, "%s", name);
    e->slots[s] = ++e->n_named;
}

static void record_add(struct pkw *e, int wd, const char *name, uint32_t bits)
{
    if (bits & PKW_RECORD)
        e->recorded = 1;
    if (*name)
        named_add(e, wd, name, bits);
    else
        self_add(e, wd, bits);
}

/* ---- markers ----------------------------------------------------------------------- */

static int ends_with(const char *s, size_t n, const char *suffix)
{
    size_t k = strlen(suffix);
    return n > k && memcmp(s + n - k, suffix, k) == 0;
}

static int is_marker(const char *name)
{
    size_t n = strlen(name);
    /* '~' and '.' names are pip's stashes and temporary directories, not installs. */
    if (name[0] == '~' || name[0] == '.')
        return 0;
    return ends_with(name, n, ".dist-info") || ends_with(name, n, ".egg-info");
}

static int join(char *out, size_t size, const char *a, const char *b, const char *c)
{
    int n = c ? snprintf(out, size, "%s/%s/%s", a, b, c) : snprintf(out, size, "%s/%s", a, b);
    if (n < 0 || (size_t)n >= size) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

/*
 * Watches marker `name` of top-level watch p. Returns its wd, 0 when RECORD is already
 * there (the install completed before the watch existed: nothing is kept, and the
 * arrival is reported in the batch when `report`), -1 on error.
 */
static int marker_watch(struct pkw *e, struct watch *p, const char *name, int report)
{
    char path[PATH_MAX], record[PATH_MAX];
    int wd, parent = p->wd;
    struct watch *w;
    char *dup;

    if (marker_find(e, parent, name))
        return 0;
    if (join(path, sizeof path, p->path, name, NULL) < 0 ||
        join(record, sizeof record, p->path, name, "RECORD") < 0)
        return -1;
    /* An install that completed before we looked needs no watch at all. */
    if (access(record, F_OK) == 0) {
        if (report)
            record_add(e, parent, name, PKW_RECORD);
        return 0;
    }
    wd = inotify_add_watch(e->fd, path, MARKER_MASK);
    if (wd < 0)
        return -1;
    if (watch_find(e, wd)) {
        /* The same directory is already watched for another reason; leave it be. */
        return 0;
    }
    dup = strdup(name);
    if (!dup || !(w = watch_insert(e, wd))) {
        free(dup);
        inotify_rm_watch(e->fd, wd);
        errno = ENOMEM;
        return -1;
    }
    w->parent = parent;
    w->name = dup;
    /* RECORD may have arrived between the look and the watch. */
    if (access(record, F_OK) == 0) {
        if (report)
            record_add(e, parent, name, PKW_RECORD);
        marker_drop(e, wd);
        return 0;
    }
    return wd;
}

/* ---- events ------------------------------------------------------------------------ */

static void on_marker_event(struct pkw *e, struct watch *w, const struct inotify_event *ev)
{
    int parent = w->parent;
    const char *name = ev->len ? ev->name : "";

    if (ev->mask & IN_IGNORED) {
        watch_forget(e, w->wd);
        return;
    }
    if (!*name)
        return; /* the marker's own fate is seen by its parent */
    if (strcmp(name, "RECORD") == 0 && (ev->mask & (IN_CLOSE_WRITE | IN_MOVED_TO))) {
        record_add(e, parent, w->name, PKW_RECORD);
        /* The install is complete: the watch has done its job (and watches are a
           per-user resource shared by every container of that user on the node). */
        marker_drop(e, w->wd);
        return;
    }
    record_add(e, parent, w->name, PKW_INSIDE);
}

static void on_top_event(struct pkw *e, struct watch *w, const struct inotify_event *ev)
{
    /* w may move while markers are added or dropped: only wd is used past this point. */
    int wd = w->wd;
    int markers = w->flags & PKW_MARKERS;
    const char *name = ev->len ? ev->name : "";
    struct watch *m;

    if (ev->mask & IN_IGNORED) {
        drop_markers_of(e, wd);
        watch_forget(e, wd);
        self_add(e, wd, ev->mask);
        return;
    }
    if (markers && (ev->mask & IN_ISDIR) && *name && is_marker(name)) {
        if (ev->mask & (IN_DELETE | IN_MOVED_FROM)) {
            m = marker_find(e, wd, name);
            if (m)
                marker_drop(e, m->wd);
        }
        if (ev->mask & (IN_CREATE | IN_MOVED_TO)) {
            /* A failure (ENOSPC, or the directory is already gone again) loses nothing:
               the marker's creation is reported, and the scanner reads the disk. */
            marker_watch(e, watch_find(e, wd), name, 1);
        }
    }
    record_add(e, wd, name, ev->mask);
}

static void on_event(struct pkw *e, const struct inotify_event *ev)
{
    struct watch *w;
    if (ev->wd < 0) {
        if (ev->mask & IN_Q_OVERFLOW)
            e->overflow = 1;
        return;
    }
    w = watch_find(e, ev->wd);
    if (!w)
        return; /* a watch we removed; the kernel still had events queued for it */
    if (w->parent >= 0)
        on_marker_event(e, w, ev);
    else
        on_top_event(e, w, ev);
}

/* Reads until the queue is empty. Returns the number of events. A read() error is kept
   in e->error, not returned: the events already taken must reach the caller. */
static int drain_events(struct pkw *e)
{
    int count = 0;
    for (;;) {
        ssize_t n = read(e->fd, e->buf, sizeof e->buf);
        const char *p;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                e->error = errno;
            return count;
        }
        if (n == 0)
            return count;
        for (p = e->buf; p < e->buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)(const void *)p;
            on_event(e, ev);
            count++;
            p += sizeof *ev + ev->len;
        }
        e->last_ms = now_ms();
        /* The kernel fills the buffer with every event that fits: with room left for the
           largest one, the queue was empty. One read() per wake-up, not two. */
        if ((size_t)n <= sizeof e->buf - (sizeof(struct inotify_event) + NAME_MAX + 1))
            return count;
    }
}

static void drain_wake(int fd)
{
    char sink[256];
    struct pollfd p = {fd, POLLIN, 0};
    /* Polls before each read so that a blocking wake fd cannot hang us. */
    while (poll(&p, 1, 0) == 1 && (p.revents & POLLIN)) {
        if (read(fd, sink, sizeof sink) <= 0)
            break;
    }
}

/* Appends v in decimal and a NUL; text is sized for the worst case (TEXT_*). Not printf:
   its format parsing and locale lookups would run at every wake-up. */
static char *put_number(char *p, long long v)
{
    char digits[24];
    int n = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        digits[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *p++ = '-';
    while (n)
        *p++ = digits[--n];
    *p++ = '\0';
    return p;
}

static char *put_record(char *p, const struct pkw_record *r)
{
    size_t n = strlen(r->name) + 1;
    p = put_number(p, r->wd);
    p = put_number(p, r->mask);
    memcpy(p, r->name, n);
    return p + n;
}

/* The batch as text (see pkw_wait); returns its length. */
static int finish(struct pkw *e, const char **text)
{
    const struct pkw_record *self = e->rec + e->max_records;
    char *p = e->text;
    uint32_t i;
    p = put_number(p, e->overflow);
    p = put_number(p, e->woken);
    p = put_number(p, e->error);
    p = put_number(p, e->last_ms);
    for (i = 0; i < e->n_named; i++)
        p = put_record(p, &e->rec[i]);
    for (i = 0; i < e->n_self; i++)
        p = put_record(p, &self[i]);
    if (e->n_named + e->n_self)
        e->returned_ms = now_ms();
    *text = e->text;
    return (int)(p - e->text);
}

/* Markers still waiting for their RECORD: an install visibly in progress. */
static int markers_pending(const struct pkw *e) { return e->n_watches > e->n_top; }

int pkw_wait(struct pkw *e, int wake_fd, int timeout_ms, int quiet_ms, int max_ms, int flags,
             const char **text)
{
    struct pollfd p[2];
    nfds_t np = wake_fd >= 0 ? 2 : 1;
    int64_t first, last;
    int r, leading;

    if (flags & ~PKW_LEADING) {
        errno = EINVAL;
        return -1;
    }
    batch_reset(e);
    p[0].fd = e->fd;
    p[0].events = POLLIN;
    p[1].fd = wake_fd;
    p[1].events = POLLIN;

    r = poll(p, np, timeout_ms);
    if (r < 0)
        return -1;
    if (r == 0)
        return finish(e, text);
    first = last = now_ms();
    /* After a quiet spell nothing is known to follow: returning at once saves the timed
       wake-up at the end of the window (the caller's own debounce waits anyway). */
    leading = (flags & PKW_LEADING) && first - e->returned_ms >= quiet_ms;
    for (;;) {
        int64_t until;
        if (p[0].revents & POLLNVAL) {
            e->error = EBADF; /* the records taken so far still go back */
            break;
        }
        if (np == 2 && p[1].revents) {
            /* A signal is waiting to be handled: return what we have at once. */
            drain_wake(wake_fd);
            e->woken = 1;
            drain_events(e);
            break;
        }
        if (p[0].revents) {
            if (drain_events(e) > 0)
                last = e->last_ms;
            if (e->error)
                break; /* the fd may stay readable: waiting out the window would spin */
            if ((flags & PKW_LEADING) && (leading || e->recorded) && !markers_pending(e))
                break;
        }
        until = last + quiet_ms;
        if (until > first + max_ms)
            until = first + max_ms;
        until -= now_ms();
        if (until <= 0)
            break;
        r = poll(p, np, (int)until);
        if (r < 0) {
            /* EINTR: Python has a signal to handle. Either way, hand back the batch so far. */
            if (errno != EINTR)
                e->error = errno;
            break;
        }
    }
    return finish(e, text);
}

/* ---- lifetime and watches ---------------------------------------------------------- */

struct pkw *pkw_new(uint32_t max_records)
{
    struct pkw *e;
    uint32_t slots = 16;
    if (max_records == 0 || max_records > (1u << 24)) {
        errno = EINVAL;
        return NULL;
    }
    while (slots < 2 * max_records)
        slots *= 2;
    e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->max_records = max_records;
    e->slot_mask = slots - 1;
    e->rec = malloc(sizeof *e->rec * max_records);
    e->slots = calloc(slots, sizeof *e->slots);
    e->text = malloc(text_size(max_records));
    if (!e->rec || !e->slots || !e->text) {
        free(e->rec);
        free(e->slots);
        free(e->text);
        free(e);
        errno = ENOMEM;
        return NULL;
    }
    e->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (e->fd < 0) {
        int saved = errno;
        free(e->rec);
        free(e->slots);
        free(e->text);
        free(e);
        errno = saved;
        return NULL;
    }
    return e;
}

int pkw_fileno(const struct pkw *e) { return e->fd; }

int pkw_free(struct pkw *e)
{
    uint32_t i;
    int r = close(e->fd);
    for (i = 0; i < e->n_watches; i++) {
        free(e->watches[i].path);
        free(e->watches[i].name);
    }
    free(e->watches);
    free(e->rec);
    free(e->slots);
    free(e->text);
    free(e);
    return r;
}

int pkw_add_watch(struct pkw *e, const char *path, uint32_t mask, int flags)
{
    struct watch *w;
    char *dup = NULL;
    int wd;

    if (flags & ~PKW_MARKERS) {
        errno = EINVAL;
        return -1;
    }
    /* Room for this watch's self record, before anything can fail half-way. */
    if (grow_self(e, e->n_top + 1) < 0)
        return -1;
    if ((flags & PKW_MARKERS) && !(dup = strdup(path)))
        return -1;
    wd = inotify_add_watch(e->fd, path, mask);
    if (wd < 0) {
        free(dup);
        return -1;
    }
    w = watch_find(e, wd);
    /* The kernel kept the old mask bits: the old flags stay with them. */
    if (w && w->parent < 0 && (mask & IN_MASK_ADD))
        flags |= w->flags;
    if (!(flags & PKW_MARKERS))
        drop_markers_of(e, wd);
    w = watch_find(e, wd);
    if (w && w->parent >= 0) {
        /* A marker being installed is now also watched for its own sake. */
        watch_forget(e, wd);
        w = NULL;
    }
    if (!w) {
        w = watch_insert(e, wd);
        if (!w) {
            free(dup);
            inotify_rm_watch(e->fd, wd);
            errno = ENOMEM;
            return -1;
        }
        e->n_top++;
    }
    if (dup || !(flags & PKW_MARKERS)) {
        free(w->path);
        w->path = dup;
    }
    w->flags = flags;
    return wd;
}

int pkw_add_marker(struct pkw *e, int parent_wd, const char *name)
{
    struct watch *p = watch_find(e, parent_wd);
    if (!p || p->parent >= 0 || !(p->flags & PKW_MARKERS) || !is_marker(name) ||
        strchr(name, '/')) {
        errno = EINVAL;
        return -1;
    }
    return marker_watch(e, p, name, 0);
}

void pkw_drop_marker(struct pkw *e, int parent_wd, const char *name)
{
    struct watch *m;
    if (parent_wd < 0)
        return; /* the parent of top-level watches, which have no name */
    m = marker_find(e, parent_wd, name);
    if (m)
        marker_drop(e, m->wd);
}

int pkw_rm_watch(struct pkw *e, int wd)
{
    struct watch *w = watch_find(e, wd);
    int r;
    if (!w || w->parent >= 0) {
        errno = EINVAL;
        return -1;
    }
    drop_markers_of(e, wd);
    r = inotify_rm_watch(e->fd, wd);
    watch_forget(e, wd);
    return r;
}
