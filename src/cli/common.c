/* Shared subcommand helpers. */
#include "cli/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/mem.h"

char *cli_storage_dsn(const config *cfg)
{
    const char *dsn = config_get(cfg, "storage");
    if (strncmp(dsn, "sqlite:", 7) == 0 && dsn[7] != '/')
        return xasprintf("sqlite:%s/%s", config_data_dir(cfg), dsn + 7);
    return xstrdup(dsn);
}

int cli_open(const char *data_dir, config **cfg, storage **st)
{
    char err[512];
    *cfg = config_load(data_dir, err, sizeof(err));
    if (*cfg == NULL) {
        fprintf(stderr, "orchard: %s\n", err);
        return -1;
    }
    char *dsn = cli_storage_dsn(*cfg);
    *st = storage_open(dsn, err, sizeof(err));
    free(dsn);
    if (*st == NULL) {
        fprintf(stderr, "orchard: storage: %s\n", err);
        config_free(*cfg);
        *cfg = NULL;
        return -1;
    }
    return 0;
}

char *cli_read_stdin_line(size_t max)
{
    char *line = xmalloc(max + 2);
    if (fgets(line, (int)max + 2, stdin) == NULL) {
        free(line);
        return NULL;
    }
    size_t n = strlen(line);
    if (n > 0 && line[n - 1] == '\n')
        line[--n] = '\0';
    else if (n > max) {
        free(line);
        return NULL;
    }
    if (n > 0 && line[n - 1] == '\r')
        line[--n] = '\0';
    return line;
}
