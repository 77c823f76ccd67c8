/*
 * cms_verify_detached(): the Mdm-Signature check that runs on every device request when
 * SignMessage is on (PROTOCOL.md 10.2), so it has a fast path.
 *
 * Why: with OpenSSL 3.0, d2i_X509 decodes the public key through the provider decoder
 * machinery, which alone costs ~150 us and takes global locks; CMS_verify adds fetches and
 * BIO chains on top. Measured: ~4k verifications/s per core, against a target of 20k/s on two
 * cores. A device presents the same certificate on every request, so the fast path reads the
 * SignedData with a small strict BER reader, finds the signer certificate's bytes, and keeps
 * the parsed certificate plus a verify-initialised key context in the per-thread certificate
 * cache (cert_cache.c; no locks). A hit costs one digest of the body, one of the signed
 * attributes and one public-key operation.
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

#define MAX_DEPTH 16 /* nesting bound for skipping indefinite-length elements */

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

static const uint8_t OID_DATA[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01};
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
        ber_expect(b, 0xa0, &s->signed_attrs) != 0 || read_algorithm(b, &t) != 0)
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

/* Whether t has the minimal definite length encoding DER requires. */
static int der_length(const struct tlv *t)
{
    size_t need = 2;
    if (t->len >= 0x80)
        for (size_t n = t->len; n > 0; n >>= 8)
            need++;
    return !t->indefinite && (size_t)(t->content - t->start) == need;
}

/* DER orders SET OF elements by their encodings (X.690 11.6). */
static int der_cmp(const struct tlv *a, const struct tlv *b)
{
    int c = memcmp(a->start, b->start, a->total < b->total ? a->total : b->total);
    return c != 0 ? c : (a->total > b->total) - (a->total < b->total);
}

enum { ATTR_CONTENT_TYPE, ATTR_MESSAGE_DIGEST, ATTR_SIGNING_TIME, ATTR_COUNT };

/* Which attribute this is if the fast path accepts it: contentType id-data, messageDigest as
 * an OCTET STRING, signingTime as a plain Zulu UTCTime/GeneralizedTime; -1 otherwise. */
static int known_attribute(const struct tlv *oid, const struct tlv *v)
{
    if (oid_is(oid, OID_CONTENT_TYPE, sizeof OID_CONTENT_TYPE))
        return oid_is(v, OID_DATA, sizeof OID_DATA) ? ATTR_CONTENT_TYPE : -1;
    if (oid_is(oid, OID_MESSAGE_DIGEST, sizeof OID_MESSAGE_DIGEST))
        return v->tag == 0x04 ? ATTR_MESSAGE_DIGEST : -1;
    if (!oid_is(oid, OID_SIGNING_TIME, sizeof OID_SIGNING_TIME) ||
        !((v->tag == 0x17 && v->len == 13) || (v->tag == 0x18 && v->len == 15)))
        return -1;
    for (size_t i = 0; i + 1 < v->len; i++)
        if (v->content[i] < '0' || v->content[i] > '9')
            return -1;
    return v->content[v->len - 1] == 'Z' ? ATTR_SIGNING_TIME : -1;
}

/*
 * The signed attributes. OpenSSL verifies the signature over its own DER re-encoding of them,
 * so the fast path (which hashes the bytes received) only takes input that is already DER:
 * minimal lengths, sorted, and only the three known attributes with one value each;
 * contentType and messageDigest exactly once (as OpenSSL requires), signingTime at most once.
 */
static int parse_signed_attrs(struct detached_sig *s)
{
    struct ber attrs = {s->signed_attrs.content, s->signed_attrs.content + s->signed_attrs.len};
    struct tlv prev = {0}, attr;
    int seen[ATTR_COUNT] = {0};

    if (!der_length(&s->signed_attrs))
        return -1;
    while (!ber_at_end(&attrs)) {
        struct ber a, values;
        struct tlv oid, set, v;
        int which;
        if (ber_expect(&attrs, 0x30, &attr) != 0 || !der_length(&attr) ||
            (prev.start != NULL && der_cmp(&prev, &attr) > 0))
            return -1;
        a.p = attr.content;
        a.end = attr.content + attr.len;
        if (ber_expect(&a, 0x06, &oid) != 0 || ber_expect(&a, 0x31, &set) != 0 || !ber_at_end(&a) ||
            !der_length(&oid) || !der_length(&set))
            return -1;
        values.p = set.content;
        values.end = set.content + set.len;
        if (ber_next(&values, &v, 0) != 0 || !ber_at_end(&values) || !der_length(&v) ||
            (which = known_attribute(&oid, &v)) < 0)
            return -1;
        seen[which]++;
        if (which == ATTR_MESSAGE_DIGEST)
            s->message_digest = v;
        prev = attr;
    }
    return seen[ATTR_CONTENT_TYPE] == 1 && seen[ATTR_MESSAGE_DIGEST] == 1 &&
                   seen[ATTR_SIGNING_TIME] <= 1
               ? 0
               : -1;
}

/* ContentInfo { signedData, [0] SignedData { version, digestAlgorithms,
 *   encapContentInfo { id-data } (detached), [0] certificates, signerInfos { one } } } */
static int parse_detached(const uint8_t *der, size_t len, struct detached_sig *s)
{
    struct ber in = {der, der + len}, ci, wrap, sd, eci, infos, si;
    struct tlv t;
    unsigned int digests = 0;

    if (ber_enter(&in, 0x30, &ci) != 0 || !ber_at_end(&in) || ber_expect(&ci, 0x06, &t) != 0 ||
        !oid_is(&t, OID_SIGNED_DATA, sizeof OID_SIGNED_DATA) || ber_enter(&ci, 0xa0, &wrap) != 0 ||
        !ber_at_end(&ci) || ber_enter(&wrap, 0x30, &sd) != 0 || !ber_at_end(&wrap) ||
        ber_expect(&sd, 0x02, &t) != 0 || t.len != 1 ||
        (digests = read_digest_algorithms(&sd)) == 0 || ber_enter(&sd, 0x30, &eci) != 0 ||
        ber_expect(&eci, 0x06, &t) != 0 || !oid_is(&t, OID_DATA, sizeof OID_DATA) ||
        !ber_at_end(&eci) || ber_enter(&sd, 0xa0, &s->certs) != 0 ||
        ber_enter(&sd, 0x31, &infos) != 0 || !ber_at_end(&sd) ||
        ber_enter(&infos, 0x30, &si) != 0 || !ber_at_end(&infos) ||
        parse_signer_info(&si, s) != 0 || !(digests & 1u << s->md))
        return -1;
    return parse_signed_attrs(s);
}

/* ---- Verification ---- */

static pthread_once_t mds_once = PTHREAD_ONCE_INIT;
static EVP_MD *mds[MD_COUNT]; /* fetched once, then shared read-only by all threads */
static int mds_ok;

static void fetch_mds(void)
{
    static const char *const names[MD_COUNT] = {"SHA1", "SHA256", "SHA384", "SHA512"};
    if (crypto_init() != 0)
        return;
    for (int i = 0; i < MD_COUNT; i++)
        if ((mds[i] = EVP_MD_fetch(NULL, names[i], NULL)) == NULL)
            return;
    mds_ok = 1;
}

/* The cached certificate's verify context set up for this family and digest, made on first
 * use; NULL if its key is not of that family. */
static EVP_PKEY_CTX *signer_ctx(struct cached_cert *c, int family, int md)
{
    EVP_PKEY *key = X509_get0_pubkey(c->cert->x509);
    int base = key ? EVP_PKEY_get_base_id(key) : 0;

    if (base != (family == FAMILY_RSA ? EVP_PKEY_RSA : EVP_PKEY_EC))
        return NULL;
    if (c->verify == NULL) {
        c->verify = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
        c->md = -1;
        if (c->verify == NULL || EVP_PKEY_verify_init(c->verify) <= 0 ||
            (family == FAMILY_RSA &&
             EVP_PKEY_CTX_set_rsa_padding(c->verify, RSA_PKCS1_PADDING) <= 0)) {
            EVP_PKEY_CTX_free(c->verify);
            c->verify = NULL;
            return NULL;
        }
    }
    if (c->md != md) {
        if (EVP_PKEY_CTX_set_signature_md(c->verify, mds[md]) <= 0)
            return NULL;
        c->md = md;
    }
    return c->verify;
}

/* The serial number and issuer of a DER certificate. */
static int cert_issuer_serial(const struct tlv *cert, struct tlv *serial, struct tlv *issuer)
{
    struct ber c = {cert->content, cert->content + cert->len}, tbs;
    struct tlv t;
    if (ber_enter(&c, 0x30, &tbs) != 0 || ber_next(&tbs, serial, 0) != 0)
        return -1;
    if (serial->tag == 0xa0 && ber_next(&tbs, serial, 0) != 0)
        return -1;
    return serial->tag == 0x02 && ber_expect(&tbs, 0x30, &t) == 0 &&
                   ber_expect(&tbs, 0x30, issuer) == 0
               ? 0
               : -1;
}

static int tlv_equal(const struct tlv *a, const struct tlv *b)
{
    return a->total == b->total && memcmp(a->start, b->start, a->total) == 0;
}

/*
 * Finds the signer among the certificates, all of which must be well-formed (OpenSSL parses
 * every one; here each is parsed once per thread and then found in the cache). The signer is
 * matched on the exact issuer and serial bytes; another certificate with the same serial
 * declines, since OpenSSL compares issuer names canonically and might pick a different one.
 * The signer is looked up last so no other lookup can evict its slot before it is used.
 */
static struct cached_cert *find_signer(const struct detached_sig *s)
{
    struct ber certs = s->certs;
    struct tlv cert, signer = {0};
    int same_serial = 0;

    while (!ber_at_end(&certs)) {
        struct tlv serial, issuer;
        if (ber_next(&certs, &cert, 0) != 0 || cert.tag != 0x30 || cert.indefinite ||
            cert_issuer_serial(&cert, &serial, &issuer) != 0)
            return NULL;
        if (tlv_equal(&serial, &s->serial)) {
            same_serial++;
            if (tlv_equal(&issuer, &s->issuer))
                signer = cert;
        } else if (crypto_cert_cache_get(cert.start, cert.total) == NULL) {
            return NULL;
        }
    }
    return same_serial == 1 && signer.start != NULL
               ? crypto_cert_cache_get(signer.start, signer.total)
               : NULL;
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
    struct cached_cert *signer;
    EVP_PKEY_CTX *verify;
    EVP_MD_CTX *ctx = crypto_thread_md_ctx();
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    static const uint8_t set_tag = 0x31;

    pthread_once(&mds_once, fetch_mds);
    if (!mds_ok || parse_detached(sig, sig_len, &s) != 0 || (signer = find_signer(&s)) == NULL ||
        (verify = signer_ctx(signer, s.family, s.md)) == NULL)
        return CRYPTO_DECLINE;
    /* messageDigest must be the digest of the body. */
    if (!digest(ctx, mds[s.md], NULL, 0, body, body_len, md, &md_len))
        return CRYPTO_DECLINE;
    if (s.message_digest.len != md_len || !crypto_memeq(md, s.message_digest.content, md_len))
        return CRYPTO_EVERIFY;
    /* The signature covers the DER of the signed attributes with a SET OF tag (RFC 5652 5.4). */
    if (!digest(ctx, mds[s.md], &set_tag, 1, s.signed_attrs.start + 1, s.signed_attrs.total - 1, md,
                &md_len))
        return CRYPTO_DECLINE;
    if (EVP_PKEY_verify(verify, s.signature.content, s.signature.len, md, md_len) != 1)
        return CRYPTO_EVERIFY;
    if (signer_out != NULL)
        *signer_out = crypto_cert_ref(signer->cert);
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
