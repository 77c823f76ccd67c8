/*
 * The XML half of the parse budget: a strict, single-pass scanner for the plist subset Apple
 * writes. It builds nothing; it tracks the stack of open dictionaries and arrays (close tags must
 * match, every dictionary alternates <key> and value) and counts depth, values, keys and text.
 *
 * It must agree with libplist 2.2's own parser (xplist.c, not libxml2) on where markup begins
 * and ends, or a comment could hide elements from the count that libplist then builds. So:
 *   - whitespace is exactly libplist's (space, tab, CR, LF);
 *   - a comment runs from "<!--" to the first "-->" after it (libplist's find_str); a "--"
 *     inside is refused (XML forbids it), so the first "--" must be the end;
 *   - a processing instruction (and the XML declaration) runs to the first "?>"; libplist skips
 *     double-quoted strings while looking for it, so one with an odd number of '"' before that
 *     "?>" (where libplist would look further) is refused, as is '<' inside one and a "<?"
 *     without a target name (libplist ends "<?>" at once);
 *   - a DOCTYPE is allowed once, before the root, without an internal subset ('[' refused: it
 *     could declare entities, and libplist only skips it); quoted strings in it may not contain
 *     '<', '>' or '[', and single quotes are refused (libplist only knows double quotes);
 *   - CDATA sections are text, and only inside a value element (as in libplist);
 *   - element names are matched whole; only <plist> may have attributes (double-quoted, no '<'
 *     or '>' inside: libplist skips quoted strings when looking for the tag's end);
 *   - NUL bytes are refused anywhere (libplist copies tag names with strncpy, so "<dict\0x>"
 *     would read as <dict>).
 * libplist accepts more than this (attributes anywhere, junk after the root, keys in arrays);
 * none of that is refused for safety but because Apple never sends it and ambiguity is risk.
 */
#include <string.h>

#include "plist/budget_int.h"

enum el {
    EL_PLIST,
    EL_DICT,
    EL_ARRAY,
    EL_KEY,
    EL_STRING,
    EL_INTEGER,
    EL_REAL,
    EL_DATE,
    EL_DATA,
    EL_TRUE,
    EL_FALSE,
};

static const char *const el_names[] = {"plist", "dict", "array", "key",  "string", "integer",
                                       "real",  "date", "data",  "true", "false"};

struct xs {
    struct pl_meter *m;
    const char *begin, *p, *end;
    unsigned depth;                /* open dictionaries and arrays */
    uint8_t is_dict[PL_MAX_DEPTH]; /* per open container */
    uint8_t has_key[PL_MAX_DEPTH]; /* dictionary: a <key> waits for its value */
    size_t keys[PL_MAX_DEPTH];     /* dictionary: keys so far */
};

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static int is_letter(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int starts(const struct xs *s, const char *lit)
{
    size_t n = strlen(lit);
    return (size_t)(s->end - s->p) >= n && memcmp(s->p, lit, n) == 0;
}

static void skip_ws(struct xs *s)
{
    while (s->p < s->end && is_ws(*s->p))
        s->p++;
}

static int malformed(struct xs *s, const char *what)
{
    return pl_refuse(s->m, PL_BUDGET_MALFORMED, "XML plist: %s at byte %zu", what,
                     (size_t)(s->p - s->begin));
}

/* At "<!--": to the first "--", which must be the start of "-->". */
static int skip_comment(struct xs *s)
{
    const char *from = s->p + 4;
    const char *q = memmem(from, (size_t)(s->end - from), "--", 2);
    if (q == NULL || q + 2 >= s->end || q[2] != '>')
        return malformed(s, "unterminated comment or \"--\" inside one");
    s->p = q + 3;
    return 0;
}

/* At "<?": a named processing instruction (or the XML declaration) up to the first "?>". */
static int skip_pi(struct xs *s)
{
    const char *from = s->p + 2;
    if (from >= s->end || !(is_letter(*from) || *from == '_' || *from == ':'))
        return malformed(s, "processing instruction without a target");
    const char *q = memmem(from, (size_t)(s->end - from), "?>", 2);
    if (q == NULL)
        return malformed(s, "unterminated processing instruction");
    size_t quotes = 0;
    for (const char *c = from; c < q; c++) {
        if (*c == '<')
            return malformed(s, "'<' inside a processing instruction");
        quotes += *c == '"';
    }
    if (quotes % 2 != 0)
        return malformed(s, "unbalanced quote in a processing instruction");
    s->p = q + 2;
    return 0;
}

/* At "<!DOCTYPE": an external DOCTYPE only (Apple's names a public DTD). */
static int skip_doctype(struct xs *s)
{
    s->p += 9;
    if (s->p >= s->end || !is_ws(*s->p))
        return malformed(s, "bad DOCTYPE");
    while (s->p < s->end) {
        char c = *s->p;
        if (c == '"') {
            const char *q = memchr(s->p + 1, '"', (size_t)(s->end - s->p - 1));
            if (q == NULL)
                return malformed(s, "unterminated string in DOCTYPE");
            for (const char *i = s->p + 1; i < q; i++) {
                if (*i == '<' || *i == '>' || *i == '[')
                    return malformed(s, "markup inside a DOCTYPE string");
            }
            s->p = q + 1;
        } else if (c == '>') {
            s->p++;
            return 0;
        } else if (c == '[') {
            return malformed(s, "DOCTYPE with an internal subset (entities)");
        } else if (c == '<' || c == '\'') {
            return malformed(s, "bad DOCTYPE");
        } else {
            s->p++;
        }
    }
    return malformed(s, "unterminated DOCTYPE");
}

/* Whitespace, comments and processing instructions (and, if *doctype, one DOCTYPE). */
static int skip_misc(struct xs *s, int *doctype)
{
    for (;;) {
        int rc = 0;
        skip_ws(s);
        if (starts(s, "<!--"))
            rc = skip_comment(s);
        else if (starts(s, "<?"))
            rc = skip_pi(s);
        else if (doctype && *doctype && starts(s, "<!DOCTYPE")) {
            *doctype = 0;
            rc = skip_doctype(s);
        } else
            return 0;
        if (rc != 0)
            return rc;
    }
}

/* A whole element name from the table at s->p; advances past it. */
static int read_name(struct xs *s, enum el *out)
{
    const char *b = s->p;
    while (s->p < s->end && is_letter(*s->p))
        s->p++;
    size_t n = (size_t)(s->p - b);
    for (size_t i = 0; i < sizeof(el_names) / sizeof(el_names[0]); i++) {
        if (strlen(el_names[i]) == n && memcmp(el_names[i], b, n) == 0) {
            *out = (enum el)i;
            return 0;
        }
    }
    s->p = b;
    return malformed(s, "unknown element");
}

/* <plist>'s attributes: name="value" pairs, values without '<' or '>'. */
static int plist_attributes(struct xs *s)
{
    for (;;) {
        skip_ws(s);
        if (s->p < s->end && *s->p == '>') {
            s->p++;
            return 0;
        }
        const char *b = s->p;
        while (s->p < s->end &&
               (is_letter(*s->p) || *s->p == '_' || *s->p == ':' || *s->p == '-' || *s->p == '.'))
            s->p++;
        if (s->p == b)
            return malformed(s, "bad <plist> tag");
        skip_ws(s);
        if (s->p >= s->end || *s->p != '=')
            return malformed(s, "bad <plist> attribute");
        s->p++;
        skip_ws(s);
        if (s->p >= s->end || *s->p != '"')
            return malformed(s, "bad <plist> attribute");
        const char *q = memchr(s->p + 1, '"', (size_t)(s->end - s->p - 1));
        if (q == NULL)
            return malformed(s, "unterminated <plist> attribute");
        for (const char *i = s->p + 1; i < q; i++) {
            if (*i == '<' || *i == '>')
                return malformed(s, "markup inside a <plist> attribute");
        }
        s->p = q + 1;
    }
}

/* At '<' of an opening tag: its element and whether it is empty ("<x/>"); no attributes. */
static int open_tag(struct xs *s, enum el *el, int *empty)
{
    s->p++;
    int rc = read_name(s, el);
    if (rc != 0)
        return rc;
    if (*el == EL_PLIST)
        return malformed(s, "nested <plist>");
    skip_ws(s);
    *empty = 0;
    if (s->p < s->end && *s->p == '/') {
        *empty = 1;
        s->p++;
    }
    if (s->p >= s->end || *s->p != '>')
        return malformed(s, "bad tag");
    s->p++;
    return 0;
}

/* At "</": the closing tag of el, "</name" whitespace ">". */
static int close_tag(struct xs *s, enum el el)
{
    enum el got;
    s->p += 2;
    int rc = read_name(s, &got);
    if (rc != 0)
        return rc;
    if (got != el)
        return malformed(s, "mismatched closing tag");
    skip_ws(s);
    if (s->p >= s->end || *s->p != '>')
        return malformed(s, "bad closing tag");
    s->p++;
    return 0;
}

/*
 * The content of a value element up to its closing tag: text, comments and CDATA sections, as
 * libplist's get_text_parts reads it. Every comment and CDATA section becomes a separate piece
 * (an allocation) in libplist, so each counts as a node.
 */
static int text(struct xs *s, enum el el)
{
    for (;;) {
        const char *lt = memchr(s->p, '<', (size_t)(s->end - s->p));
        if (lt == NULL)
            return malformed(s, "unterminated value");
        int rc = pl_meter_text(s->m, (size_t)(lt - s->p));
        if (rc != 0)
            return rc;
        s->p = lt;
        if (starts(s, "</"))
            return close_tag(s, el);
        if (starts(s, "<!--")) {
            rc = skip_comment(s);
        } else if (starts(s, "<![CDATA[")) {
            const char *from = s->p + 9;
            const char *q = memmem(from, (size_t)(s->end - from), "]]>", 3);
            if (q == NULL)
                return malformed(s, "unterminated CDATA section");
            rc = pl_meter_text(s->m, (size_t)(q - from));
            s->p = q + 3;
        } else {
            return malformed(s, "markup inside a value");
        }
        if (rc == 0)
            rc = pl_meter_nodes(s->m, 1);
        if (rc != 0)
            return rc;
    }
}

/* "</dict>" or "</array>" of the innermost open container. */
static int close_container(struct xs *s)
{
    unsigned d = s->depth - 1;
    int rc = close_tag(s, s->is_dict[d] ? EL_DICT : EL_ARRAY);
    if (rc != 0)
        return rc;
    if (s->is_dict[d] && s->has_key[d])
        return malformed(s, "key without a value");
    if (s->is_dict[d] && s->keys[d] > s->m->u->max_keys)
        s->m->u->max_keys = s->keys[d];
    s->depth--;
    return 0;
}

static int dict_key(struct xs *s, int empty)
{
    if (s->depth == 0 || !s->is_dict[s->depth - 1] || s->has_key[s->depth - 1] || empty)
        return malformed(s, "<key> out of place");
    unsigned d = s->depth - 1;
    if (++s->keys[d] > s->m->b->max_keys)
        return pl_refuse(s->m, PL_BUDGET_TOO_WIDE, "plist dictionary with more than %zu keys",
                         s->m->b->max_keys);
    s->has_key[d] = 1;
    int rc = pl_meter_nodes(s->m, 1);
    return rc != 0 ? rc : text(s, EL_KEY);
}

/* The root value and everything in it, iteratively (the stack is s->is_dict & co.). */
static int value_tree(struct xs *s)
{
    for (;;) {
        int rc = s->depth ? skip_misc(s, NULL) : 0;
        if (rc != 0)
            return rc;
        if (s->p >= s->end || *s->p != '<')
            return malformed(s, "expected an element");
        if (starts(s, "</")) {
            if (s->depth == 0)
                return malformed(s, "unexpected closing tag");
            if ((rc = close_container(s)) != 0)
                return rc;
            if (s->depth == 0)
                return 0;
            continue;
        }
        enum el el = EL_PLIST;
        int empty = 0;
        if ((rc = open_tag(s, &el, &empty)) != 0)
            return rc;
        if (el == EL_KEY) {
            if ((rc = dict_key(s, empty)) != 0)
                return rc;
            continue;
        }
        if (s->depth && s->is_dict[s->depth - 1]) {
            if (!s->has_key[s->depth - 1])
                return malformed(s, "dictionary value without a key");
            s->has_key[s->depth - 1] = 0;
        }
        if ((rc = pl_meter_nodes(s->m, 1)) != 0)
            return rc;
        if (el == EL_DICT || el == EL_ARRAY) {
            if (s->depth + 1 > s->m->b->max_depth)
                return pl_refuse(s->m, PL_BUDGET_TOO_DEEP, "plist nested deeper than %u",
                                 s->m->b->max_depth);
            if (s->depth + 1 > s->m->u->depth)
                s->m->u->depth = s->depth + 1;
            if (!empty) {
                s->is_dict[s->depth] = el == EL_DICT;
                s->has_key[s->depth] = 0;
                s->keys[s->depth] = 0;
                s->depth++;
                continue;
            }
        } else if (!empty && (rc = text(s, el)) != 0) {
            return rc;
        }
        if (s->depth == 0)
            return 0;
    }
}

int pl_budget_check_xml(struct pl_meter *m, const char *data, size_t len)
{
    struct xs s = {.m = m, .begin = data, .p = data, .end = data + len};
    int doctype = 1, wrapped = 0, rc;
    if (memchr(data, '\0', len) != NULL)
        return malformed(&s, "NUL byte");
    if ((rc = skip_misc(&s, &doctype)) != 0)
        return rc;
    if (starts(&s, "<plist") && s.p + 6 < s.end && !is_letter(s.p[6])) {
        s.p += 6;
        if ((rc = plist_attributes(&s)) != 0 || (rc = skip_misc(&s, NULL)) != 0)
            return rc;
        wrapped = 1;
    }
    if ((rc = value_tree(&s)) != 0 || (rc = skip_misc(&s, NULL)) != 0)
        return rc;
    if (wrapped) {
        if (!starts(&s, "</"))
            return malformed(&s, "missing </plist>");
        if ((rc = close_tag(&s, EL_PLIST)) != 0 || (rc = skip_misc(&s, NULL)) != 0)
            return rc;
    }
    if (s.p != s.end)
        return malformed(&s, "content after the root element");
    return 0;
}
