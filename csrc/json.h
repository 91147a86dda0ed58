/* A small, strict JSON reader for the C ABI (safetensors headers, architecture and options
 * text). It parses untrusted input: every read is bounds-checked, nesting is limited, numbers
 * follow RFC 8259's grammar exactly, strings may not hold raw control characters, \u escapes
 * must be well formed (surrogates paired), duplicate object keys and trailing text are errors.
 * All memory of a document is freed at once by json_free. */
#ifndef FASTNN_JSON_H
#define FASTNN_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef enum { JSON_NULL, JSON_FALSE, JSON_TRUE, JSON_NUMBER, JSON_STRING, JSON_ARRAY,
               JSON_OBJECT } json_type;

typedef struct json_value {
    json_type type;
    double num;            /* JSON_NUMBER */
    int is_int;            /* JSON_NUMBER: an integer literal that fits int64 (then in ival) */
    int64_t ival;
    const char *str;       /* JSON_STRING: UTF-8, NUL-terminated (may hold \0 escapes: see len) */
    size_t len;
    size_t n;              /* JSON_ARRAY / JSON_OBJECT: number of items */
    struct json_value *items;
    const char **keys;     /* JSON_OBJECT: keys[i] names items[i] */
} json_value;

typedef struct json_doc json_doc;

#define JSON_MAX_DEPTH 32

/* Parse text[0:len]. Returns NULL on error (no memory, or bad text: then err, if given, holds
 * a message with the byte offset). */
json_doc *json_parse(const char *text, size_t len, char *err, size_t errlen);
const json_value *json_root(const json_doc *doc);
void json_free(json_doc *doc);

/* Numbers are read and written in the "C" locale whatever the host program set with
 * setlocale (a decimal comma would corrupt the text): json_parse switches the calling
 * thread's locale for its duration; writers bracket their printf calls with these. */
void *json_c_locale_push(void);
void json_c_locale_pop(void *saved);

/* The member named key of an object, or NULL (also when v is not an object). */
const json_value *json_get(const json_value *v, const char *key);

#endif
