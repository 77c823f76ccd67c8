/*
 * The route table: every URL Orchard serves and the handler behind it. Paths other than
 * discovery are announced to devices (BaseURL, sign-in url, SCEP URL, CheckInURL, ServerURL)
 * and never hard-coded by a client.
 */
#ifndef ORCHARD_ROUTES_H
#define ORCHARD_ROUTES_H

#include "http/http.h"

#define PATH_ENROLL "/enroll/"                   /* + organisation domain: the BaseURL */
#define PATH_SIGNIN "/auth/signin"               /* apple-as-web url */
#define PATH_OIDC_CALLBACK "/auth/oidc/callback" /* OIDC redirect_uri (auth/oidc.c) */
#define PATH_SCEP "/scep"
#define PATH_CHECKIN "/mdm/checkin"
#define PATH_CONNECT "/mdm/connect"

/* The table, terminated by a NULL pattern. Handlers take the `struct app *` as ctx. */
extern const struct http_route orchard_routes[];

#endif
