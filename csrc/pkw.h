/*
 * pkgckpt native watch engine: one inotify fd, batched reads that wait for a quiet
 * window in C and coalesce events into one record per (watch, name).
 *
 * Marker directories (*.dist-info, *.egg-info) that appear under a watch added with
 * PKW_MARKERS are watched one level deep by the engine itself, so that the arrival of
 * their RECORD never has to wake Python: what happens inside a marker is folded onto
 * the parent's record for the marker's name (PKW_RECORD / PKW_INSIDE bits).
 *
 * Functions return -1 and set errno on failure.
 */
#ifndef PKW_H
#define PKW_H

#include <stdint.h>

/* Bits 16..23 are unused by inotify; the engine reports its own facts there. */
#define PKW_RECORD 0x00010000u /* the marker's RECORD was written or moved in */
#define PKW_INSIDE 0x00020000u /* something else inside the marker changed */
#define PKW_DIRTY 0x00040000u  /* batch table full: anything under this watch may have changed */

/* pkw_add_watch flag: watch marker directories that appear in this directory. */
#define PKW_MARKERS 1

/* pkw_wait flag: leading edge. The first event after a quiet spell (no batch returned
   for quiet_ms) ends the batch at once, and so does the arrival of a RECORD, unless a
   followed marker still waits for its RECORD (an install visibly in progress: the caller
   could only find it busy). Events that follow within quiet_ms of a return are batched
   as without the flag. An isolated change then costs one wake-up, not two. */
#define PKW_LEADING 1

struct pkw;

/* max_records: distinct (watch, name) records one batch can hold before watches degrade. */
struct pkw *pkw_new(uint32_t max_records);
int pkw_fileno(const struct pkw *e);
/* Closes the fd and frees everything; returns close()'s result. */
int pkw_free(struct pkw *e);

/* flags: 0 or PKW_MARKERS. Adding a directory already watched replaces its mask and flags;
   with IN_MASK_ADD in mask, both accumulate instead. */
int pkw_add_watch(struct pkw *e, const char *path, uint32_t mask, int flags);
/* Watch the marker directory `name` of the PKW_MARKERS watch `parent_wd` (one already
   there when the parent was armed). Returns its wd, or 0 when its RECORD already exists. */
int pkw_add_marker(struct pkw *e, int parent_wd, const char *name);
/* Stop following marker `name` of `parent_wd`, whose RECORD will never come (a leftover of
   an interrupted install); nothing when it is not followed. */
void pkw_drop_marker(struct pkw *e, int parent_wd, const char *name);
int pkw_rm_watch(struct pkw *e, int wd);

/*
 * Block until an event, timeout_ms (-1: forever) or wake_fd (-1: none) is readable; then
 * keep reading until nothing arrived for quiet_ms or max_ms passed since the first event
 * (flags: 0 or PKW_LEADING, which may end the batch sooner).
 *
 * The batch is returned as text, in one piece, so that the caller turns it into objects
 * with a decode and a split instead of a foreign call per field: fields each ended by a
 * NUL, numbers in decimal. First the batch's own fields:
 *   overflow  1 when IN_Q_OVERFLOW was seen (events were lost), else 0
 *   woken     1 when wake_fd was readable (it has been drained), else 0
 *   error     errno of a read() or poll() that failed once the batch had begun (not
 *             EAGAIN/EINTR): events may be lost, the records before it are kept; replace
 *             the instance. 0 when none
 *   last_ms   CLOCK_MONOTONIC ms of the last event read; 0 when none
 * then one record per (watch, name): wd, mask (the union of the event masks, plus PKW_*
 * bits), name ("" for the watched directory itself).
 *
 * Sets *text to the batch (valid until the next pkw_wait or pkw_free) and returns its
 * length; an empty batch (timeout) is the four fields alone. Fails with EINTR only before
 * anything was read, so the caller can simply call again. Once the first poll() has
 * returned, an error ends the batch early with the error field set, never -1: the records
 * taken are returned.
 */
int pkw_wait(struct pkw *e, int wake_fd, int timeout_ms, int quiet_ms, int max_ms, int flags,
             const char **text);

#endif
