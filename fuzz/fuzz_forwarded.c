/*
 * Fuzz target: what a load balancer and the configuration feed the HTTP layer and webhooks:
 * a trusted_proxies list and X-Forwarded-For header lines (input split at newlines: the first
 * line is the list, every further line one header line, joined as the server joins them), and
 * a webhook URL.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/http.h"
#include "webhook/webhook.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    char *header = strchr(text, '\n');
    if (header != NULL)
        *header++ = '\0';
    char out[64];
    http_client_addr(text, "10.0.0.1", header, out, sizeof out);
    http_client_addr(text, "::1", header, out, sizeof out);
    const char *lines[16];
    size_t n = 0;
    for (char *p = header; p != NULL && n < 16;) {
        lines[n++] = p;
        p = strchr(p, '\n');
        if (p != NULL)
            *p++ = '\0';
    }
    char *joined = http_forwarded_join(lines, n);
    http_client_addr(text, "10.0.0.1", joined, out, sizeof out);
    free(joined);
    (void)http_addr_in_list(text, header ? header : "127.0.0.1");
    (void)webhook_url_allowed(text);
    free(text);
    return 0;
}
