/* The strict JSON reader (see json.h). */
#define _GNU_SOURCE   /* newlocale, uselocale */
#include "json.h"

#include <errno.h>
#include <locale.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct json_doc {
    void **blocks;        /* every allocation of the document */
    size_t nblocks, cap;
    json_value root;
};

typedef struct {
    const char *p, *start, *end;
    json_doc *doc;
    int depth;
    char *err;
    size_t errlen;
    int failed;
} parser;

static void fail(parser *ps, const char *what) {
    if (ps->failed) return;
    ps->failed = 1;
    if (ps->err && ps->errlen)
        snprintf(ps->err, ps->errlen, "%s at byte %zu", what, (size_t)(ps->p - ps->start));
}

static void *doc_alloc(parser *ps, size_t bytes) {
    json_doc *d = ps->doc;
    if (d->nblocks == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 16;
        void **b = realloc(d->blocks, cap * sizeof *b);
        if (!b) { fail(ps, "out of memory"); return NULL; }
        d->blocks = b, d->cap = cap;
    }
    void *m = malloc(bytes ? bytes : 1);
    if (!m) { fail(ps, "out of memory"); return NULL; }
    d->blocks[d->nblocks++] = m;
    return m;
}

static void skip_ws(parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int literal(parser *ps, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) return 0;
    ps->p += n;
    return 1;
}

static int hex4(parser *ps, unsigned *out) {
    if (ps->end - ps->p < 4) return 0;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = ps->p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    ps->p += 4;
    *out = v;
    return 1;
}

/* A string starting at the opening quote. UTF-8 output is never longer than the input. */
static int parse_string(parser *ps, const char **out, size_t *outlen) {
    const char *q = ps->p + 1;
    size_t raw = 0;
    /* find the closing quote first, to size the buffer */
    while (q + raw < ps->end && q[raw] != '"') {
        if (q[raw] == '\\') raw++;
        raw++;
    }
    if (q + raw >= ps->end) { fail(ps, "unterminated string"); return 0; }
    char *buf = doc_alloc(ps, raw + 1), *w = buf;
    if (!buf) return 0;
    ps->p++;
    while (*ps->p != '"') {
        unsigned char c = (unsigned char)*ps->p;
        if (c < 0x20) { fail(ps, "control character in string"); return 0; }
        if (c != '\\') { *w++ = (char)c; ps->p++; continue; }
        ps->p++;   /* the escape letter exists: the scan above saw a character after '\' */
        char e = *ps->p++;
        switch (e) {
        case '"': *w++ = '"'; break;
        case '\\': *w++ = '\\'; break;
        case '/': *w++ = '/'; break;
        case 'b': *w++ = '\b'; break;
        case 'f': *w++ = '\f'; break;
        case 'n': *w++ = '\n'; break;
        case 'r': *w++ = '\r'; break;
        case 't': *w++ = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (!hex4(ps, &cp)) { fail(ps, "bad \\u escape"); return 0; }
            if (cp >= 0xDC00 && cp <= 0xDFFF) { fail(ps, "unpaired low surrogate"); return 0; }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u') {
                    fail(ps, "unpaired high surrogate");
                    return 0;
                }
                ps->p += 2;
                if (!hex4(ps, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
                    fail(ps, "bad surrogate pair");
                    return 0;
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            /* 6 input bytes (12 for a pair) always cover the 1-4 output bytes */
            if (cp < 0x80) *w++ = (char)cp;
            else if (cp < 0x800) {
                *w++ = (char)(0xC0 | (cp >> 6));
                *w++ = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                *w++ = (char)(0xE0 | (cp >> 12));
                *w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *w++ = (char)(0x80 | (cp & 0x3F));
            } else {
                *w++ = (char)(0xF0 | (cp >> 18));
                *w++ = (char)(0x80 | ((cp >> 12) & 0x3F));
                *w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *w++ = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default: fail(ps, "bad escape in string"); return 0;
        }
    }
    ps->p++;   /* closing quote */
    *w = '\0';
    *out = buf;
    *outlen = (size_t)(w - buf);
    return 1;
}

static int is_digit(const parser *ps) { return ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9'; }

static int parse_number(parser *ps, json_value *v) {
    const char *s = ps->p;
    int integer = 1;
    if (ps->p < ps->end && *ps->p == '-') ps->p++;
    if (!is_digit(ps)) { fail(ps, "bad number"); return 0; }
    if (*ps->p == '0') ps->p++;
    else while (is_digit(ps)) ps->p++;
    if (ps->p < ps->end && *ps->p == '.') {
        integer = 0;
        ps->p++;
        if (!is_digit(ps)) { fail(ps, "bad number"); return 0; }
        while (is_digit(ps)) ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        integer = 0;
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
        if (!is_digit(ps)) { fail(ps, "bad number"); return 0; }
        while (is_digit(ps)) ps->p++;
    }
    size_t n = (size_t)(ps->p - s);
    char tmp[64];
    if (n >= sizeof tmp) { fail(ps, "number too long"); return 0; }
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    v->type = JSON_NUMBER;
    v->num = strtod(tmp, NULL);
    v->is_int = 0;
    if (integer) {
        errno = 0;
        long long x = strtoll(tmp, NULL, 10);
        if (errno == 0) v->is_int = 1, v->ival = (int64_t)x;
    }
    return 1;
}

static int parse_value(parser *ps, json_value *v);

/* Items of an array or object, grown in a scratch buffer, then moved into the document. */
static int parse_container(parser *ps, json_value *v, int object) {
    char close = object ? '}' : ']';
    size_t n = 0, cap = 0;
    json_value *items = NULL;
    const char **keys = NULL;
    int ok = 0;
    if (++ps->depth > JSON_MAX_DEPTH) { fail(ps, "nesting too deep"); goto done; }
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) { ps->p++; ok = 1; goto done; }
    for (;;) {
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 8;
            json_value *ni = realloc(items, nc * sizeof *ni);
            if (!ni) { fail(ps, "out of memory"); goto done; }
            items = ni;
            if (object) {
                const char **nk = realloc(keys, nc * sizeof *nk);
                if (!nk) { fail(ps, "out of memory"); goto done; }
                keys = nk;
            }
            cap = nc;
        }
        skip_ws(ps);
        if (object) {
            size_t klen;
            if (ps->p >= ps->end || *ps->p != '"') { fail(ps, "expected a string key"); goto done; }
            if (!parse_string(ps, &keys[n], &klen)) goto done;
            if (strlen(keys[n]) != klen) { fail(ps, "NUL in a key"); goto done; }
            for (size_t i = 0; i < n; i++)
                if (strcmp(keys[i], keys[n]) == 0) { fail(ps, "duplicate key"); goto done; }
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') { fail(ps, "expected ':'"); goto done; }
            ps->p++;
            skip_ws(ps);
        }
        if (!parse_value(ps, &items[n])) goto done;
        n++;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
        if (ps->p < ps->end && *ps->p == close) { ps->p++; break; }
        fail(ps, object ? "expected ',' or '}'" : "expected ',' or ']'");
        goto done;
    }
    v->items = doc_alloc(ps, n * sizeof *items);
    if (!v->items) goto done;
    memcpy(v->items, items, n * sizeof *items);
    if (object) {
        v->keys = doc_alloc(ps, n * sizeof *keys);
        if (!v->keys) goto done;
        memcpy(v->keys, keys, n * sizeof *keys);
    }
    ok = 1;
done:
    if (ok) v->n = n;
    v->type = object ? JSON_OBJECT : JSON_ARRAY;
    free(items);
    free(keys);
    ps->depth--;
    return ok;
}

static int parse_value(parser *ps, json_value *v) {
    memset(v, 0, sizeof *v);
    skip_ws(ps);
    if (ps->p >= ps->end) { fail(ps, "unexpected end of text"); return 0; }
    switch (*ps->p) {
    case '{': return parse_container(ps, v, 1);
    case '[': return parse_container(ps, v, 0);
    case '"': v->type = JSON_STRING; return parse_string(ps, &v->str, &v->len);
    case 't': v->type = JSON_TRUE; if (literal(ps, "true")) return 1; break;
    case 'f': v->type = JSON_FALSE; if (literal(ps, "false")) return 1; break;
    case 'n': v->type = JSON_NULL; if (literal(ps, "null")) return 1; break;
    default: return parse_number(ps, v);
    }
    fail(ps, "bad literal");
    return 0;
}

typedef struct { locale_t c, old; } saved_locale;

void *json_c_locale_push(void) {
    saved_locale *s = malloc(sizeof *s);
    if (!s) return NULL;
    s->c = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    if (s->c == (locale_t)0) {
        free(s);
        return NULL;   /* keep the current locale */
    }
    s->old = uselocale(s->c);
    return s;
}

void json_c_locale_pop(void *saved) {
    saved_locale *s = saved;
    if (!s) return;
    uselocale(s->old);
    freelocale(s->c);
    free(s);
}

static json_doc *parse(const char *text, size_t len, char *err, size_t errlen);

json_doc *json_parse(const char *text, size_t len, char *err, size_t errlen) {
    void *saved = json_c_locale_push();
    json_doc *d = parse(text, len, err, errlen);
    json_c_locale_pop(saved);
    return d;
}

static json_doc *parse(const char *text, size_t len, char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (!text) {
        if (err && errlen) snprintf(err, errlen, "no text (NULL)");
        return NULL;
    }
    json_doc *d = calloc(1, sizeof *d);
    if (!d) {
        if (err && errlen) snprintf(err, errlen, "out of memory");
        return NULL;
    }
    parser ps = {text, text, text + len, d, 0, err, errlen, 0};
    if (parse_value(&ps, &d->root)) {
        skip_ws(&ps);
        if (ps.p == ps.end) return d;
        fail(&ps, "trailing text after the JSON value");
    }
    json_free(d);
    return NULL;
}

const json_value *json_root(const json_doc *doc) { return doc ? &doc->root : NULL; }

void json_free(json_doc *doc) {
    if (!doc) return;
    for (size_t i = 0; i < doc->nblocks; i++) free(doc->blocks[i]);
    free(doc->blocks);
    free(doc);
}

const json_value *json_get(const json_value *v, const char *key) {
    if (!v || v->type != JSON_OBJECT) return NULL;
    for (size_t i = 0; i < v->n; i++)
        if (strcmp(v->keys[i], key) == 0) return &v->items[i];
    return NULL;
}
