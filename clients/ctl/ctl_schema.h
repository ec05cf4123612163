/* ctl_schema: lagoonctl's view of an IDL, read at run time from a serialized
 * google.protobuf.FileDescriptorSet (the one built into lagoonctl, or the server's, from
 * Reflection/GetSchema), and JSON <-> protobuf for its messages in protobuf's canonical JSON
 * mapping (proto3).
 *
 * The descriptor set is walked with nanopb's stream functions (pb_decode_tag, pb_decode_varint,
 * sub-streams): no generated structs, nothing trusted. Everything returned points into the
 * ctl_schema and lives until ctl_schema_free. */
#ifndef LAGOON_CTL_SCHEMA_H
#define LAGOON_CTL_SCHEMA_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* What ctl_schema_load accepts: a larger set is refused rather than walked. */
#define CTL_SCHEMA_MAX_BYTES (16u * 1024 * 1024)
#define CTL_SCHEMA_MAX_NESTING 32 /* messages within messages, in the descriptors and in JSON */

/* google.protobuf.FieldDescriptorProto.Type */
enum ctl_type {
    CTL_TYPE_DOUBLE = 1,
    CTL_TYPE_FLOAT = 2,
    CTL_TYPE_INT64 = 3,
    CTL_TYPE_UINT64 = 4,
    CTL_TYPE_INT32 = 5,
    CTL_TYPE_FIXED64 = 6,
    CTL_TYPE_FIXED32 = 7,
    CTL_TYPE_BOOL = 8,
    CTL_TYPE_STRING = 9,
    CTL_TYPE_GROUP = 10,
    CTL_TYPE_MESSAGE = 11,
    CTL_TYPE_BYTES = 12,
    CTL_TYPE_UINT32 = 13,
    CTL_TYPE_ENUM = 14,
    CTL_TYPE_SFIXED32 = 15,
    CTL_TYPE_SFIXED64 = 16,
    CTL_TYPE_SINT32 = 17,
    CTL_TYPE_SINT64 = 18,
};

typedef struct ctl_enum_value {
    const char *name;
    int32_t number;
} ctl_enum_value;

typedef struct ctl_enum {
    const char *full_name; /* "lagoon.v1.Role" (no leading dot) */
    const ctl_enum_value *values;
    size_t nvalues;
} ctl_enum;

typedef struct ctl_message ctl_message;

typedef struct ctl_field {
    const char *name;      /* as written in the .proto: "recipient_id" */
    const char *json_name; /* lowerCamelCase: "recipientId" (json_name, else computed) */
    uint32_t number;
    int type;              /* enum ctl_type */
    int repeated;          /* LABEL_REPEATED */
    int32_t oneof_index;   /* index into the message's oneofs; -1: not in a oneof */
    int proto3_optional;   /* `optional` in proto3 (its oneof is synthetic) */
    const char *type_name; /* message and enum fields: "lagoon.v1.TextContent"; else NULL */
    const ctl_message *message;   /* CTL_TYPE_MESSAGE: resolved */
    const ctl_enum *enumeration;  /* CTL_TYPE_ENUM: resolved */
    /* (lagoon.v1.bounds), options.proto: 0 = not bounded that way. */
    uint32_t max_length, max_size, max_count;
} ctl_field;

struct ctl_message {
    const char *full_name; /* "lagoon.v1.SendMessageRequest" */
    const ctl_field *fields; /* in declaration order */
    size_t nfields;
    const char *const *oneofs; /* names of its oneofs (synthetic ones of proto3 optional too) */
    size_t noneofs;
    int map_entry;         /* a map<K, V> field's entry type (key = 1, value = 2) */
};

typedef struct ctl_method {
    const char *path;      /* "/lagoon.v1.Messages/Send": what the wire's method id hashes */
    const char *service;   /* "lagoon.v1.Messages" */
    const char *name;      /* "Send" */
    const ctl_message *input, *output;
    int client_streaming, server_streaming;
    int access;            /* (lagoon.v1.access) option (lagoon.v1.Access); -1 when absent */
    int idempotent;        /* (lagoon.v1.idempotent) option */
} ctl_method;

typedef struct ctl_schema ctl_schema;

/* Reads the serialized FileDescriptorSet data[len] (copied as needed: data may go after).
 * 0 with *out, or -1 with a message in err[cap] (malformed descriptors, a type name that
 * resolves to nothing, a size over CTL_SCHEMA_MAX_BYTES). */
int ctl_schema_load(const uint8_t *data, size_t len, ctl_schema **out, char *err, size_t cap);
void ctl_schema_free(ctl_schema *s);

/* Every method of every service, in file and declaration order. */
size_t ctl_schema_methods(const ctl_schema *s, const ctl_method *const **out);

/* A method by "/pkg.Service/Method", "pkg.Service/Method", "pkg.Service.Method", or
 * "Service/Method" / "Service.Method" when only one package has it. NULL if none. */
const ctl_method *ctl_schema_method(const ctl_schema *s, const char *name);

/* A message or an enum by full name (a leading dot allowed), or by its name without the
 * package when that is unique. NULL if none. */
const ctl_message *ctl_schema_message(const ctl_schema *s, const char *name);
const ctl_enum *ctl_schema_enum(const ctl_schema *s, const char *name);

/* ---- JSON <-> protobuf ------------------------------------------------------------------ */

typedef struct ctl_buf {
    uint8_t *data;
    size_t len, cap;
} ctl_buf;

void ctl_buf_free(ctl_buf *b);

/* Encodes the JSON object j as a message of type m, appending its bytes to out. Accepted, as
 * protobuf's JSON mapping does: field names in lowerCamelCase or as in the .proto; 64-bit
 * integers as strings or numbers, other integers as numbers (or strings of digits); enums by
 * name or number; bytes as base64 (standard or URL-safe, padding optional); repeated fields as
 * arrays, maps as objects; null for a field means its default; at most one member of a oneof.
 * 0, or -1 with err[cap] naming the field by its dotted path of JSON names, as the JSON nests
 * ("text.text: expected a string", "senderEventSeqs[1]: ..."; an unknown field: "unknown field
 * \"x\" in lagoon.v1.Foo", after the path of the message holding it); out is then as it was. */
int ctl_json_encode(const ctl_message *m, const json_t *j, ctl_buf *out, char *err, size_t cap);

/* Decodes data[len] as a message of type m into a new JSON object: lowerCamelCase names,
 * fields at their default left out (proto3), 64-bit integers as strings, enums by name (a
 * number for a value the schema does not know), bytes as standard base64, fields in number
 * order, unknown fields skipped. NULL with err[cap] when the bytes are malformed. */
json_t *ctl_json_decode(const ctl_message *m, const uint8_t *data, size_t len, char *err, size_t cap);

#endif
