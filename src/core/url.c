/* URL helpers; inputs are untrusted, so every function bounds its reads. */
#include "core/url.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "core/mem.h"

int url_host_port(const char *url, char *host, size_t host_len, int *port)
{
    if (strncmp(url, "https://", 8) != 0)
        return -1;
    const char *h = url + 8, *end;
    if (*h == '[') {
        end = strchr(h, ']');
        if (end == NULL)
            return -1;
        h++;
    } else {
        end = h + strcspn(h, ":/?#");
    }
    size_t n = (size_t)(end - h);
    if (n == 0 || n >= host_len)
        return -1;
    memcpy(host, h, n);
    host[n] = '\0';
    if (*end == ']')
        end++;
    *port = 443;
    if (*end == ':') {
        char *e = NULL;
        long p = strtol(end + 1, &e, 10);
        if (p <= 0 || p > 65535 || (*e && *e != '/' && *e != '?' && *e != '#'))
            return -1;
        *port = (int)p;
    }
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

char *url_decode(const char *s, size_t len, int form)
{
    char *out = xmalloc(len + 1);
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%') {
            int hi = i + 2 < len ? hexval(s[i + 1]) : -1;
            int lo = i + 2 < len ? hexval(s[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                free(out);
                return NULL;
            }
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else if (s[i] == '+' && form) {
            out[o++] = ' ';
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    if (strlen(out) != o) { /* an encoded NUL: never valid in our fields */
        free(out);
        return NULL;
    }
    return out;
}

int url_encode(buf *out, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        int rc;
        if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            rc = buf_append(out, s, 1);
        } else {
            char enc[3] = {'%', hex[c >> 4], hex[c & 15]};
            rc = buf_append(out, enc, 3);
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

char *url_form_field(const char *body, size_t len, const char *name)
{
    size_t nlen = strlen(name);
    size_t i = 0;
    while (i < len) {
        size_t end = i;
        while (end < len && body[end] != '&')
            end++;
        const char *eq = memchr(body + i, '=', end - i);
        if (eq && (size_t)(eq - (body + i)) == nlen && memcmp(body + i, name, nlen) == 0)
            return url_decode(eq + 1, (size_t)(body + end - eq - 1), 1);
        i = end + 1;
    }
    return NULL;
}
