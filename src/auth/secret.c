/* Tokens, hashes and password hashing on top of libsodium. */
#include "auth/secret.h"

#include <sodium.h>
#include <string.h>

#include "core/mem.h"

int secret_init(void)
{
    return sodium_init() < 0 ? -1 : 0;
}

void secret_new_token(char *out)
{
    unsigned char raw[32];
    randombytes_buf(raw, sizeof(raw));
    sodium_bin2base64(out, SECRET_TOKEN_LEN + 1, raw, sizeof(raw),
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof(raw));
}

void secret_hash(const char *s, char *out)
{
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(h, (const unsigned char *)s, strlen(s));
    sodium_bin2hex(out, SECRET_HASH_LEN + 1, h, sizeof(h));
}

void secret_sha256_b64url(const char *s, char *out)
{
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(h, (const unsigned char *)s, strlen(s));
    sodium_bin2base64(out, SECRET_TOKEN_LEN + 1, h, sizeof(h),
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

void secret_hmac_b64url(const unsigned char *key, size_t key_len, const char *msg, size_t msg_len,
                        char *out)
{
    unsigned char mac[crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256_state h;
    crypto_auth_hmacsha256_init(&h, key, key_len);
    crypto_auth_hmacsha256_update(&h, (const unsigned char *)msg, msg_len);
    crypto_auth_hmacsha256_final(&h, mac);
    sodium_bin2base64(out, SECRET_TOKEN_LEN + 1, mac, sizeof(mac),
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(&h, sizeof(h));
    sodium_memzero(mac, sizeof(mac));
}

void secret_random_bytes(unsigned char *key, size_t len)
{
    randombytes_buf(key, len);
}

void secret_wipe(void *p, size_t len)
{
    sodium_memzero(p, len);
}

int secret_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la != lb)
        return 0; /* lengths of our secrets are public (fixed) */
    return sodium_memcmp(a, b, la) == 0;
}

int secret_token_well_formed(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '_';
        if (!ok || n > SECRET_TOKEN_LEN)
            return 0;
    }
    return n == SECRET_TOKEN_LEN;
}

char *secret_password_hash(const char *password)
{
    char out[crypto_pwhash_STRBYTES];
    if (crypto_pwhash_str_alg(out, password, strlen(password), crypto_pwhash_OPSLIMIT_INTERACTIVE,
                              crypto_pwhash_MEMLIMIT_INTERACTIVE, crypto_pwhash_ALG_ARGON2ID13))
        return NULL;
    return xstrdup(out);
}

int secret_password_verify(const char *hash, const char *password)
{
    if (hash == NULL || strncmp(hash, "$argon2id$", 10) != 0)
        return 0;
    return crypto_pwhash_str_verify(hash, password, strlen(password)) == 0;
}
