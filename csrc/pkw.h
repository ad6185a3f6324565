/* pkgckpt native watch engine: raw inotify, batched and coalesced reads. */
#ifndef PKW_H
#define PKW_H

int pkw_open(void);
int pkw_add_watch(int fd, const char *path, unsigned int mask);
int pkw_rm_watch(int fd, int wd);

#endif
