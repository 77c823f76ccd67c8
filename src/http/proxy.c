/*
 * Requests that arrive through a trusted reverse proxy (load balancer): which peers are
 * trusted, and the client address they report in X-Forwarded-For.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http.h"

#include "core/mem.h"

/* An IPv4 or IPv6 address as 16 bytes (IPv4 mapped into ::ffff:0:0/96); 0 if addr parses. */
static int parse_addr(const char *addr, uint8_t out[16], int *v4)
{
    struct in_addr a4;
    *v4 = 0;
    if (inet_pton(AF_INET, addr, &a4) == 1) {
        memset(out, 0, 10);
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &a4, 4);
        *v4 = 1;
        return 0;
    }
    return inet_pton(AF_INET6, addr, out) == 1 ? 0 : -1;
}

/* 1 if addr is inside the entry "ADDR" or "ADDR/PREFIX" (len bytes at p). */
static int entry_matches(const char *p, size_t len, const uint8_t addr[16])
{
    char text[64];
    if (len == 0 || len >= sizeof text)
        return 0;
    memcpy(text, p, len);
    text[len] = '\0';
    int bits = -1;
    char *slash = strchr(text, '/');
    if (slash != NULL) {
        char *end = NULL;
        long b = strtol(slash + 1, &end, 10);
        if (end == slash + 1 || *end != '\0' || b < 0 || b > 128)
            return 0;
        bits = (int)b;
        *slash = '\0';
    }
    uint8_t net[16];
    int v4;
    if (parse_addr(text, net, &v4) != 0)
        return 0;
    if (bits < 0)
        bits = 128;
    else if (v4 && bits <= 32)
        bits += 96;
    else if (v4)
        return 0;
    for (int i = 0; i < 16 && bits > 0; i++, bits -= 8) {
        uint8_t mask = bits >= 8 ? 0xff : (uint8_t)(0xff << (8 - bits));
        if ((addr[i] & mask) != (net[i] & mask))
            return 0;
    }
    return 1;
}

int http_addr_in_list(const char *list, const char *addr)
{
    uint8_t a[16];
    int v4;
    if (list == NULL || addr == NULL || parse_addr(addr, a, &v4) != 0)
        return 0;
    for (const char *p = list; *p;) {
        p += strspn(p, ", \t");
        size_t len = strcspn(p, ", \t");
        if (entry_matches(p, len, a))
            return 1;
        p += len;
    }
    return 0;
}

/* Copies the element of a comma-separated list ending at end (trimmed) into out; the start of
 * that element is returned in *start. 0 if it fits and is not empty. */
static int element_before(const char *list, const char *end, const char **start, char *out,
                          size_t len)
{
    const char *s = end;
    while (s > list && s[-1] != ',')
        s--;
    *start = s;
    while (s < end && (*s == ' ' || *s == '\t'))
        s++;
    const char *e = end;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    size_t n = (size_t)(e - s);
    if (n == 0 || n >= len)
        return -1;
    memcpy(out, s, n);
    out[n] = '\0';
    return 0;
}

void http_client_addr(const char *trusted, const char *peer, const char *forwarded_for, char *out,
                      size_t len)
{
    snprintf(out, len, "%s", peer);
    if (forwarded_for == NULL || !http_addr_in_list(trusted, peer))
        return;
    /* Right to left: each hop appends the address it saw; the first one we do not trust is
     * the client (anything further left was written by the client and proves nothing). */
    const char *end = forwarded_for + strlen(forwarded_for);
    while (end > forwarded_for) {
        const char *start;
        char hop[64];
        uint8_t a[16];
        int v4;
        if (element_before(forwarded_for, end, &start, hop, sizeof hop) != 0 ||
            parse_addr(hop, a, &v4) != 0)
            return; /* malformed: keep what we had */
        snprintf(out, len, "%s", hop);
        if (!http_addr_in_list(trusted, hop))
            return;
        end = start > forwarded_for ? start - 1 : forwarded_for;
    }
}

char *http_forwarded_join(const char *const *lines, size_t n)
{
    if (n == 0)
        return NULL;
    size_t len = 1;
    for (size_t i = 0; i < n; i++)
        len += strlen(lines[i]) + 2;
    char *out = xmalloc(len);
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = strlen(lines[i]);
        if (i > 0) {
            memcpy(out + used, ", ", 2);
            used += 2;
        }
        memcpy(out + used, lines[i], k);
        used += k;
    }
    out[used] = '\0';
    return out;
}
