/*
 * Per-thread caches behind the per-request identity checks (PROTOCOL.md 10): parsed
 * certificates keyed by their exact DER bytes, and "issued by this CA" verdicts keyed by the
 * two certificates' SHA-256.
 *
 * Why: every device request carries the same certificate (as the TLS client certificate or
 * inside Mdm-Signature). With OpenSSL 3.0, d2i_X509 alone costs ~150 us (the public key goes
 * through the provider decoders, taking global locks) and a signature check ~30 us, so parsing
 * and chain-checking on each request caps a core at a few thousand requests per second. Both
 * results depend only on the bytes, so they are computed once per thread and reused. The
 * caches are thread-local (no locks) and bounded: CACHE_SETS x CACHE_WAYS certificates and
 * MEMO_SLOTS verdicts per thread.
 */
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/mem.h"
#include "crypto/crypto_int.h"

#define CACHE_SETS 512
#define CACHE_WAYS 4
#define MEMO_SLOTS 1024

struct issued_memo {
    uint8_t cert[32], ca[32]; /* SHA-256 fingerprints; all zero: empty */
};

struct thread_state {
    EVP_MD_CTX *md_ctx;
    unsigned int clock;
    struct cached_cert certs[CACHE_SETS][CACHE_WAYS];
    struct issued_memo issued[MEMO_SLOTS];
};

static pthread_once_t state_once = PTHREAD_ONCE_INIT;
static pthread_key_t state_key;

static void entry_clear(struct cached_cert *e)
{
    free(e->der);
    crypto_cert_free(e->cert);
    EVP_PKEY_CTX_free(e->verify);
    memset(e, 0, sizeof *e);
}

static void state_free(void *p)
{
    struct thread_state *st = p;
    for (int i = 0; i < CACHE_SETS; i++)
        for (int j = 0; j < CACHE_WAYS; j++)
            entry_clear(&st->certs[i][j]);
    EVP_MD_CTX_free(st->md_ctx);
    free(st);
}

static void state_init(void)
{
    if (pthread_key_create(&state_key, state_free) != 0) {
        log_error("event=crypto_thread_key_failed");
        abort();
    }
}

/* The calling thread's state, created on first use (aborts on OOM like xmalloc). */
static struct thread_state *thread_state(void)
{
    pthread_once(&state_once, state_init);
    struct thread_state *st = pthread_getspecific(state_key);
    if (st == NULL) {
        st = xcalloc(1, sizeof *st);
        st->md_ctx = EVP_MD_CTX_new();
        if (st->md_ctx == NULL || pthread_setspecific(state_key, st) != 0) {
            log_error("event=crypto_thread_state_failed");
            abort();
        }
    }
    return st;
}

EVP_MD_CTX *crypto_thread_md_ctx(void)
{
    return thread_state()->md_ctx;
}

static int entry_fill(struct cached_cert *e, const uint8_t *der, size_t len)
{
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    if (x == NULL || p != der + len) {
        X509_free(x);
        return -1;
    }
    e->cert = crypto_cert_wrap(x);
    e->der = xmalloc(len);
    memcpy(e->der, der, len);
    e->der_len = len;
    e->md = -1;
    return 0;
}

struct cached_cert *crypto_cert_cache_get(const uint8_t *der, size_t len)
{
    if (der == NULL || len < 2 || len > LONG_MAX)
        return NULL;
    struct thread_state *st = thread_state();
    /* The last bytes of a certificate belong to its issuer's signature: as good as random. */
    struct cached_cert *ways =
        st->certs[((unsigned int)der[len - 2] << 8 | der[len - 1]) % CACHE_SETS];
    struct cached_cert *e = NULL;

    for (int i = 0; i < CACHE_WAYS; i++) {
        if (ways[i].der == NULL)
            e = &ways[i];
        else if (ways[i].der_len == len && memcmp(ways[i].der, der, len) == 0)
            return &ways[i];
    }
    if (e == NULL) {
        e = &ways[st->clock++ % CACHE_WAYS];
        entry_clear(e);
    }
    return entry_fill(e, der, len) == 0 ? e : NULL;
}

static struct issued_memo *memo_slot(const crypto_cert *cert)
{
    return &thread_state()
                ->issued[((unsigned int)cert->sha256[0] << 8 | cert->sha256[1]) % MEMO_SLOTS];
}

int crypto_issued_memo_has(const crypto_cert *cert, const crypto_cert *ca)
{
    const struct issued_memo *m = memo_slot(cert);
    return memcmp(m->cert, cert->sha256, 32) == 0 && memcmp(m->ca, ca->sha256, 32) == 0;
}

void crypto_issued_memo_add(const crypto_cert *cert, const crypto_cert *ca)
{
    struct issued_memo *m = memo_slot(cert);
    memcpy(m->cert, cert->sha256, 32);
    memcpy(m->ca, ca->sha256, 32);
}
