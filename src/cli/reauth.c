/*
 * `orchard reauth`: demand re-authentication of one enrollment or of every device of a user,
 * straight through the store (the running server sees the revoked tokens on the next request).
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "app.h"
#include "auth/reauth.h"
#include "cli/cli.h"
#include "cli/common.h"

static void reauth_usage(FILE *f)
{
    fprintf(f, "usage: orchard reauth --data DIR (--enrollment ENROLLMENT_ID | --user EMAIL)\n\n"
               "Invalidates the session tokens: the device's next request gets 401 and the user\n"
               "must sign in again (same account). Never unenrolls by itself.\n");
}

int cli_reauth(int argc, char **argv)
{
    static const struct option longopts[] = {{"data", required_argument, NULL, 'd'},
                                             {"enrollment", required_argument, NULL, 'e'},
                                             {"user", required_argument, NULL, 'u'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    const char *data = NULL, *enrollment = NULL, *user = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            data = optarg;
            break;
        case 'e':
            enrollment = optarg;
            break;
        case 'u':
            user = optarg;
            break;
        case 'h':
            reauth_usage(stdout);
            return 0;
        default:
            reauth_usage(stderr);
            return 2;
        }
    }
    if (data == NULL || (enrollment == NULL) == (user == NULL)) {
        reauth_usage(stderr);
        return 2;
    }
    struct app app = {0};
    if (cli_open(data, &app.cfg, &app.st) != 0)
        return 1;
    int rc = 1;
    if (enrollment) {
        int r = reauth_require(&app, enrollment, "cli", "admin request");
        if (r == 0)
            printf("%s: re-authentication required\n", enrollment);
        else
            fprintf(stderr, "orchard reauth: %s\n",
                    r == ST_ENOTFOUND   ? "no such enrollment"
                    : r == ST_ECONFLICT ? "not an enrolled, unrevoked user enrollment"
                                        : "storage error");
        rc = r == 0 ? 0 : 1;
    } else {
        st_user u = {0};
        if (storage_user_get_by_email(app.st, user, &u) != 0) {
            fprintf(stderr, "orchard reauth: no such user %s\n", user);
        } else {
            int n = reauth_require_user(&app, u.id, "cli", "admin request (all devices)");
            if (n >= 0)
                printf("%s: re-authentication required on %d enrollment(s)\n", u.email, n);
            rc = n >= 0 ? 0 : 1;
        }
        st_user_cleanup(&u);
    }
    storage_close(app.st);
    config_free(app.cfg);
    return rc;
}
