/* URL pieces Orchard needs: host/port of an https URL, percent-decoding, form fields. */
#ifndef ORCHARD_CORE_URL_H
#define ORCHARD_CORE_URL_H

#include <stddef.h>

#include "core/buf.h"

/*
 * Splits "https://host[:port][/...]" (IPv6 hosts in brackets). Writes the host (without
 * brackets) and the port (443 if absent). Returns 0, or -1 if the URL is not an https URL.
 */
int url_host_port(const char *url, char *host, size_t host_len, int *port);
/* Percent-decodes (and '+' as space when form != 0) into a malloc'd string; NULL if invalid. */
char *url_decode(const char *s, size_t len, int form);
/* Appends s percent-encoded (unreserved characters kept). */
int url_encode(buf *out, const char *s);
/*
 * Finds field `name` in an application/x-www-form-urlencoded body and returns its decoded
 * value (malloc'd), or NULL if absent or malformed.
 */
char *url_form_field(const char *body, size_t len, const char *name);

#endif
