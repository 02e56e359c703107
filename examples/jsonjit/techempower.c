/*
 * The descriptors of the TechEmpower objects (techempower.h).
 */
#include <stddef.h>

#include "techempower.h"

static const struct json_field hello_fields[] = {
    {.name = "message", .offset = offsetof(struct hello, message), .type = JT_STRING},
};

struct json_schema hello_schema = {
    .name = "hello", .size = sizeof(struct hello), .nfields = 1, .fields = hello_fields};

const struct json_field world_fields[2] = {
    {.name = "id", .offset = offsetof(struct world, id), .type = JT_INT32},
    {.name = "randomNumber", .offset = offsetof(struct world, random_number), .type = JT_INT32},
};

struct json_schema world_schema = {
    .name = "world", .size = sizeof(struct world), .nfields = 2, .fields = world_fields};
