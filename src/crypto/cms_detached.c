/*
 * cms_verify_detached(): the Mdm-Signature check that runs on every device request when
 * SignMessage is on (PROTOCOL.md 10.2), so it has a fast path.
 *
 * Why: with OpenSSL 3.0, d2i_X509 decodes the public key through the provider decoder
 * machinery, which alone costs ~150 us and takes global locks; CMS_verify adds fetches and
 * BIO chains on top. Measured: ~4k verifications/s per core, against a target of 20k/s on two
 * cores. A device presents the same certificate on every request, so the fast path reads the
 * SignedData with a small strict BER reader, finds the signer certificate's bytes, and keeps
 * the parsed certificate plus a verify-initialised key context in a per-thread cache keyed by
 * those exact bytes (thread-local, so no locks). A hit costs one digest of the body, one of the
 * signed attributes and one public-key operation.
 *
 * The fast path only accepts the common shape (one signer identified by issuer and serial,
 * signed attributes with exactly one contentType and messageDigest, RSA PKCS#1 v1.5 or ECDSA
 * with SHA-1/SHA-2, no unsigned attributes, no eContent). For anything else it declines and
 * the message goes through OpenSSL's CMS_verify (crypto_cms_verify_detached_openssl), whose
 * answer is then final. It never accepts what OpenSSL would reject; the unit tests compare the
 * two paths on valid, mutated and hostile input.
 */
#include "crypto/cms.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/rsa.h>

#include "core/mem.h"
#include "crypto/crypto_int.h"

#define MAX_DEPTH 16   /* nesting bound for skipping indefinite-length elements */
#define CACHE_SETS 512 /* per thread: 512 x 4 signer certificates */
#define CACHE_WAYS 4

/* ---- A strict BER reader (definite and indefinite lengths, low tag numbers) ---- */

struct ber {
    const uint8_t *p, *end;
};

struct tlv {
    uint8_t tag;
    const uint8_t *start, *content;
    size_t len;   /* content length */
    size_t total; /* whole element, header included */
    int indefinite;
};

static int ber_next(struct ber *b, struct tlv *t, int depth);

/* Skips the elements of an indefinite-length content up to its end-of-contents octets. */
static int ber_skip_indefinite(struct ber *inner, int depth)
{
    struct tlv child;
    while (!(inner->end - inner->p >= 2 && inner->p[0] == 0 && inner->p[1] == 0))
        if (ber_next(inner, &child, depth + 1) != 0)
            return -1;
    return 0;
}

/* Reads the element at b->p into t and advances past it. -1 on malformed input. */
static int ber_next(struct ber *b, struct tlv *t, int depth)
{
    const uint8_t *p = b->p;
    size_t len = 0;

    if (depth > MAX_DEPTH || b->end - p < 2 || (p[0] & 0x1f) == 0x1f)
        return -1;
    t->tag = p[0];
    t->start = p;
    t->indefinite = p[1] == 0x80;
    uint8_t first = p[1];
    p += 2;
    if (t->indefinite) {
        struct ber inner = {p, b->end};
        if (!(t->tag & 0x20) || ber_skip_indefinite(&inner, depth) != 0)
            return -1;
        len = (size_t)(inner.p - p);
        b->p = inner.p + 2;
    } else {
        if (first & 0x80) {
            size_t n = first & 0x7f;
            if (n == 0 || n > 4 || (size_t)(b->end - p) < n)
                return -1;
            for (size_t i = 0; i < n; i++)
                len = len << 8 | p[i];
            p += n;
        } else {
            len = first;
        }
        if (len > (size_t)(b->end - p))
            return -1;
        b->p = p + len;
    }
    t->content = p;
    t->len = len;
    t->total = (size_t)(b->p - t->start);
    return 0;
}

/* Reads the next element, which must have the given tag. */
static int ber_expect(struct ber *b, uint8_t tag, struct tlv *t)
{
    return ber_next(b, t, 0) == 0 && t->tag == tag ? 0 : -1;
}

/* Reads the next element (of the given tag) and returns a reader over its content. */
static int ber_enter(struct ber *b, uint8_t tag, struct ber *inner)
{
    struct tlv t;
    if (ber_expect(b, tag, &t) != 0)
        return -1;
    inner->p = t.content;
    inner->end = t.content + t.len;
    return 0;
}

static int ber_at_end(const struct ber *b)
{
    return b->p == b->end;
}

static int oid_is(const struct tlv *t, const uint8_t *oid, size_t len)
{
    return t->tag == 0x06 && t->len == len && memcmp(t->content, oid, len) == 0;
}

/* ---- Algorithms ---- */

enum { MD_SHA1, MD_SHA256, MD_SHA384, MD_SHA512, MD_COUNT };
enum { FAMILY_RSA = 1, FAMILY_EC = 2 };

static const struct {
    uint8_t len, oid[9];
} digest_oids[MD_COUNT] = {
    {5, {0x2b, 0x0e, 0x03, 0x02, 0x1a}},
    {9, {0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01}},
    {9, {0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02}},
    {9, {0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03}},
};

/* signatureAlgorithm OIDs: key family and the digest they name (-1: the SignerInfo's). */
static const struct {
    uint8_t len, oid[9];
    int family, md;
} sig_oids[] = {
    {9, {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01}, FAMILY_RSA, -1},
    {9, {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05}, FAMILY_RSA, MD_SHA1},
    {9, {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b}, FAMILY_RSA, MD_SHA256},
    {9, {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c}, FAMILY_RSA, MD_SHA384},
    {9, {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d}, FAMILY_RSA, MD_SHA512},
    {7, {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01}, FAMILY_EC, MD_SHA1},
    {8, {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02}, FAMILY_EC, MD_SHA256},
    {8, {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03}, FAMILY_EC, MD_SHA384},
    {8, {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04}, FAMILY_EC, MD_SHA512},
};

static const uint8_t OID_SIGNED_DATA[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02};
static const uint8_t OID_CONTENT_TYPE[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x03};
static const uint8_t OID_MESSAGE_DIGEST[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04};
static const uint8_t OID_SIGNING_TIME[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x05};

/* An AlgorithmIdentifier: the OID, then nothing or NULL parameters. */
static int read_algorithm(struct ber *b, struct tlv *oid)
{
    struct ber alg;
    struct tlv params;
    if (ber_enter(b, 0x30, &alg) != 0 || ber_expect(&alg, 0x06, oid) != 0)
        return -1;
    if (!ber_at_end(&alg) &&
        (ber_expect(&alg, 0x05, &params) != 0 || params.len != 0 || !ber_at_end(&alg)))
        return -1;
    return 0;
}

/* ---- The parts of a detached SignedData the fast path uses ---- */

struct detached_sig {
    struct ber certs; /* content of certificates [0] */
    struct tlv issuer, serial, signed_attrs, message_digest, signature;
    int md, family;
};

static int digest_index(const struct tlv *oid)
{
    for (int i = 0; i < MD_COUNT; i++)
        if (oid_is(oid, digest_oids[i].oid, digest_oids[i].len))
            return i;
    return -1;
}

/* OpenSSL sets up every digest listed in digestAlgorithms and fails on any it does not know,
 * so this does too. Returns a bit mask of the listed digests, 0 on error. */
static unsigned int read_digest_algorithms(struct ber *b)
{
    struct ber set;
    unsigned int mask = 0;
    if (ber_enter(b, 0x31, &set) != 0)
        return 0;
    while (!ber_at_end(&set)) {
        struct tlv oid;
        int i;
        if (read_algorithm(&set, &oid) != 0 || (i = digest_index(&oid)) < 0)
            return 0;
        mask |= 1u << i;
    }
    return mask;
}

/* SignerInfo ::= SEQUENCE { version 1, issuerAndSerialNumber, digestAlgorithm,
 *   [0] signedAttrs, signatureAlgorithm, signature } (no unsignedAttrs). */
static int parse_signer_info(struct ber *b, struct detached_sig *s)
{
    struct ber ias;
    struct tlv t;
    size_t i, n = sizeof sig_oids / sizeof sig_oids[0];

    if (ber_expect(b, 0x02, &t) != 0 || t.len != 1 || t.content[0] != 1 ||
        ber_enter(b, 0x30, &ias) != 0 || ber_expect(&ias, 0x30, &s->issuer) != 0 ||
        ber_expect(&ias, 0x02, &s->serial) != 0 || !ber_at_end(&ias) ||
        read_algorithm(b, &t) != 0 || (s->md = digest_index(&t)) < 0 ||
        ber_expect(b, 0xa0, &s->signed_attrs) != 0 || s->signed_attrs.indefinite ||
        read_algorithm(b, &t) != 0)
        return -1;
    for (i = 0; i < n && !oid_is(&t, sig_oids[i].oid, sig_oids[i].len); i++)
        ;
    if (i == n || (sig_oids[i].md >= 0 && sig_oids[i].md != s->md))
        return -1;
    s->family = sig_oids[i].family;
    if (ber_expect(b, 0x04, &s->signature) != 0 || s->signature.indefinite || !ber_at_end(b))
        return -1;
    return 0;
}

/* Checks the signed attributes as OpenSSL does (exactly one contentType and messageDigest, at
 * most one signingTime, one value each) and picks out the messageDigest value. */
static int parse_signed_attrs(struct detached_sig *s)
{
    struct ber attrs = {s->signed_attrs.content, s->signed_attrs.content + s->signed_attrs.len};
    int content_types = 0, digests = 0, times = 0;

    while (!ber_at_end(&attrs)) {
        struct ber attr, values;
        struct tlv oid, value;
        if (ber_enter(&attrs, 0x30, &attr) != 0 || ber_expect(&attr, 0x06, &oid) != 0 ||
            ber_enter(&attr, 0x31, &values) != 0 || !ber_at_end(&attr) ||
            ber_next(&values, &value, 0) != 0 || !ber_at_end(&values))
            return -1;
        if (oid_is(&oid, OID_CONTENT_TYPE, sizeof OID_CONTENT_TYPE)) {
            content_types++;
        } else if (oid_is(&oid, OID_SIGNING_TIME, sizeof OID_SIGNING_TIME)) {
            times++;
        } else if (oid_is(&oid, OID_MESSAGE_DIGEST, sizeof OID_MESSAGE_DIGEST)) {
            digests++;
            s->message_digest = value;
            if (value.tag != 0x04 || value.indefinite)
                return -1;
        }
    }
    return content_types == 1 && digests == 1 && times <= 1 ? 0 : -1;
}

/* ContentInfo { signedData, [0] SignedData { version, digestAlgorithms,
 *   encapContentInfo { eContentType } (detached), [0] certificates, [1] crls?, signerInfos } } */
static int parse_detached(const uint8_t *der, size_t len, struct detached_sig *s)
{
    struct ber in = {der, der + len}, ci, wrap, sd, eci, infos, si;
    struct tlv t;
    unsigned int digests = 0;

    if (ber_enter(&in, 0x30, &ci) != 0 || !ber_at_end(&in) || ber_expect(&ci, 0x06, &t) != 0 ||
        !oid_is(&t, OID_SIGNED_DATA, sizeof OID_SIGNED_DATA) || ber_enter(&ci, 0xa0, &wrap) != 0 ||
        !ber_at_end(&ci) || ber_enter(&wrap, 0x30, &sd) != 0 || !ber_at_end(&wrap) ||
        ber_expect(&sd, 0x02, &t) != 0 || (digests = read_digest_algorithms(&sd)) == 0 ||
        ber_enter(&sd, 0x30, &eci) != 0 || ber_expect(&eci, 0x06, &t) != 0 || !ber_at_end(&eci) ||
        ber_enter(&sd, 0xa0, &s->certs) != 0 || ber_next(&sd, &t, 0) != 0)
        return -1;
    if (t.tag == 0xa1 && ber_next(&sd, &t, 0) != 0)
        return -1;
    if (t.tag != 0x31 || !ber_at_end(&sd))
        return -1;
    infos.p = t.content;
    infos.end = t.content + t.len;
    if (ber_enter(&infos, 0x30, &si) != 0 || !ber_at_end(&infos) ||
        parse_signer_info(&si, s) != 0 || !(digests & 1u << s->md))
        return -1;
    return parse_signed_attrs(s);
}

/* The DER certificate in the set whose issuer and serial number match the signer's. */
static int find_signer_cert(const struct detached_sig *s, struct tlv *cert)
{
    struct ber certs = s->certs;
    while (!ber_at_end(&certs)) {
        struct ber c, tbs;
        struct tlv t, serial, issuer;
        if (ber_next(&certs, cert, 0) != 0)
            return -1;
        if (cert->tag != 0x30 || cert->indefinite)
            continue; /* another CertificateChoices form */
        c.p = cert->content;
        c.end = cert->content + cert->len;
        if (ber_enter(&c, 0x30, &tbs) != 0 || ber_next(&tbs, &t, 0) != 0)
            return -1;
        if (t.tag == 0xa0 && ber_next(&tbs, &t, 0) != 0)
            return -1;
        serial = t;
        if (ber_expect(&tbs, 0x30, &t) != 0 || ber_expect(&tbs, 0x30, &issuer) != 0)
            return -1;
        if (serial.tag == 0x02 && serial.total == s->serial.total &&
            memcmp(serial.start, s->serial.start, serial.total) == 0 &&
            issuer.total == s->issuer.total &&
            memcmp(issuer.start, s->issuer.start, issuer.total) == 0)
            return 0;
    }
    return -1;
}

/* ---- Per-thread cache of signer certificates ---- */

struct cached_signer {
    uint8_t *der; /* NULL: empty slot */
    size_t der_len;
    crypto_cert *cert;
    EVP_PKEY_CTX *verify; /* verify-initialised with the certificate's key */
    int family, md;       /* md currently set on verify, -1 none */
};

struct signer_cache {
    EVP_MD_CTX *md_ctx;
    unsigned int clock;
    struct cached_signer slots[CACHE_SETS][CACHE_WAYS];
};

static pthread_once_t fast_once = PTHREAD_ONCE_INIT;
static pthread_key_t cache_key;
static EVP_MD *mds[MD_COUNT]; /* fetched once, then shared read-only by all threads */
static int fast_ok;

static void slot_clear(struct cached_signer *slot)
{
    free(slot->der);
    crypto_cert_free(slot->cert);
    EVP_PKEY_CTX_free(slot->verify);
    memset(slot, 0, sizeof *slot);
}

static void cache_free(void *p)
{
    struct signer_cache *cache = p;
    for (int i = 0; i < CACHE_SETS; i++)
        for (int j = 0; j < CACHE_WAYS; j++)
            slot_clear(&cache->slots[i][j]);
    EVP_MD_CTX_free(cache->md_ctx);
    free(cache);
}

static void fast_init(void)
{
    static const char *const names[MD_COUNT] = {"SHA1", "SHA256", "SHA384", "SHA512"};
    if (crypto_init() != 0 || pthread_key_create(&cache_key, cache_free) != 0)
        return;
    for (int i = 0; i < MD_COUNT; i++)
        if ((mds[i] = EVP_MD_fetch(NULL, names[i], NULL)) == NULL)
            return;
    fast_ok = 1;
}

static struct signer_cache *thread_cache(void)
{
    struct signer_cache *cache = pthread_getspecific(cache_key);
    if (cache == NULL) {
        cache = xcalloc(1, sizeof *cache);
        cache->md_ctx = EVP_MD_CTX_new();
        if (cache->md_ctx == NULL || pthread_setspecific(cache_key, cache) != 0) {
            cache_free(cache);
            return NULL;
        }
    }
    return cache;
}

/* Parses the certificate into slot and prepares its verify context. */
static int slot_fill(struct cached_signer *slot, const struct tlv *cert)
{
    const unsigned char *p = cert->start;
    X509 *x = d2i_X509(NULL, &p, (long)cert->total);
    EVP_PKEY *key = x && p == cert->start + cert->total ? X509_get0_pubkey(x) : NULL;

    if (key == NULL) {
        X509_free(x);
        return -1;
    }
    slot->cert = crypto_cert_wrap(x);
    slot->der = xmalloc(cert->total);
    memcpy(slot->der, cert->start, cert->total);
    slot->der_len = cert->total;
    slot->md = -1;
    slot->family = EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA  ? FAMILY_RSA
                   : EVP_PKEY_get_base_id(key) == EVP_PKEY_EC ? FAMILY_EC
                                                              : 0;
    slot->verify = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
    if (slot->family == 0 || slot->verify == NULL || EVP_PKEY_verify_init(slot->verify) <= 0 ||
        (slot->family == FAMILY_RSA &&
         EVP_PKEY_CTX_set_rsa_padding(slot->verify, RSA_PKCS1_PADDING) <= 0)) {
        slot_clear(slot);
        return -1;
    }
    return 0;
}

/* The cache slot for this exact certificate (matched on all its bytes), filled on a miss. */
static struct cached_signer *cache_lookup(struct signer_cache *cache, const struct tlv *cert)
{
    /* The last bytes of a certificate belong to its issuer's signature: as good as random. */
    const uint8_t *tail = cert->start + cert->total - 2;
    struct cached_signer *ways = cache->slots[((unsigned int)tail[0] << 8 | tail[1]) % CACHE_SETS];
    struct cached_signer *slot = NULL;

    for (int i = 0; i < CACHE_WAYS; i++) {
        if (ways[i].der == NULL)
            slot = &ways[i];
        else if (ways[i].der_len == cert->total &&
                 memcmp(ways[i].der, cert->start, cert->total) == 0)
            return &ways[i];
    }
    if (slot == NULL) {
        slot = &ways[cache->clock++ % CACHE_WAYS];
        slot_clear(slot);
    }
    return slot_fill(slot, cert) == 0 ? slot : NULL;
}

static int digest(EVP_MD_CTX *ctx, const EVP_MD *md, const uint8_t *prefix, size_t prefix_len,
                  const uint8_t *data, size_t len, uint8_t *out, unsigned int *out_len)
{
    return EVP_DigestInit_ex(ctx, md, NULL) && EVP_DigestUpdate(ctx, prefix, prefix_len) &&
           EVP_DigestUpdate(ctx, data, len) && EVP_DigestFinal_ex(ctx, out, out_len);
}

int crypto_cms_verify_detached_fast(const uint8_t *sig, size_t sig_len, const uint8_t *body,
                                    size_t body_len, crypto_cert **signer_out)
{
    struct detached_sig s;
    struct tlv cert;
    struct signer_cache *cache;
    struct cached_signer *slot;
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    static const uint8_t set_tag = 0x31;

    pthread_once(&fast_once, fast_init);
    if (!fast_ok || parse_detached(sig, sig_len, &s) != 0 || find_signer_cert(&s, &cert) != 0 ||
        (cache = thread_cache()) == NULL || (slot = cache_lookup(cache, &cert)) == NULL ||
        slot->family != s.family)
        return CRYPTO_DECLINE;
    /* messageDigest must be the digest of the body. */
    if (!digest(cache->md_ctx, mds[s.md], NULL, 0, body, body_len, md, &md_len))
        return CRYPTO_DECLINE;
    if (s.message_digest.len != md_len || !crypto_memeq(md, s.message_digest.content, md_len))
        return CRYPTO_EVERIFY;
    /* The signature covers the DER of the signed attributes with a SET OF tag (RFC 5652 5.4). */
    if (!digest(cache->md_ctx, mds[s.md], &set_tag, 1, s.signed_attrs.start + 1,
                s.signed_attrs.total - 1, md, &md_len))
        return CRYPTO_DECLINE;
    if (slot->md != s.md) {
        if (EVP_PKEY_CTX_set_signature_md(slot->verify, mds[s.md]) <= 0)
            return CRYPTO_DECLINE;
        slot->md = s.md;
    }
    if (EVP_PKEY_verify(slot->verify, s.signature.content, s.signature.len, md, md_len) != 1)
        return CRYPTO_EVERIFY;
    if (signer_out != NULL)
        *signer_out = crypto_cert_ref(slot->cert);
    return 0;
}

int cms_verify_detached(const uint8_t *sig, size_t sig_len, const uint8_t *body, size_t body_len,
                        crypto_cert **signer_out)
{
    int rc = crypto_cms_verify_detached_fast(sig, sig_len, body, body_len, signer_out);
    if (rc == CRYPTO_DECLINE) {
        ERR_clear_error();
        return crypto_cms_verify_detached_openssl(sig, sig_len, body, body_len, signer_out);
    }
    return rc ? crypto_fail("cms_verify_detached", rc) : 0;
}
