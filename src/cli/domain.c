/*
 * `orchard domain add|set|show|list`: organisation domains and their sign-in (local passwords
 * or an OpenID Connect provider), written to the store. The client secret is read from stdin
 * only (never a flag, which would show in `ps` and shell history) and is never printed.
 */
#include <ctype.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "auth/domains.h"
#include "cli/cli.h"
#include "cli/common.h"
#include "core/mem.h"

#define MAX_SECRET 1024

enum {
    OPT_DATA = 256,
    OPT_AUTH,
    OPT_ISSUER,
    OPT_CLIENT_ID,
    OPT_SECRET_STDIN,
    OPT_CA_FILE,
    OPT_JIT,
    OPT_NO_JIT,
    OPT_SCOPES,
    OPT_USER_CLAIM,
    OPT_MAID_CLAIM,
    OPT_GROUPS_CLAIM,
    OPT_ALLOWED_GROUPS,
    OPT_HELP
};

static const struct option domain_opts[] = {
    {"data", required_argument, NULL, OPT_DATA},
    {"auth", required_argument, NULL, OPT_AUTH},
    {"oidc-issuer", required_argument, NULL, OPT_ISSUER},
    {"oidc-client-id", required_argument, NULL, OPT_CLIENT_ID},
    {"oidc-client-secret-stdin", no_argument, NULL, OPT_SECRET_STDIN},
    {"oidc-ca-file", required_argument, NULL, OPT_CA_FILE},
    {"oidc-jit-users", no_argument, NULL, OPT_JIT},
    {"no-oidc-jit-users", no_argument, NULL, OPT_NO_JIT},
    {"oidc-scopes", required_argument, NULL, OPT_SCOPES},
    {"oidc-user-claim", required_argument, NULL, OPT_USER_CLAIM},
    {"oidc-maid-claim", required_argument, NULL, OPT_MAID_CLAIM},
    {"oidc-groups-claim", required_argument, NULL, OPT_GROUPS_CLAIM},
    {"oidc-allowed-groups", required_argument, NULL, OPT_ALLOWED_GROUPS},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

struct domain_opts {
    const char *data, *name, *auth, *issuer, *client_id, *ca_file, *scopes, *user_claim,
        *maid_claim, *groups_claim, *allowed_groups;
    int secret_stdin, jit, help;
};

static void domain_usage(FILE *f)
{
    fprintf(f, "usage: orchard domain add|set --data DIR DOMAIN [--auth local|oidc]\n"
               "           [--oidc-issuer URL] [--oidc-client-id ID] [--oidc-client-secret-stdin]\n"
               "           [--oidc-ca-file FILE] [--oidc-jit-users | --no-oidc-jit-users]\n"
               "           [--oidc-scopes S] [--oidc-user-claim C] [--oidc-maid-claim C]\n"
               "           [--oidc-groups-claim C --oidc-allowed-groups G1,G2]\n"
               "       orchard domain show --data DIR DOMAIN\n"
               "       orchard domain list --data DIR\n\n"
               "Organisation domains served by discovery and how their people sign in: local\n"
               "passwords, or an OpenID Connect provider (auth code flow with PKCE). Register the\n"
               "redirect URI printed by `show` (<public_url>/auth/oidc/callback) at the provider.\n"
               "The client secret is read from stdin, stored in the database (protect the data\n"
               "directory), and never printed. Defaults: scopes \"" DOMAINS_DEFAULT_SCOPES "\",\n"
               "user and Managed Apple Account claims \"email\". The user claim must equal the\n"
               "identifier typed on the device.\n");
}

static int parse_domain_opts(int argc, char **argv, struct domain_opts *o)
{
    int c;
    optind = 1;
    o->jit = -1;
    while ((c = getopt_long(argc, argv, "", domain_opts, NULL)) != -1) {
        switch (c) {
        case OPT_DATA:
            o->data = optarg;
            break;
        case OPT_AUTH:
            o->auth = optarg;
            break;
        case OPT_ISSUER:
            o->issuer = optarg;
            break;
        case OPT_CLIENT_ID:
            o->client_id = optarg;
            break;
        case OPT_SECRET_STDIN:
            o->secret_stdin = 1;
            break;
        case OPT_CA_FILE:
            o->ca_file = optarg;
            break;
        case OPT_JIT:
            o->jit = 1;
            break;
        case OPT_NO_JIT:
            o->jit = 0;
            break;
        case OPT_SCOPES:
            o->scopes = optarg;
            break;
        case OPT_USER_CLAIM:
            o->user_claim = optarg;
            break;
        case OPT_MAID_CLAIM:
            o->maid_claim = optarg;
            break;
        case OPT_GROUPS_CLAIM:
            o->groups_claim = optarg;
            break;
        case OPT_ALLOWED_GROUPS:
            o->allowed_groups = optarg;
            break;
        case OPT_HELP:
            o->help = 1;
            break;
        default:
            return -1;
        }
    }
    if (optind < argc)
        o->name = argv[optind++];
    return optind == argc ? 0 : -1;
}

static void set_str(char **field, const char *value)
{
    if (value == NULL)
        return;
    free(*field);
    /* An empty value clears an optional setting (back to its default). */
    *field = value[0] ? xstrdup(value) : NULL;
}

static char *lower(const char *s)
{
    char *out = xstrdup(s);
    for (char *p = out; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return out;
}

static void print_domain(const st_domain *d, const char *public_url)
{
    printf("domain:          %s\n", d->name);
    printf("auth:            %s\n", d->auth);
    char *redirect = domains_redirect_uri(public_url);
    if (!domains_is_oidc(d) && d->issuer == NULL) {
        printf("redirect URI:    %s (for an OIDC provider, once auth is oidc)\n", redirect);
        free(redirect);
        return;
    }
    printf("oidc issuer:     %s\n", d->issuer ? d->issuer : "(not set)");
    printf("oidc client id:  %s\n", d->client_id ? d->client_id : "(not set)");
    printf("oidc secret:     %s\n",
           d->client_secret ? "(set; not shown)" : "(none: public client)");
    printf("oidc CA file:    %s\n", d->ca_file ? d->ca_file : "(system trust store)");
    printf("oidc scopes:     %s\n", domains_scopes(d));
    printf("user claim:      %s\n", domains_user_claim(d));
    printf("maid claim:      %s\n", domains_maid_claim(d));
    if (d->groups_claim)
        printf("groups claim:    %s (allowed: %s)\n", d->groups_claim,
               d->allowed_groups ? d->allowed_groups : "");
    printf("jit users:       %s\n", d->jit_users ? "yes" : "no");
    printf("redirect URI:    %s\n", redirect);
    free(redirect);
}

static int print_row(const st_domain *d, void *ctx)
{
    (void)ctx;
    printf("%s\t%s\t%s\n", d->name, d->auth, d->issuer ? d->issuer : "-");
    return 0;
}

static char *public_url_of(const config *cfg)
{
    char *u = xstrdup(config_get(cfg, "public_url"));
    size_t n = strlen(u);
    while (n > 8 && u[n - 1] == '/')
        u[--n] = '\0';
    return u;
}

/* 1 if name is listed in the config key `domains` (local domains seeded at init). */
static int in_config(const config *cfg, const char *name)
{
    const char *list = config_get(cfg, "domains");
    for (const char *p = list; *p;) {
        p += strspn(p, ", ");
        size_t n = strcspn(p, ", ");
        if (n > 0 && n == strlen(name) && strncasecmp(p, name, n) == 0)
            return 1;
        p += n;
    }
    return 0;
}

/* add (create = 1) or set (create = 0). */
static int domain_write(struct domain_opts *o, int create)
{
    const char *cmd = create ? "add" : "set";
    char *secret = NULL, *name = lower(o->name);
    char err[256];
    config *cfg = NULL;
    storage *st = NULL;
    st_domain d = {0};
    int ret = 1;
    if (o->secret_stdin) {
        secret = cli_read_stdin_line(MAX_SECRET);
        if (secret == NULL || secret[0] == '\0') {
            fprintf(stderr, "orchard domain %s: the client secret is expected on stdin\n", cmd);
            goto out;
        }
    }
    if (cli_open(o->data, &cfg, &st) != 0)
        goto out;
    int rc = storage_domain_get(st, name, &d);
    if (rc == ST_OK && create) {
        fprintf(stderr, "orchard domain add: %s exists (use `orchard domain set`)\n", name);
        goto out;
    }
    if (rc == ST_ENOTFOUND) {
        if (!create) {
            /* A domain from the config key `domains` gets its row on the first set. */
            if (!in_config(cfg, name)) {
                fprintf(stderr, "orchard domain set: no domain %s (use `orchard domain add`)\n",
                        name);
                goto out;
            }
        }
        st_domain_cleanup(&d);
        d.name = xstrdup(name);
        d.auth = xstrdup("local");
    } else if (rc != ST_OK) {
        fprintf(stderr, "orchard domain %s: storage error\n", cmd);
        goto out;
    }
    set_str(&d.auth, o->auth);
    if (d.auth == NULL)
        d.auth = xstrdup("local");
    set_str(&d.issuer, o->issuer);
    set_str(&d.client_id, o->client_id);
    if (secret)
        set_str(&d.client_secret, secret);
    if (o->ca_file) {
        char abs[PATH_MAX];
        if (o->ca_file[0] && (realpath(o->ca_file, abs) == NULL || access(abs, R_OK) != 0)) {
            fprintf(stderr, "orchard domain %s: cannot read %s\n", cmd, o->ca_file);
            goto out;
        }
        set_str(&d.ca_file, o->ca_file[0] ? abs : "");
    }
    set_str(&d.scopes, o->scopes);
    set_str(&d.user_claim, o->user_claim);
    set_str(&d.maid_claim, o->maid_claim);
    set_str(&d.groups_claim, o->groups_claim);
    set_str(&d.allowed_groups, o->allowed_groups);
    if (o->jit >= 0)
        d.jit_users = o->jit;
    d.updated_at = time(NULL);
    if (domains_validate(&d, err, sizeof(err)) != 0) {
        fprintf(stderr, "orchard domain %s: %s\n", cmd, err);
        goto out;
    }
    if (storage_domain_put(st, &d) != 0) {
        fprintf(stderr, "orchard domain %s: storage error\n", cmd);
        goto out;
    }
    char *url = public_url_of(cfg);
    print_domain(&d, url);
    free(url);
    ret = 0;
out:
    if (secret) {
        memset(secret, 0, strlen(secret));
        free(secret);
    }
    st_domain_cleanup(&d);
    storage_close(st);
    config_free(cfg);
    free(name);
    return ret;
}

static int domain_show(struct domain_opts *o)
{
    config *cfg = NULL;
    storage *st = NULL;
    st_domain d = {0};
    char *name = lower(o->name);
    int ret = 1;
    if (cli_open(o->data, &cfg, &st) != 0)
        goto out;
    int rc = storage_domain_get(st, name, &d);
    if (rc == ST_ENOTFOUND) {
        if (!in_config(cfg, name)) {
            fprintf(stderr, "orchard domain show: no domain %s\n", name);
            goto out;
        }
        d.name = xstrdup(name);
        d.auth = xstrdup("local");
    } else if (rc != ST_OK) {
        fprintf(stderr, "orchard domain show: storage error\n");
        goto out;
    }
    char *url = public_url_of(cfg);
    print_domain(&d, url);
    free(url);
    ret = 0;
out:
    st_domain_cleanup(&d);
    storage_close(st);
    config_free(cfg);
    free(name);
    return ret;
}

static int domain_list(struct domain_opts *o)
{
    config *cfg = NULL;
    storage *st = NULL;
    if (cli_open(o->data, &cfg, &st) != 0)
        return 1;
    printf("DOMAIN\tAUTH\tISSUER\n");
    int rc = storage_domain_list(st, print_row, NULL);
    const char *list = config_get(cfg, "domains");
    printf("(config `domains`: %s)\n", list[0] ? list : "none");
    storage_close(st);
    config_free(cfg);
    return rc == 0 ? 0 : 1;
}

int cli_domain(int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "";
    struct domain_opts o = {0};
    int bad = argc < 2 || parse_domain_opts(argc - 1, argv + 1, &o) != 0;
    if (o.help || !strcmp(sub, "--help") || !strcmp(sub, "-h")) {
        domain_usage(stdout);
        return 0;
    }
    int is_list = strcmp(sub, "list") == 0;
    if (bad || o.data == NULL || (!is_list && o.name == NULL)) {
        domain_usage(stderr);
        return 2;
    }
    if (strcmp(sub, "add") == 0)
        return domain_write(&o, 1);
    if (strcmp(sub, "set") == 0)
        return domain_write(&o, 0);
    if (strcmp(sub, "show") == 0)
        return domain_show(&o);
    if (is_list)
        return domain_list(&o);
    fprintf(stderr, "orchard domain: unknown subcommand \"%s\" (add, set, show, list)\n", sub);
    return 2;
}
