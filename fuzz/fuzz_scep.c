/*
 * Fuzz target: SCEP PKIOperation messages (CMS SignedData around an EnvelopedData) as the CA
 * parses them. The CA is the fixture CA of the spec ($ORCHARD_SPEC/fixtures/scep, default
 * ../shared/spec), which the checked-in requests were encrypted to.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/fs.h"
#include "core/mem.h"
#include "crypto/pki.h"
#include "crypto/scep.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static scep_ca *load_ca(void)
{
    const char *spec = getenv("ORCHARD_SPEC") ? getenv("ORCHARD_SPEC") : "../shared/spec";
    char *cp = xasprintf("%s/fixtures/scep/ca.pem", spec),
         *kp = xasprintf("%s/fixtures/scep/ca.key", spec);
    char *cpem = fs_read_file(cp, NULL), *kpem = fs_read_file(kp, NULL);
    crypto_cert *cert = NULL;
    crypto_key *key = NULL;
    scep_ca *ca = NULL;
    if (cpem && kpem && crypto_cert_from_pem(cpem, &cert) == 0 &&
        crypto_key_from_pem(kpem, "", &key) == 0)
        ca = scep_ca_new(cert, key); /* takes ownership */
    if (ca == NULL)
        fprintf(stderr, "fuzz_scep: cannot load the fixture CA from %s\n", spec);
    free(cp);
    free(kp);
    free(cpem);
    free(kpem);
    return ca;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static scep_ca *ca;
    if (ca == NULL) {
        crypto_init();
        ca = load_ca();
        if (ca == NULL)
            abort();
    }
    scep_request *req = NULL;
    if (scep_request_parse(ca, data, size, &req) == 0) {
        uint8_t *der = NULL;
        size_t len = 0;
        if (scep_reply_failure(ca, req, SCEP_FAIL_BAD_REQUEST, &der, &len) == 0)
            free(der);
        scep_request_free(req);
    }
    return 0;
}
