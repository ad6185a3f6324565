#define _GNU_SOURCE
#include "pkw.h"

#include <sys/inotify.h>

int pkw_open(void) { return inotify_init1(IN_NONBLOCK | IN_CLOEXEC); }

int pkw_add_watch(int fd, const char *path, unsigned int mask)
{
    return inotify_add_watch(fd, path, mask);
}

int pkw_rm_watch(int fd, int wd) { return inotify_rm_watch(fd, wd); }
