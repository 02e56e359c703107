/*
 * The interpreter: walks a schema's fields on every call and dispatches on their type. It shares
 * every value writer with the JIT (helpers.c), so the two differ only in what the JIT removes:
 * the loop over fields, the switch, escaping the keys and one capacity check per field.
 */
#include <errno.h>
#include <string.h>

#include "json.h"

static char *interp_object(const struct json_schema *s, const char *obj, struct json_buf *out,
                           char *p);

static char *interp_array(const struct json_schema *s, const char *objs, size_t n,
                          struct json_buf *out, char *p)
{
    p = json_buf_room(out, p, 1);
    if (p == NULL)
        return NULL;
    *p++ = '[';
    for (size_t i = 0; i < n; i++) {
        if (i != 0) {
            p = json_buf_room(out, p, 1);
            if (p == NULL)
                return NULL;
            *p++ = ',';
        }
        p = interp_object(s, objs + i * s->size, out, p);
        if (p == NULL)
            return NULL;
    }
    p = json_buf_room(out, p, 1);
    if (p == NULL)
        return NULL;
    *p++ = ']';
    return p;
}

static char *interp_value(const struct json_field *f, const char *obj, struct json_buf *out,
                          char *p)
{
    const char *at = obj + f->offset;
    size_t count;
    p = json_buf_room(out, p, json_value_max(f->type));
    if (p == NULL)
        return NULL;
    switch (f->type) {
    case JT_INT32: {
        int32_t v;
        memcpy(&v, at, sizeof v);
        return json_put_i32(p, v);
    }
    case JT_INT64: {
        int64_t v;
        memcpy(&v, at, sizeof v);
        return json_put_i64(p, v);
    }
    case JT_UINT64: {
        uint64_t v;
        memcpy(&v, at, sizeof v);
        return json_put_u64(p, v);
    }
    case JT_DOUBLE: {
        double v;
        memcpy(&v, at, sizeof v);
        return json_put_double(p, v);
    }
    case JT_BOOL: {
        bool v;
        memcpy(&v, at, sizeof v);
        memcpy(p, v ? "true" : "false", v ? 4 : 5);
        return p + (v ? 4 : 5);
    }
    case JT_STRING: {
        const char *v;
        memcpy(&v, at, sizeof v);
        return json_put_string(out, p, v);
    }
    case JT_OBJECT:
        return interp_object(f->schema, at, out, p);
    case JT_ARRAY_OBJECT:
    case JT_ARRAY_INT32:
    case JT_ARRAY_INT64: {
        const void *v;
        memcpy(&v, at, sizeof v);
        memcpy(&count, obj + f->count_offset, sizeof count);
        if (f->type == JT_ARRAY_OBJECT)
            return interp_array(f->schema, v, count, out, p);
        if (f->type == JT_ARRAY_INT32)
            return json_put_i32_array(out, p, v, count);
        return json_put_i64_array(out, p, v, count);
    }
    }
    errno = EINVAL;
    return NULL;
}

static char *interp_object(const struct json_schema *s, const char *obj, struct json_buf *out,
                           char *p)
{
    p = json_buf_room(out, p, 1);
    if (p == NULL)
        return NULL;
    *p++ = '{';
    for (size_t i = 0; i < s->nfields; i++) {
        const struct json_field *f = &s->fields[i];
        if (i != 0) {
            p = json_buf_room(out, p, 1);
            if (p == NULL)
                return NULL;
            *p++ = ',';
        }
        /* Keys are strings like any other: escaped with the same writer, on every call. */
        p = json_put_string(out, p, f->name);
        if (p == NULL)
            return NULL;
        p = json_buf_room(out, p, 1);
        if (p == NULL)
            return NULL;
        *p++ = ':';
        p = interp_value(f, obj, out, p);
        if (p == NULL)
            return NULL;
    }
    p = json_buf_room(out, p, 1);
    if (p == NULL)
        return NULL;
    *p++ = '}';
    return p;
}

int json_interp_encode(const struct json_schema *s, const void *obj, struct json_buf *out)
{
    char *p = interp_object(s, obj, out, out->data + out->len);
    if (p == NULL)
        return -1;
    out->len = (size_t)(p - out->data);
    return 0;
}

int json_interp_encode_array(const struct json_schema *s, const void *objs, size_t n,
                             struct json_buf *out)
{
    char *p = interp_array(s, objs, n, out, out->data + out->len);
    if (p == NULL)
        return -1;
    out->len = (size_t)(p - out->data);
    return 0;
}
