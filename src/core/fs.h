/* Small file helpers: whole-file read/write with explicit modes, recursive mkdir. */
#ifndef ORCHARD_CORE_FS_H
#define ORCHARD_CORE_FS_H

#include <stddef.h>
#include <sys/types.h>

/* Reads a whole file (NUL-terminated, malloc'd); NULL with errno set on failure. */
char *fs_read_file(const char *path, size_t *len);
/* Writes atomically (temp file + rename) with the given mode; returns 0 or -1 (errno). */
int fs_write_file(const char *path, const void *data, size_t len, mode_t mode);
/* mkdir -p with mode for the created directories; returns 0 or -1 (errno). */
int fs_mkdirs(const char *path, mode_t mode);
/* 1 if the path exists. */
int fs_exists(const char *path);

#endif
