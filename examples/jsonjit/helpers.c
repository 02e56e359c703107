/*
 * The output buffer and the value writers both encoders call. The JIT reaches these with
 * call rel32 or bl, so they are plain functions of the platform's C ABI: position in, position
 * out.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

int json_buf_init(struct json_buf *out, size_t cap)
{
    /* At least one byte, so that data is never NULL and positions are always inside an object. */
    if (cap == 0)
        cap = 1;
    out->data = malloc(cap);
    if (out->data == NULL) {
        errno = ENOMEM;
        return -1;
    }
    out->len = 0;
    out->cap = cap;
    out->limit = 0;
    return 0;
}

void json_buf_release(struct json_buf *out)
{
    free(out->data);
    out->data = NULL;
    out->len = out->cap = 0;
}

char *json_buf_reserve(struct json_buf *out, char *p, size_t n)
{
    size_t used = (size_t)(p - out->data);
    if (out->cap - used >= n)
        return p;
    if (n > SIZE_MAX / 2 - used) {
        errno = ENOMEM;
        return NULL;
    }
    size_t need = used + n;
    if (out->limit != 0 && need > out->limit) {
        errno = ENOBUFS;
        return NULL;
    }
    /* Doubling keeps the number of reallocations logarithmic in the output size. */
    size_t cap = out->cap < 64 ? 64 : out->cap;
    while (cap < need)
        cap *= 2;
    if (out->limit != 0 && cap > out->limit)
        cap = out->limit;
    char *data = realloc(out->data, cap);
    if (data == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    out->data = data;
    out->cap = cap;
    return data + used;
}

/* "00" "01" ... "99": two digits per division halves the number of divisions. */
static const char digit_pairs[201] = "00010203040506070809"
                                     "10111213141516171819"
                                     "20212223242526272829"
                                     "30313233343536373839"
                                     "40414243444546474849"
                                     "50515253545556575859"
                                     "60616263646566676869"
                                     "70717273747576777879"
                                     "80818283848586878889"
                                     "90919293949596979899";

static unsigned digits_u32(uint32_t v)
{
    unsigned n = 1;
    for (;;) {
        if (v < 10)
            return n;
        if (v < 100)
            return n + 1;
        if (v < 1000)
            return n + 2;
        if (v < 10000)
            return n + 3;
        v /= 10000;
        n += 4;
    }
}

static unsigned digits_u64(uint64_t v)
{
    unsigned n = 0;
    while (v > UINT32_MAX) {
        v /= 10000;
        n += 4;
    }
    return n + digits_u32((uint32_t)v);
}

/* Writes the digits backwards from the end, which the digit count gives up front. 32-bit
 * divisions are much cheaper than 64-bit ones, hence two versions. */
static char *put_u32(char *p, uint32_t v)
{
    char *end = p + digits_u32(v);
    char *q = end;
    while (v >= 100) {
        uint32_t r = v % 100;
        v /= 100;
        q -= 2;
        memcpy(q, digit_pairs + 2 * r, 2);
    }
    if (v >= 10)
        memcpy(q - 2, digit_pairs + 2 * v, 2);
    else
        q[-1] = (char)('0' + v);
    return end;
}

char *json_put_u64(char *p, uint64_t v)
{
    if (v <= UINT32_MAX)
        return put_u32(p, (uint32_t)v);
    char *end = p + digits_u64(v);
    char *q = end;
    while (v >= 100) {
        uint64_t r = v % 100;
        v /= 100;
        q -= 2;
        memcpy(q, digit_pairs + 2 * r, 2);
    }
    if (v >= 10)
        memcpy(q - 2, digit_pairs + 2 * v, 2);
    else
        q[-1] = (char)('0' + v);
    return end;
}

char *json_put_i32(char *p, int32_t v)
{
    /* Negating in unsigned arithmetic is exact for INT32_MIN too. */
    uint32_t u = (uint32_t)v;
    if (v < 0) {
        *p++ = '-';
        u = 0u - u;
    }
    return put_u32(p, u);
}

char *json_put_i64(char *p, int64_t v)
{
    uint64_t u = (uint64_t)v;
    if (v < 0) {
        *p++ = '-';
        u = 0u - u;
    }
    return json_put_u64(p, u);
}

char *json_put_double(char *p, double v)
{
    /* JSON has no NaN or infinity; null is what JSON.stringify writes for them. */
    if (!isfinite(v)) {
        memcpy(p, "null", 4);
        return p + 4;
    }
    /* 17 significant digits always read back to the same double; fewer usually do and read
     * better (0.1 rather than 0.10000000000000001), so take the first of 15, 16, 17 that does. */
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(p, JSON_DOUBLE_MAX, "%.*g", prec, v);
        if (strtod(p, NULL) == v)
            break;
    }
    return p + n;
}

/* 1 for the bytes a JSON string holds as they are: everything but the quote, the backslash and
 * the control characters (NUL included, which ends the string). One load per byte instead of
 * three comparisons. */
/* clang-format off */
static const unsigned char plain_byte[256] = {
    ['\x20'] = 1, 1, 0 /* '"' */, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x20 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,                     /* 0x30 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,                     /* 0x40 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0 /* '\\' */, 1, 1, 1,           /* 0x50 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,                     /* 0x60 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,                     /* 0x70 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,                     /* 0x80 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,                     /* 0x90 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,                     /* 0xa0 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,                     /* 0xb0 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,                     /* 0xc0 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,                     /* 0xd0 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,                     /* 0xe0 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,                     /* 0xf0 */
};
/* clang-format on */

/* True when none of the 8 bytes of w needs escaping, tested all at once: the classic "has a
 * byte less than n" and "has a zero byte" word tricks (exact for the word as a whole). */
static bool plain_word(uint64_t w)
{
    const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
    uint64_t quote = w ^ (ones * '"'), backslash = w ^ (ones * '\\');
    uint64_t special =
        ((w - ones * 0x20) & ~w) | ((quote - ones) & ~quote) | ((backslash - ones) & ~backslash);
    return (special & highs) == 0;
}

/* At most 6 bytes. */
static char *put_escape(char *p, unsigned char c)
{
    static const char hex[] = "0123456789abcdef";
    char shorter = 0;
    switch (c) {
    case '"':
        shorter = '"';
        break;
    case '\\':
        shorter = '\\';
        break;
    case '\b':
        shorter = 'b';
        break;
    case '\f':
        shorter = 'f';
        break;
    case '\n':
        shorter = 'n';
        break;
    case '\r':
        shorter = 'r';
        break;
    case '\t':
        shorter = 't';
        break;
    }
    if (shorter != 0) {
        p[0] = '\\';
        p[1] = shorter;
        return p + 2;
    }
    memcpy(p, "\\u00", 4);
    p[4] = hex[c >> 4];
    p[5] = hex[c & 15];
    return p + 6;
}

char *json_put_string(struct json_buf *out, char *p, const char *s)
{
    if (s == NULL) {
        p = json_buf_room(out, p, 4);
        if (p == NULL)
            return NULL;
        memcpy(p, "null", 4);
        return p + 4;
    }
    /* Most strings need no escaping: one reservation (strlen is vectorised) covers them and their
     * quotes. Each escape then reserves its own bytes and the rest of the string again. */
    size_t len = strlen(s);
    const unsigned char *u = (const unsigned char *)s, *end = u + len;
    p = json_buf_room(out, p, len + 2);
    if (p == NULL)
        return NULL;
    *p++ = '"';
    for (;;) {
        /* Eight bytes at a time while they need no escaping, then one at a time up to the next
         * byte that does. Loads stay inside the string: no read past its end. */
        uint64_t w;
        while (end - u >= 8 && (memcpy(&w, u, 8), plain_word(w))) {
            memcpy(p, &w, 8);
            p += 8;
            u += 8;
        }
        while (u < end && plain_byte[*u])
            *p++ = (char)*u++;
        if (u == end)
            break;
        p = json_buf_room(out, p, 6 + (size_t)(end - u - 1) + 1);
        if (p == NULL)
            return NULL;
        p = put_escape(p, *u++);
    }
    *p++ = '"';
    return p;
}

size_t json_value_max(enum json_field_type type)
{
    switch (type) {
    case JT_INT32:
        return JSON_INT32_MAX;
    case JT_INT64:
    case JT_UINT64:
        return JSON_INT64_MAX;
    case JT_DOUBLE:
        return JSON_DOUBLE_MAX;
    case JT_BOOL:
        return JSON_BOOL_MAX;
    default:
        return 0;
    }
}

char *json_put_i32_array(struct json_buf *out, char *p, const int32_t *v, size_t n)
{
    /* Each reservation also covers the closing bracket, so "[]" and the last "]" need none. */
    p = json_buf_room(out, p, 2);
    if (p == NULL)
        return NULL;
    *p++ = '[';
    for (size_t i = 0; i < n; i++) {
        p = json_buf_room(out, p, JSON_INT32_MAX + 2);
        if (p == NULL)
            return NULL;
        if (i != 0)
            *p++ = ',';
        p = json_put_i32(p, v[i]);
    }
    *p++ = ']';
    return p;
}

char *json_put_i64_array(struct json_buf *out, char *p, const int64_t *v, size_t n)
{
    p = json_buf_room(out, p, 2);
    if (p == NULL)
        return NULL;
    *p++ = '[';
    for (size_t i = 0; i < n; i++) {
        p = json_buf_room(out, p, JSON_INT64_MAX + 2);
        if (p == NULL)
            return NULL;
        if (i != 0)
            *p++ = ',';
        p = json_put_i64(p, v[i]);
    }
    *p++ = ']';
    return p;
}
