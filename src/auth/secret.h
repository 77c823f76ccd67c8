/*
 * Secrets: session tokens, API keys, SCEP challenges and passwords. Tokens are 256 random bits,
 * base64url without padding (43 characters, safe in URLs and headers). Only their SHA-256 is
 * stored; lookups go by hash and comparisons are constant time. Passwords are hashed with
 * argon2id (libsodium crypto_pwhash_str). Thread-safe after secret_init().
 */
#ifndef ORCHARD_AUTH_SECRET_H
#define ORCHARD_AUTH_SECRET_H

#include <stddef.h>

#define SECRET_TOKEN_LEN 43 /* characters, without the NUL */
#define SECRET_HASH_LEN 64  /* lowercase hex SHA-256, without the NUL */

/* Initialises libsodium; returns 0 or -1. Call once before threads start. */
int secret_init(void);
/* A new random token (out must hold SECRET_TOKEN_LEN + 1 bytes). */
void secret_new_token(char *out);
/* Writes the lowercase hex SHA-256 of s into out (SECRET_HASH_LEN + 1 bytes). */
void secret_hash(const char *s, char *out);
/*
 * Writes the SHA-256 of s as base64url without padding into out (SECRET_TOKEN_LEN + 1 bytes):
 * the PKCE S256 code_challenge of a code_verifier (RFC 7636 4.2).
 */
void secret_sha256_b64url(const char *s, char *out);
/*
 * HMAC-SHA256 of msg under key (any length), as base64url without padding into out
 * (SECRET_TOKEN_LEN + 1 bytes): the same shape as a token, so secret_token_well_formed()
 * pre-checks it and secret_equal() compares it.
 */
void secret_hmac_b64url(const unsigned char *key, size_t key_len, const char *msg, size_t msg_len,
                        char *out);
/* Fills key with len random bytes (a new server key). */
void secret_random_bytes(unsigned char *key, size_t len);
/* Wipes len bytes at p (the compiler may not elide it). */
void secret_wipe(void *p, size_t len);

/* 1 if the two NUL-terminated strings are equal, compared in time independent of content. */
int secret_equal(const char *a, const char *b);
/* 1 if s looks like a token we issued (length and alphabet); cheap pre-check for input. */
int secret_token_well_formed(const char *s);

/* Hashes a password with argon2id (interactive limits). Returns malloc'd string or NULL. */
char *secret_password_hash(const char *password);
/* 1 if password matches the stored hash, 0 otherwise. */
int secret_password_verify(const char *hash, const char *password);

#endif
