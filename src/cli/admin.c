/* `orchard user`, `orchard apikey` and `orchard config`: administration through the store. */
#include <ctype.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/secret.h"
#include "cli/cli.h"
#include "cli/common.h"
#include "core/mem.h"

#define MAX_PASSWORD 1024

static const struct option data_opts[] = {
    {"data", required_argument, NULL, 'd'},
    {"email", required_argument, NULL, 'e'},
    {"managed-apple-id", required_argument, NULL, 'm'},
    {"password-stdin", no_argument, NULL, 'p'},
    {"name", required_argument, NULL, 'n'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

struct admin_opts {
    const char *data, *email, *maid, *name;
    int password_stdin, help;
};

static int parse_admin(int argc, char **argv, struct admin_opts *o)
{
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", data_opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            o->data = optarg;
            break;
        case 'e':
            o->email = optarg;
            break;
        case 'm':
            o->maid = optarg;
            break;
        case 'n':
            o->name = optarg;
            break;
        case 'p':
            o->password_stdin = 1;
            break;
        case 'h':
            o->help = 1;
            break;
        default:
            return -1;
        }
    }
    return 0;
}

static char *lowercase(const char *s)
{
    char *out = xstrdup(s);
    for (char *p = out; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return out;
}

static int valid_identifier(const char *s)
{
    const char *at = strrchr(s, '@');
    if (at == NULL || at == s || at[1] == '\0')
        return 0;
    return strchr(at, '.') != NULL || strcmp(at + 1, "localhost") == 0;
}

static int user_add(struct admin_opts *o)
{
    if (!o->data || !o->email || !o->maid || !o->password_stdin) {
        fprintf(stderr, "usage: orchard user add --data DIR --email EMAIL --managed-apple-id MAID "
                        "--password-stdin\n");
        return 2;
    }
    if (!valid_identifier(o->email)) {
        fprintf(stderr, "orchard user add: --email must look like user@domain\n");
        return 2;
    }
    char *password = cli_read_stdin_line(MAX_PASSWORD);
    if (password == NULL || strlen(password) < 8) {
        fprintf(stderr, "orchard user add: a password of at least 8 characters is expected on "
                        "stdin\n");
        free(password);
        return 2;
    }
    config *cfg;
    storage *st;
    if (secret_init() != 0 || cli_open(o->data, &cfg, &st) != 0) {
        free(password);
        return 1;
    }
    st_user u = {.email = lowercase(o->email),
                 .managed_apple_id = xstrdup(o->maid),
                 .password_hash = secret_password_hash(password),
                 .created_at = time(NULL)};
    free(password);
    int rc = storage_user_add(st, &u);
    if (rc == ST_EEXISTS)
        fprintf(stderr, "orchard user add: %s already exists\n", u.email);
    else if (rc != 0)
        fprintf(stderr, "orchard user add: storage error\n");
    else
        printf("added user %lld %s\n", (long long)u.id, u.email);
    st_user_cleanup(&u);
    storage_close(st);
    config_free(cfg);
    return rc == 0 ? 0 : 1;
}

static int print_user(const st_user *u, void *ctx)
{
    (void)ctx;
    printf("%lld\t%s\t%s\t%s\n", (long long)u->id, u->email, u->managed_apple_id,
           u->password_hash ? "local" : "federated");
    return 0;
}

static int user_list(struct admin_opts *o)
{
    config *cfg;
    storage *st;
    if (o->data == NULL) {
        fprintf(stderr, "usage: orchard user list --data DIR\n");
        return 2;
    }
    if (cli_open(o->data, &cfg, &st) != 0)
        return 1;
    printf("ID\tEMAIL\tMANAGED APPLE ID\tAUTH\n");
    int rc = storage_user_list(st, print_user, NULL);
    storage_close(st);
    config_free(cfg);
    return rc == 0 ? 0 : 1;
}

static int wants_help(int argc, char **argv)
{
    return argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0);
}

int cli_user(int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "";
    struct admin_opts o = {.help = wants_help(argc, argv)};
    if (o.help || argc < 2 || parse_admin(argc - 1, argv + 1, &o) != 0 || o.help) {
        FILE *f = o.help ? stdout : stderr;
        fprintf(f, "usage: orchard user add --data DIR --email EMAIL --managed-apple-id MAID "
                   "--password-stdin\n       orchard user list --data DIR\n");
        return o.help ? 0 : 2;
    }
    if (strcmp(sub, "add") == 0)
        return user_add(&o);
    if (strcmp(sub, "list") == 0)
        return user_list(&o);
    fprintf(stderr, "orchard user: unknown subcommand \"%s\" (add, list)\n", sub);
    return 2;
}

int cli_apikey(int argc, char **argv)
{
    struct admin_opts o = {.help = wants_help(argc, argv)};
    const char *sub = argc > 1 ? argv[1] : "";
    if (o.help || argc < 2 || parse_admin(argc - 1, argv + 1, &o) != 0 || o.help ||
        strcmp(sub, "create") != 0 || !o.data || !o.name) {
        fprintf(o.help ? stdout : stderr, "usage: orchard apikey create --data DIR --name NAME\n"
                                          "Prints the new key once; only its hash is stored.\n");
        return o.help ? 0 : 2;
    }
    config *cfg;
    storage *st;
    if (secret_init() != 0 || cli_open(o.data, &cfg, &st) != 0)
        return 1;
    char key[SECRET_TOKEN_LEN + 1], hash[SECRET_HASH_LEN + 1];
    secret_new_token(key);
    secret_hash(key, hash);
    int64_t id = 0;
    int rc = storage_apikey_add(st, o.name, hash, time(NULL), &id);
    if (rc == 0)
        printf("%s\n", key);
    else
        fprintf(stderr, "orchard apikey create: %s\n",
                rc == ST_EEXISTS ? "a key with that name exists" : "storage error");
    storage_close(st);
    config_free(cfg);
    return rc == 0 ? 0 : 1;
}

int cli_config(int argc, char **argv)
{
    struct admin_opts o = {.help = wants_help(argc, argv)};
    const char *sub = argc > 1 ? argv[1] : "";
    if (o.help || argc < 2 || parse_admin(argc - 1, argv + 1, &o) != 0 || o.help ||
        strcmp(sub, "show") != 0 || !o.data) {
        fprintf(o.help ? stdout : stderr,
                "usage: orchard config show --data DIR\nPrints the effective configuration "
                "(file < ORCHARD_* environment), secrets redacted.\n");
        return o.help ? 0 : 2;
    }
    char err[512];
    config *cfg = config_load(o.data, err, sizeof(err));
    if (cfg == NULL) {
        fprintf(stderr, "orchard: %s\n", err);
        return 1;
    }
    char *dump = config_dump(cfg);
    fputs(dump, stdout);
    free(dump);
    config_free(cfg);
    return 0;
}
