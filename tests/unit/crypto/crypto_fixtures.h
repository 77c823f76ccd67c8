/*
 * Helpers shared by the crypto unit tests: reading fixture files (the spec's captures under
 * $ORCHARD_SPEC, default ../shared/spec, and our own under tests/fixtures/crypto/) and loading
 * the reference SCEP CA. Tests run with the repository root as the working directory.
 */
#ifndef ORCHARD_TEST_CRYPTO_FIXTURES_H
#define ORCHARD_TEST_CRYPTO_FIXTURES_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/mem.h"
#include "crypto/pki.h"

/* The whole file, NUL-terminated (not counted in *len); NULL if it cannot be read. */
static inline uint8_t *fixture_read_path(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *data = NULL;
    long n;

    if (f == NULL) {
        fprintf(stderr, "cannot open fixture %s\n", path);
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        data = xmalloc((size_t)n + 1);
        if (fread(data, 1, (size_t)n, f) != (size_t)n) {
            free(data);
            data = NULL;
        } else {
            data[n] = '\0';
            *len = (size_t)n;
        }
    }
    fclose(f);
    return data;
}

/* A file under $ORCHARD_SPEC/fixtures/ (e.g. "scep/ca.pem"). */
static inline uint8_t *spec_fixture(const char *rel, size_t *len)
{
    const char *spec = getenv("ORCHARD_SPEC");
    char *path = xasprintf("%s/fixtures/%s", spec ? spec : "../shared/spec", rel);
    uint8_t *data = fixture_read_path(path, len);
    free(path);
    return data;
}

/* A file under tests/fixtures/crypto/. */
static inline uint8_t *local_fixture(const char *name, size_t *len)
{
    char *path = xasprintf("tests/fixtures/crypto/%s", name);
    uint8_t *data = fixture_read_path(path, len);
    free(path);
    return data;
}

static inline crypto_cert *spec_cert(const char *rel)
{
    size_t len;
    char *pem = (char *)spec_fixture(rel, &len);
    crypto_cert *cert = NULL;
    if (pem != NULL && crypto_cert_from_pem(pem, &cert) != 0)
        cert = NULL;
    free(pem);
    return cert;
}

/* passphrase as for crypto_key_from_pem (the reference ca.key has an empty one). */
static inline crypto_key *spec_key(const char *rel, const char *passphrase)
{
    size_t len;
    char *pem = (char *)spec_fixture(rel, &len);
    crypto_key *key = NULL;
    if (pem != NULL && crypto_key_from_pem(pem, passphrase, &key) != 0)
        key = NULL;
    free(pem);
    return key;
}

#endif
