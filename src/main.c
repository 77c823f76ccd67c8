/*
 * orchard: git-style dispatch to the subcommands in src/cli/. Wiring of the server itself
 * (config -> storage -> identities -> services -> routes) is in src/cli/serve.c.
 */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} commands[] = {
    {"init", cli_init, "create a data directory (config, database, CAs, identities)"},
    {"serve", cli_serve, "serve HTTPS (device endpoints, sign-in pages, admin API)"},
    {"user", cli_user, "manage the local user directory (add, list)"},
    {"apikey", cli_apikey, "create admin API keys"},
    {"config", cli_config, "show the effective configuration"},
    {"pushcert", cli_pushcert, "APNs push certificate: CSR, import (PEM/PKCS#12), show"},
    {"domain", cli_domain, "organisation domains and their sign-in (local or OIDC)"},
    {"reauth", cli_reauth, "demand re-authentication of an enrollment or a user"},
    {"profile", cli_profile, "profile library: add, list, ready-made templates"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: orchard <command> [options]   (orchard <command> --help)\n\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    }
    fprintf(stderr, "orchard: unknown command \"%s\"\n", argv[1]);
    usage(stderr);
    return 2;
}
