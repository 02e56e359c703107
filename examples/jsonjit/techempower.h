/*
 * The objects of the TechEmpower "json" and "queries" tests, and their descriptors: shared by the
 * demo and the tests, so both encode exactly the same thing.
 */
#ifndef JSONJIT_TECHEMPOWER_H
#define JSONJIT_TECHEMPOWER_H

#include <stdint.h>

#include "json.h"

/* "json": {"message":"Hello, World!"}. */
struct hello {
    const char *message;
};

/* "queries": an array of World rows {"id":int,"randomNumber":int}. */
struct world {
    int32_t id;
    int32_t random_number;
};

extern const struct json_field world_fields[2];
/* Not const: compiling a schema records its code in it. */
extern struct json_schema hello_schema;
extern struct json_schema world_schema;

#endif
