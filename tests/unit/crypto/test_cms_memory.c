/*
 * Memory stays flat on the slow Mdm-Signature path (issue 14): every allocation OpenSSL makes
 * is counted through CRYPTO_set_mem_functions, installed before the library allocates
 * anything, and thousands of mutated signatures through CMS_verify must leave exactly as many
 * blocks and bytes outstanding as before. LeakSanitizer at exit would only see a leak when
 * nothing still points at it; this sees every block a request leaves behind.
 */
#include <openssl/crypto.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "crypto/cms.h"
#include "crypto/cms_paths.h"
#include "crypto/pki.h"
#include "crypto_fixtures.h"

/* Each block carries its size in a 16-byte header, so frees can be counted in bytes. */
static atomic_long live_blocks, live_bytes;
static int counting;

static void *count_malloc(size_t n, const char *file, int line)
{
    (void)file, (void)line;
    size_t *p = malloc(n + 16);
    if (p == NULL)
        return NULL;
    p[0] = n;
    live_blocks++;
    live_bytes += (long)n;
    return p + 2;
}

static void count_free(void *q, const char *file, int line)
{
    (void)file, (void)line;
    if (q == NULL)
        return;
    size_t *p = (size_t *)q - 2;
    live_blocks--;
    live_bytes -= (long)p[0];
    free(p);
}

static void *count_realloc(void *q, size_t n, const char *file, int line)
{
    if (q == NULL)
        return count_malloc(n, file, line);
    size_t *p = (size_t *)q - 2, old = p[0];
    size_t *np = realloc(p, n + 16);
    if (np == NULL)
        return NULL;
    np[0] = n;
    live_bytes += (long)n - (long)old;
    return np + 2;
}

/* Before main, so no OpenSSL allocation happens under the default allocator first. */
__attribute__((constructor)) static void install_counting_allocator(void)
{
    counting = CRYPTO_set_mem_functions(count_malloc, count_realloc, count_free);
}

typedef int verify_fn(const uint8_t *, size_t, const uint8_t *, size_t, crypto_cert **);

/* Runs single-bit flips of sig through verify: every bit, or only bit j % 8 of byte j. */
static int run_mutations(uint8_t *sig, size_t len, const uint8_t *body, size_t body_len,
                         verify_fn *verify, int every_bit)
{
    int runs = 0;
    for (size_t j = 0; j < len; j++)
        for (unsigned bit = every_bit ? 0 : j % 8; bit < (every_bit ? 8 : j % 8 + 1); bit++) {
            crypto_cert *signer = NULL;
            sig[j] ^= (uint8_t)(1u << bit);
            if (verify(sig, len, body, body_len, &signer) == 0)
                crypto_cert_free(signer);
            sig[j] ^= (uint8_t)(1u << bit);
            runs++;
        }
    return runs;
}

static void check_flat(const char *fixture, verify_fn *verify)
{
    size_t body_len = 0, len = 0;
    uint8_t *body = local_fixture("checkin-body.plist", &body_len);
    uint8_t *sig = local_fixture(fixture, &len);
    ASSERT_NOT_NULL(body);
    ASSERT_NOT_NULL(sig);
    /* A warm-up pass fills the one-time state: per-thread error queue, method caches. */
    run_mutations(sig, len, body, body_len, verify, 1);
    long blocks = live_blocks, bytes = live_bytes;
    int runs = run_mutations(sig, len, body, body_len, verify, 1);
    if (live_blocks != blocks || live_bytes != bytes)
        fprintf(stderr, "%s: %d verifications left %ld blocks, %ld bytes behind\n", fixture, runs,
                live_blocks - blocks, live_bytes - bytes);
    ASSERT(runs > 4000);
    ASSERT_INT_EQ(live_blocks, blocks);
    ASSERT_INT_EQ(live_bytes, bytes);
    free(sig);
    free(body);
}

TEST(allocator_counts_openssl)
{
    ASSERT_INT_EQ(counting, 1);
    ASSERT_INT_EQ(crypto_init(), 0);
    ASSERT(live_blocks > 0);
}

/* The SHA-1 BER shape iOS sends, straight into CMS_verify. */
TEST(slow_path_flat_on_sha1_mutations)
{
    check_flat("mdm-signature-ber.der", crypto_cms_verify_detached_openssl);
}

/* ECDSA with SHA-256, straight into CMS_verify. */
TEST(slow_path_flat_on_sha256_mutations)
{
    check_flat("mdm-signature-ec.der", crypto_cms_verify_detached_openssl);
}

/* The public entry point: the fast path's caches and its hand-offs to CMS_verify. */
TEST(verify_detached_flat_on_mutations)
{
    check_flat("mdm-signature-ber.der", cms_verify_detached);
    check_flat("mdm-signature-ec.der", cms_verify_detached);
}

/* The enrollment POST's signed MachineInfo (attached content, BER), before any token. */
static int verify_attached(const uint8_t *der, size_t len, const uint8_t *body, size_t body_len,
                           crypto_cert **signer)
{
    (void)body, (void)body_len;
    uint8_t *content = NULL;
    size_t content_len = 0;
    int rc = cms_attached_verify(der, len, &content, &content_len, signer);
    free(content);
    return rc;
}

TEST(attached_verify_flat_on_mutations)
{
    size_t b64_len = 0, len = 0;
    char *b64 = (char *)spec_fixture("oreore-ios-mdm/enroll_body.b64", &b64_len);
    uint8_t *der = NULL;
    ASSERT_NOT_NULL(b64);
    ASSERT_INT_EQ(crypto_base64_decode(b64, b64_len, &der, &len), 0);
    run_mutations(der, len, NULL, 0, verify_attached, 0);
    long blocks = live_blocks, bytes = live_bytes;
    int runs = run_mutations(der, len, NULL, 0, verify_attached, 0);
    ASSERT(runs > 2000);
    ASSERT_INT_EQ(live_blocks, blocks);
    ASSERT_INT_EQ(live_bytes, bytes);
    free(der);
    free(b64);
}

TEST_MAIN(TEST_ENTRY(allocator_counts_openssl), TEST_ENTRY(attached_verify_flat_on_mutations),
          TEST_ENTRY(slow_path_flat_on_sha1_mutations),
          TEST_ENTRY(slow_path_flat_on_sha256_mutations),
          TEST_ENTRY(verify_detached_flat_on_mutations))
