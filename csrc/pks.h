/*
 * pkgckpt scan helper: list a library directory and lstat its entries in one call.
 *
 * A site-packages holds thousands of entries; done from Python, each lstat costs twice the
 * syscall itself in object churn (a stat_result per entry). Reading the files of an entry
 * stays in Python: only the entries that changed are read.
 *
 * Functions return -1 and set errno on failure.
 */
#ifndef PKS_H
#define PKS_H

#include <stdint.h>

/* pks_entry.flags */
#define PKS_PROBED 1u /* the probe file exists inside this entry */
#define PKS_LOOKED 2u /* the entry was checked for the probe file */

struct pks_entry {
    uint64_t ino;
    int64_t mtime_ns;
    uint32_t mode;
    uint32_t flags;
    uint32_t name_off; /* into the names buffer; the name is NUL-terminated there */
    uint32_t name_len;
};

/*
 * List the directory open at `dfd` from its start and lstat each entry whose name ends
 * with one of `suffixes` (a list of NUL-terminated strings ending with an empty one) and
 * starts with neither '.' nor '~'. When `probe` is not NULL, each of those entries that is
 * a directory whose name ends with `probe_in` is checked for a file named `probe` inside.
 * An entry that vanishes between the listing and its lstat is left out.
 *
 * Returns the number of entries written to `out`, or -1 with errno; ERANGE: `out` (cap
 * entries) or `names` (names_cap bytes) is too small, to be called again with more.
 */
int pks_list(int dfd, const char *suffixes, const char *probe_in, const char *probe,
             struct pks_entry *out, uint32_t cap, char *names, uint32_t names_cap);

#endif
