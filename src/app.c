/* The application context: identities loaded from the data directory, and the clock. */
#include "app.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/fs.h"
#include "core/mem.h"
#include "crypto/scep.h"

int64_t app_now(const struct app *app)
{
    return (int64_t)time(NULL) + atomic_load(&((struct app *)app)->clock_skew);
}

static char *read_data_file(const struct app *app, const char *rel, char *err, size_t err_len)
{
    char *path = xasprintf("%s/%s", config_data_dir(app->cfg), rel);
    char *data = fs_read_file(path, NULL);
    if (data == NULL)
        snprintf(err, err_len, "cannot read %s (run `orchard init`?)", path);
    free(path);
    return data;
}

static int load_cert(const struct app *app, const char *rel, crypto_cert **out, char *err,
                     size_t err_len)
{
    char *pem = read_data_file(app, rel, err, err_len);
    if (pem == NULL)
        return -1;
    int rc = crypto_cert_from_pem(pem, out);
    free(pem);
    if (rc != 0)
        snprintf(err, err_len, "%s: not a PEM certificate", rel);
    return rc;
}

static int load_key(const struct app *app, const char *rel, crypto_key **out, char *err,
                    size_t err_len)
{
    char *pem = read_data_file(app, rel, err, err_len);
    if (pem == NULL)
        return -1;
    int rc = crypto_key_from_pem(pem, NULL, out);
    free(pem);
    if (rc != 0)
        snprintf(err, err_len, "%s: not a PEM private key", rel);
    return rc;
}

int app_load_identities(struct app *app, char *err, size_t err_len)
{
    crypto_cert *ca = NULL, *push = NULL;
    crypto_key *ca_key = NULL;
    if (load_cert(app, DATA_SCEP_CA, &ca, err, err_len) ||
        load_key(app, DATA_SCEP_CA_KEY, &ca_key, err, err_len))
        goto fail;
    app->scep_ca_pem = crypto_cert_to_pem(ca);
    crypto_cert_from_pem(app->scep_ca_pem, &app->scep_ca_cert);
    app->scep = scep_ca_new(ca, ca_key); /* takes ownership */
    ca = NULL;
    ca_key = NULL;
    if (load_cert(app, DATA_SIGNING_CERT, &app->signer_cert, err, err_len) ||
        load_key(app, DATA_SIGNING_KEY, &app->signer_key, err, err_len) ||
        load_cert(app, DATA_SIGNING_CA, &app->signer_ca, err, err_len) ||
        load_cert(app, DATA_PUSH_CERT, &push, err, err_len))
        goto fail;
    app->topic = crypto_cert_topic(push);
    app->push_subject = crypto_cert_subject(push);
    time_t push_not_after = 0;
    crypto_cert_validity(push, NULL, &push_not_after);
    app->push_not_after = (int64_t)push_not_after;
    crypto_cert_free(push);
    if (app->topic == NULL) {
        snprintf(err, err_len, "%s: the push certificate has no UID (topic)", DATA_PUSH_CERT);
        return -1;
    }
    return 0;
fail:
    crypto_cert_free(ca);
    crypto_key_free(ca_key);
    return -1;
}

void app_cleanup(struct app *app)
{
    scep_ca_free(app->scep);
    crypto_cert_free(app->scep_ca_cert);
    crypto_cert_free(app->signer_cert);
    crypto_cert_free(app->signer_ca);
    crypto_key_free(app->signer_key);
    free(app->scep_ca_pem);
    free(app->topic);
    free(app->push_subject);
    free(app->public_url);
    for (int i = 0; i < app->ndomains; i++)
        free(app->domains[i]);
    free(app->domains);
}
