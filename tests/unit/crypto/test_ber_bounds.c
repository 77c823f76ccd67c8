/*
 * Bounds of the BER/DER readers that see bytes before anyone is authenticated (docs/PARSERS.md):
 * the Mdm-Signature fast path (cms_detached.c, MAX_DEPTH 16), OpenSSL's d2i for CMS and SCEP
 * (ASN1_MAX_CONSTRUCTED_NEST 30, ASN1_MAX_STRING_NEST 5) and base64. Each hostile input is a
 * 4 MiB body (the default max_body) nested as deep as it can be; each parser must refuse it in
 * well under a second, on a thread with only 256 KiB of stack (a worker has 8 MiB), without
 * a sanitizer report.
 */
#include <pthread.h>
#include <time.h>

#include "crypto/cms.h"
#include "crypto_fixtures.h"
#include "crypto/pki.h"
#include "crypto/scep.h"
#include "harness.h"

#define BODY (4u << 20)

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* prefix, then the 2-byte header hdr repeated, then end-of-contents octets to BODY bytes. */
static uint8_t *nested(const uint8_t *prefix, size_t prefix_len, uint8_t h0, uint8_t h1)
{
    uint8_t *b = calloc(1, BODY);
    if (prefix_len)
        memcpy(b, prefix, prefix_len);
    for (size_t i = prefix_len; i + 2 <= BODY / 2; i += 2) {
        b[i] = h0;
        b[i + 1] = h1;
    }
    return b;
}

/* SEQUENCEs with definite 4-byte lengths, each holding the next: 6 bytes a level. */
static uint8_t *nested_definite(void)
{
    uint8_t *b = calloc(1, BODY);
    size_t levels = BODY / 6;
    for (size_t i = 0; i < levels; i++) {
        size_t rem = (levels - i - 1) * 6;
        uint8_t *p = b + i * 6;
        p[0] = 0x30;
        p[1] = 0x84;
        p[2] = (uint8_t)(rem >> 24);
        p[3] = (uint8_t)(rem >> 16);
        p[4] = (uint8_t)(rem >> 8);
        p[5] = (uint8_t)rem;
    }
    return b;
}

struct job {
    const uint8_t *in;
    scep_ca *ca;
    int refused;
    double took;
};

/* Every pre-authentication BER entry point on one input. */
static void *parse_all(void *arg)
{
    struct job *j = arg;
    uint8_t *content = NULL;
    size_t content_len = 0;
    crypto_cert *cert = NULL;
    scep_request *req = NULL;
    double t0 = now_s();
    int refused = 0;
    refused += cms_attached_content(j->in, BODY, &content, &content_len) != 0;
    refused += cms_attached_verify(j->in, BODY, &content, &content_len, &cert) != 0;
    refused += cms_verify_detached(j->in, BODY, (const uint8_t *)"x", 1, &cert) != 0;
    refused += j->ca == NULL || scep_request_parse(j->ca, j->in, BODY, &req) != 0;
    j->took = now_s() - t0;
    j->refused = refused;
    scep_request_free(req);
    return NULL;
}

static int run_small_stack(struct job *j)
{
    pthread_attr_t attr;
    pthread_t t;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    int rc = pthread_create(&t, &attr, parse_all, j);
    pthread_attr_destroy(&attr);
    return rc == 0 ? pthread_join(t, NULL) : -1;
}

static scep_ca *test_ca(void)
{
    crypto_cert *cert = spec_cert("scep/ca.pem");
    crypto_key *key = spec_key("scep/ca.key", "");
    return cert && key ? scep_ca_new(cert, key) : NULL;
}

TEST(deep_ber_nesting_is_refused_quickly_on_a_small_stack)
{
    static const uint8_t signed_data[] = {0x30, 0x80, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
                                          0xf7, 0x0d, 0x01, 0x07, 0x02, 0xa0, 0x80};
    ASSERT_INT_EQ(crypto_init(), 0);
    scep_ca *ca = test_ca();
    ASSERT_NOT_NULL(ca);
    uint8_t *inputs[] = {
        nested(NULL, 0, 0x30, 0x80),                         /* indefinite SEQUENCEs */
        nested(signed_data, sizeof signed_data, 0x30, 0x80), /* inside a SignedData */
        nested(signed_data, sizeof signed_data, 0x24, 0x80), /* constructed OCTET STRINGs */
        nested(signed_data, sizeof signed_data, 0xa0, 0x80), /* context tags */
        nested_definite(),                                   /* definite lengths */
    };
    for (size_t i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
        struct job j = {.in = inputs[i], .ca = ca};
        ASSERT_INT_EQ(run_small_stack(&j), 0);
        if (j.refused != 4 || j.took >= 1.0)
            fprintf(stderr, "input %zu: %d of 4 refused in %.3fs\n", i, j.refused, j.took);
        ASSERT_INT_EQ(j.refused, 4);
        ASSERT(j.took < 1.0);
        free(inputs[i]);
    }
    scep_ca_free(ca);
}

/* base64 (Mdm-Signature header, <data> in JSON commands): linear, output at most 3/4 of input. */
TEST(base64_of_a_whole_body_is_linear)
{
    char *in = malloc(BODY);
    uint8_t *out = NULL;
    size_t out_len = 0;
    memset(in, 'A', BODY);
    double t0 = now_s();
    ASSERT_INT_EQ(crypto_base64_decode(in, BODY, &out, &out_len), 0);
    ASSERT_INT_EQ(out_len, BODY / 4 * 3);
    free(out);
    out = NULL;
    memset(in, '\n', BODY); /* all whitespace: decodes to nothing, or is refused, quickly */
    (void)crypto_base64_decode(in, BODY, &out, &out_len);
    free(out);
    out = NULL;
    in[BODY / 2] = '=';
    in[BODY / 2 + 1] = 'A'; /* data after padding */
    ASSERT(crypto_base64_decode(in, BODY, &out, &out_len) != 0);
    ASSERT(now_s() - t0 < 1.0);
    free(in);
}

TEST_MAIN(TEST_ENTRY(deep_ber_nesting_is_refused_quickly_on_a_small_stack),
          TEST_ENTRY(base64_of_a_whole_body_is_linear))
