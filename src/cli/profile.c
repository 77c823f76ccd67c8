/*
 * `orchard profile`: the profile library from the command line.
 *
 *   orchard profile add --data DIR FILE [--platform ios,macos] [--sensitive] [--sign]
 *   orchard profile list --data DIR
 *   orchard profile template NAME        (prints a validated template; no NAME lists them)
 *
 * `add` validates exactly like POST /api/v1/profiles (mdm/library.h) and writes to the store;
 * assignments go through the API, which reconciles the affected enrollments.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "core/fs.h"
#include "core/mem.h"
#include "mdm/library.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: orchard profile add --data DIR FILE [--platform ios,macos,visionos] "
               "[--sensitive] [--sign]\n"
               "       orchard profile list --data DIR\n"
               "       orchard profile template [NAME]\n\n"
               "Profiles are validated for User Enrollment on each platform (default: every "
               "platform\nits payloads exist on); forbidden payloads and keys are refused.\n");
}

static void print_warning(void *ctx, const char *msg)
{
    (void)ctx;
    fprintf(stderr, "warning: %s\n", msg);
}

static int print_profile(const st_profile *p, void *ctx)
{
    (void)ctx;
    printf("%lld\t%s\t%s%s%s\n", (long long)p->id, p->identifier, p->platforms,
           p->sensitive ? "\tsensitive" : "", p->sign ? "\tsigned" : "");
    return 0;
}

static int template_cmd(int argc, char **argv)
{
    if (argc < 3) {
        for (const struct lib_template *t = lib_templates(); t->name; t++) {
            char names[64];
            lib_platforms_format(t->platforms, names, sizeof(names));
            printf("%-18s %-20s %s\n", t->name, names, t->description);
        }
        return 0;
    }
    size_t len = 0;
    char *xml = lib_template_xml(argv[2], &len);
    if (xml == NULL) {
        fprintf(stderr,
                "orchard profile template: unknown template \"%s\" (orchard profile "
                "template lists them)\n",
                argv[2]);
        return 2;
    }
    fwrite(xml, 1, len, stdout);
    free(xml);
    return 0;
}

int cli_profile(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data", required_argument, NULL, 'd'}, {"platform", required_argument, NULL, 'p'},
        {"sensitive", no_argument, NULL, 's'},  {"sign", no_argument, NULL, 'g'},
        {"help", no_argument, NULL, 'h'},       {NULL, 0, NULL, 0},
    };
    const char *sub = argc > 1 ? argv[1] : "";
    if (strcmp(sub, "template") == 0)
        return template_cmd(argc, argv);
    const char *data = NULL, *platform = NULL;
    int sensitive = 0, sign = 0, help = 0, c;
    optind = 1;
    while (argc > 1 && (c = getopt_long(argc - 1, argv + 1, "", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            data = optarg;
            break;
        case 'p':
            platform = optarg;
            break;
        case 's':
            sensitive = 1;
            break;
        case 'g':
            sign = 1;
            break;
        case 'h':
            help = 1;
            break;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (help || strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    int is_add = strcmp(sub, "add") == 0, is_list = strcmp(sub, "list") == 0;
    const char *file = is_add && optind + 1 < argc ? argv[optind + 1] : NULL;
    if ((!is_add && !is_list) || data == NULL || (is_add && file == NULL)) {
        usage(stderr);
        return 2;
    }
    unsigned mask = 0;
    if (platform && lib_platforms_parse(platform, &mask) != 0) {
        fprintf(stderr, "orchard profile: --platform takes ios, macos, visionos\n");
        return 2;
    }
    config *cfg = NULL;
    storage *st = NULL;
    if (cli_open(data, &cfg, &st) != 0)
        return 1;
    int rc = 1;
    if (is_list) {
        rc = storage_profile_list(st, print_profile, NULL) == 0 ? 0 : 1;
        goto out;
    }
    size_t len = 0;
    char *body = fs_read_file(file, &len);
    if (body == NULL || len > LIB_PROFILE_MAX) {
        fprintf(stderr, "orchard profile add: cannot read %s (or larger than %d bytes)\n", file,
                LIB_PROFILE_MAX);
        free(body);
        goto out;
    }
    st_profile p = {0};
    char err[LIB_MSG_MAX + 128];
    if (lib_profile_prepare((const uint8_t *)body, len, mask, print_warning, NULL, &p, err,
                            sizeof(err)) != 0) {
        fprintf(stderr, "orchard profile add: refused: %s\n", err);
        free(body);
        goto out;
    }
    free(body);
    p.sensitive = sensitive;
    p.sign = sign;
    p.created_at = time(NULL);
    int src = storage_profile_add(st, &p);
    if (src == 0) {
        printf("%lld\n", (long long)p.id);
        rc = 0;
    } else {
        fprintf(stderr, "orchard profile add: %s\n",
                src == ST_EEXISTS ? "a profile with this PayloadIdentifier exists"
                                  : "storage error");
    }
    st_profile_cleanup(&p);
out:
    storage_close(st);
    config_free(cfg);
    return rc;
}
