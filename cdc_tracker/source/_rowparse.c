/* The common wal2json format-2 row, a change (I, U or D), decoded in one pass.
 *
 * change(data) returns (action, schema, table, lsn, new, old, types, key) for a
 * row of the shape wal2json writes for a change, and None for anything else:
 * another action (B, C, M, T), a key we do not expect, a nested value, an integer
 * too long for Python's limit, invalid JSON or UTF-8. The caller then decodes the
 * row with msgspec, which takes every row and names every error: this file only
 * has to be exact where it answers, never complete.
 *
 * What it answers is what wal2json.py's msgspec path makes of the same row:
 * strings as str, integers as int, any number with a fraction or an exponent as
 * Decimal of its text (never through a double), true, false and null as
 * themselves. ``new`` and ``types`` come from "columns" (``new`` is None for a
 * delete), ``old`` from "identity"; a column only the old image has takes its
 * type from it. Column names, types, schema and table repeat on every row: they
 * come from a small cache of str objects instead of being decoded each time.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyObject *decimal_type; /* decimal.Decimal */

/* ---- the cache of names --------------------------------------------------- */

#define CACHE_SLOTS 1024 /* a power of two */
#define CACHE_MAX_LEN 63
#define CACHE_WAYS 4

typedef struct {
    Py_ssize_t len;
    char text[CACHE_MAX_LEN];
    PyObject *str;
} CacheSlot;

static CacheSlot cache[CACHE_SLOTS];

/* Every byte counts: names that share a length and a few letters
 * ("merchants", "onboarding_completed") must not share a slot, or each row of
 * theirs would make both again. */
static inline uint32_t
slot_of(const char *s, Py_ssize_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    uint32_t h = 2166136261u; /* FNV-1a */
    for (Py_ssize_t i = 0; i < len; i++) {
        h = (h ^ u[i]) * 16777619u;
    }
    return (h ^ (h >> 16)) & (CACHE_SLOTS - 1);
}

/* ---- reading -------------------------------------------------------------- */

typedef struct {
    const char *p;
    const char *end;
} Reader;

/* A string's raw bytes between its quotes, and whether it holds an escape. */
typedef struct {
    const char *start;
    Py_ssize_t len;
    int escaped;
} Span;

static inline void
skip_space(Reader *r)
{
    while (r->p < r->end &&
           (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r')) {
        r->p++;
    }
}

static inline int
expect(Reader *r, char c)
{
    skip_space(r);
    if (r->p < r->end && *r->p == c) {
        r->p++;
        return 0;
    }
    return -1;
}

/* 1 when the next byte (after spaces) is ``c``, consumed; 0 when not. */
static inline int
take(Reader *r, char c)
{
    skip_space(r);
    if (r->p < r->end && *r->p == c) {
        r->p++;
        return 1;
    }
    return 0;
}

static int
read_span(Reader *r, Span *span)
{
    if (expect(r, '"') < 0) {
        return -1;
    }
    const char *p = r->p;
    span->start = p;
    span->escaped = 0;
    /* The closing quote first, then a look for escapes and control characters
     * before it: two plain loops over a short string beat one that tests each
     * byte three ways. */
    const char *quote = memchr(p, '"', (size_t)(r->end - p));
    if (quote == NULL) {
        return -1;
    }
    int plain = 1;
    for (const char *q = p; q < quote; q++) {
        plain &= (unsigned char)*q >= 0x20 && *q != '\\';
    }
    if (plain) {
        span->len = quote - p;
        r->p = quote + 1;
        return 0;
    }
    while (p < r->end) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') {
            span->len = p - span->start;
            r->p = p + 1;
            return 0;
        }
        if (c == '\\') {
            span->escaped = 1;
            p += 2; /* the escape is checked when the string is made */
            continue;
        }
        if (c < 0x20) {
            return -1; /* JSON forbids raw control characters in a string */
        }
        p++;
    }
    return -1;
}

/* An object's opening brace; -1 for anything else, an empty object included
 * (every object this file reads has members it requires). */
static int
open_members(Reader *r)
{
    return expect(r, '{') < 0 || take(r, '}') ? -1 : 0;
}

/* An object member's name and its colon. */
static int
read_member_name(Reader *r, Span *name)
{
    return read_span(r, name) < 0 || expect(r, ':') < 0 ? -1 : 0;
}

static int
span_is(const Span *span, const char *word, Py_ssize_t len)
{
    return span->len == len && !span->escaped &&
           memcmp(span->start, word, (size_t)len) == 0;
}

#define SPAN_IS(span, word) span_is((span), (word), (Py_ssize_t)sizeof(word) - 1)

static int
hex_value(const char *p, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') {
            v |= (uint32_t)(c - '0');
        }
        else if (c >= 'a' && c <= 'f') {
            v |= (uint32_t)(c - 'a' + 10);
        }
        else if (c >= 'A' && c <= 'F') {
            v |= (uint32_t)(c - 'A' + 10);
        }
        else {
            return -1;
        }
    }
    *out = v;
    return 0;
}

/* The unescaped UTF-8 of an escaped span into ``out`` (at least span->len
 * bytes: no escape is shorter than what it stands for); its length, or -1. */
static Py_ssize_t
unescape(const Span *span, char *out)
{
    const char *p = span->start;
    const char *end = p + span->len;
    char *o = out;
    while (p < end) {
        if (*p != '\\') {
            *o++ = *p++;
            continue;
        }
        if (p + 1 >= end) {
            return -1;
        }
        char c = p[1];
        p += 2;
        switch (c) {
        case '"': *o++ = '"'; continue;
        case '\\': *o++ = '\\'; continue;
        case '/': *o++ = '/'; continue;
        case 'b': *o++ = '\b'; continue;
        case 'f': *o++ = '\f'; continue;
        case 'n': *o++ = '\n'; continue;
        case 'r': *o++ = '\r'; continue;
        case 't': *o++ = '\t'; continue;
        case 'u': break;
        default: return -1;
        }
        uint32_t cp;
        if (end - p < 4 || hex_value(p, &cp) < 0) {
            return -1;
        }
        p += 4;
        if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return -1; /* a lone low surrogate: left to msgspec */
        }
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t low;
            if (end - p < 6 || p[0] != '\\' || p[1] != 'u' ||
                hex_value(p + 2, &low) < 0 || low < 0xDC00 || low > 0xDFFF) {
                return -1;
            }
            p += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        }
        if (cp < 0x80) {
            *o++ = (char)cp;
        }
        else if (cp < 0x800) {
            *o++ = (char)(0xC0 | (cp >> 6));
            *o++ = (char)(0x80 | (cp & 0x3F));
        }
        else if (cp < 0x10000) {
            *o++ = (char)(0xE0 | (cp >> 12));
            *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
            *o++ = (char)(0x80 | (cp & 0x3F));
        }
        else {
            *o++ = (char)(0xF0 | (cp >> 18));
            *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
            *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
            *o++ = (char)(0x80 | (cp & 0x3F));
        }
    }
    return o - out;
}

static PyObject *
utf8_str(const char *s, Py_ssize_t len)
{
    for (Py_ssize_t i = 0; i < len; i++) {
        if ((unsigned char)s[i] >= 0x80) {
            return PyUnicode_DecodeUTF8(s, len, NULL);
        }
    }
    PyObject *str = PyUnicode_New(len, 127);
    if (str != NULL) {
        memcpy(PyUnicode_1BYTE_DATA(str), s, (size_t)len);
    }
    return str;
}

static PyObject *
make_str(const Span *span)
{
    if (!span->escaped) {
        return utf8_str(span->start, span->len);
    }
    char small[256];
    char *buffer = span->len <= (Py_ssize_t)sizeof(small) ? small
                                                          : PyMem_Malloc((size_t)span->len);
    if (buffer == NULL) {
        return PyErr_NoMemory();
    }
    PyObject *str = NULL;
    Py_ssize_t len = unescape(span, buffer);
    if (len >= 0) {
        str = PyUnicode_DecodeUTF8(buffer, len, NULL);
    }
    if (buffer != small) {
        PyMem_Free(buffer);
    }
    return str;
}

/* A name that repeats on every row, from the cache when it was seen before.
 * A name looks in its slot and the next CACHE_WAYS - 1; a new one takes the
 * first empty of them, or its own slot. */
static PyObject *
cached_str(const Span *span)
{
    if (span->escaped || span->len > CACHE_MAX_LEN) {
        return make_str(span);
    }
    uint32_t home = slot_of(span->start, span->len);
    CacheSlot *slot = &cache[home];
    for (uint32_t way = 0; way < CACHE_WAYS; way++) {
        CacheSlot *candidate = &cache[(home + way) & (CACHE_SLOTS - 1)];
        if (candidate->str == NULL) {
            slot = candidate;
            break;
        }
        if (candidate->len == span->len &&
            memcmp(candidate->text, span->start, (size_t)span->len) == 0) {
            Py_INCREF(candidate->str);
            return candidate->str;
        }
    }
    PyObject *str = utf8_str(span->start, span->len);
    if (str == NULL) {
        return NULL;
    }
    PyUnicode_InternInPlace(&str);
    Py_XSETREF(slot->str, Py_NewRef(str));
    slot->len = span->len;
    memcpy(slot->text, span->start, (size_t)span->len);
    return str;
}

static PyObject *
read_str(Reader *r, int cached)
{
    Span span;
    if (read_span(r, &span) < 0) {
        return NULL;
    }
    return cached ? cached_str(&span) : make_str(&span);
}

static int
is_digit(const char *p, const char *end)
{
    return p < end && *p >= '0' && *p <= '9';
}

static PyObject *
read_number(Reader *r)
{
    const char *start = r->p;
    const char *p = start;
    const char *end = r->end;
    int fraction = 0;
    if (p < end && *p == '-') {
        p++;
    }
    if (p < end && *p == '0') {
        p++;
    }
    else if (is_digit(p, end)) {
        while (is_digit(p, end)) {
            p++;
        }
    }
    else {
        return NULL;
    }
    if (p < end && *p == '.') {
        p++;
        if (!is_digit(p, end)) {
            return NULL;
        }
        while (is_digit(p, end)) {
            p++;
        }
        fraction = 1;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) {
            p++;
        }
        if (!is_digit(p, end)) {
            return NULL;
        }
        while (is_digit(p, end)) {
            p++;
        }
        fraction = 1;
    }
    r->p = p;
    Py_ssize_t len = p - start;
    if (fraction) {
        PyObject *text = PyUnicode_FromStringAndSize(start, len);
        if (text == NULL) {
            return NULL;
        }
        PyObject *value = PyObject_CallOneArg(decimal_type, text);
        Py_DECREF(text);
        return value;
    }
    const char *digits = start + (*start == '-');
    if (p - digits <= 18) {
        long long value = 0;
        for (const char *d = digits; d < p; d++) {
            value = value * 10 + (*d - '0');
        }
        return PyLong_FromLongLong(*start == '-' ? -value : value);
    }
    char *copy = PyMem_Malloc((size_t)len + 1);
    if (copy == NULL) {
        return PyErr_NoMemory();
    }
    memcpy(copy, start, (size_t)len);
    copy[len] = '\0';
    /* Past Python's digit limit this raises ValueError: msgspec's path then
     * takes the row, as it does for its own limit. */
    PyObject *value = PyLong_FromString(copy, NULL, 10);
    PyMem_Free(copy);
    return value;
}

static int
take_word(Reader *r, const char *word, Py_ssize_t len)
{
    if (r->end - r->p >= len && memcmp(r->p, word, (size_t)len) == 0) {
        r->p += len;
        return 1;
    }
    return 0;
}

/* A scalar value: str, int, Decimal, True, False or None; NULL for anything
 * else (an object or an array: wal2json writes none in a change's values). */
static PyObject *
read_value(Reader *r)
{
    skip_space(r);
    if (r->p >= r->end) {
        return NULL;
    }
    char c = *r->p;
    if (c == '"') {
        return read_str(r, 0);
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        return read_number(r);
    }
    if (take_word(r, "true", 4)) {
        Py_RETURN_TRUE;
    }
    if (take_word(r, "false", 5)) {
        Py_RETURN_FALSE;
    }
    if (take_word(r, "null", 4)) {
        Py_RETURN_NONE;
    }
    return NULL;
}

/* A string value we do not keep, read without making it. One with an escape
 * or a byte past ASCII is left to msgspec, which checks them (wal2json writes
 * none in these: positions, times, type names). */
static int
skip_str(Reader *r)
{
    Span span;
    if (read_span(r, &span) < 0 || span.escaped) {
        return -1;
    }
    unsigned char any = 0;
    for (Py_ssize_t i = 0; i < span.len; i++) {
        any |= (unsigned char)span.start[i];
    }
    return any < 0x80 ? 0 : -1;
}

static int
skip_str_or_null(Reader *r)
{
    skip_space(r);
    return take_word(r, "null", 4) ? 0 : skip_str(r);
}

/* One {"name": ..., "type": ..., "value": ...} of a "columns" or "identity"
 * list: its three parts as new references, or -1. ``*value_at`` is where the
 * value starts when the keys came in that order (the column's head ends
 * there, see Heads), else NULL. */
static int
read_column(Reader *r, PyObject **name, PyObject **type, PyObject **value,
            const char **value_at)
{
    *name = *type = *value = NULL;
    *value_at = NULL;
    if (open_members(r) < 0) {
        return -1;
    }
    int in_order = 1;
    do {
        Span key;
        if (read_member_name(r, &key) < 0) {
            return -1;
        }
        PyObject **slot;
        int cached = 1;
        if (SPAN_IS(&key, "name")) {
            slot = name;
            in_order = in_order && *type == NULL && *value == NULL;
        }
        else if (SPAN_IS(&key, "type")) {
            slot = type;
            in_order = in_order && *name != NULL && *value == NULL;
        }
        else if (SPAN_IS(&key, "value")) {
            slot = value;
            cached = 0;
            in_order = in_order && *name != NULL && *type != NULL;
            if (in_order) {
                *value_at = r->p;
            }
        }
        else {
            return -1;
        }
        if (*slot != NULL) {
            return -1; /* a repeated key: left to msgspec */
        }
        *slot = cached ? read_str(r, 1) : read_value(r);
        if (*slot == NULL) {
            return -1;
        }
    } while (take(r, ','));
    if (expect(r, '}') < 0 || *name == NULL || *type == NULL || *value == NULL) {
        return -1;
    }
    return 0;
}

/* The columns' names and types in the order read, each marked when it came
 * from the old image: every row of a table has the same shape, and one types
 * dict serves them all (see types_of). */
#define MAX_SHAPE 64

typedef struct {
    Py_ssize_t len; /* -1 once past MAX_SHAPE columns: the dict is made apart */
    PyObject *names[MAX_SHAPE];
    PyObject *types[MAX_SHAPE];
    char old[MAX_SHAPE];
} Shape;

static void
shape_clear(Shape *shape)
{
    for (Py_ssize_t i = 0; i < shape->len; i++) {
        Py_CLEAR(shape->names[i]);
        Py_CLEAR(shape->types[i]);
    }
    shape->len = 0;
}

/* A column's type into ``types``: the new image's first, then those only the
 * old image has (a delete, an unchanged TOASTed value), as msgspec's path. */
static int
add_type(PyObject *types, PyObject *name, PyObject *type, int old)
{
    return old ? (PyDict_SetDefault(types, name, type) == NULL ? -1 : 0)
               : PyDict_SetItem(types, name, type);
}

/* The shape's types into ``types``. */
static int
add_types(PyObject *types, const Shape *shape)
{
    for (Py_ssize_t i = 0; i < shape->len; i++) {
        if (add_type(types, shape->names[i], shape->types[i], shape->old[i]) < 0) {
            return -1;
        }
    }
    return 0;
}

/* The types dict of the rows of a table with this shape, made once: rows of
 * one table share it, and nobody changes it (Change says so). Only shapes of
 * names from the cache are remembered (the same text is the same object). */
#define SHAPES 64

typedef struct {
    PyObject *schema, *table, *types;
    Shape shape;
} KnownShape;

static KnownShape shapes[SHAPES];
static unsigned int next_shape;

static int
same_shape(const Shape *a, const Shape *b)
{
    size_t n = (size_t)a->len;
    return a->len == b->len &&
           memcmp(a->names, b->names, n * sizeof(PyObject *)) == 0 &&
           memcmp(a->types, b->types, n * sizeof(PyObject *)) == 0 &&
           memcmp(a->old, b->old, n) == 0;
}

static PyObject *
types_of(PyObject *schema, PyObject *table, Shape *shape)
{
    for (int k = 0; k < SHAPES; k++) {
        KnownShape *known = &shapes[k];
        if (known->table == table && known->schema == schema &&
            same_shape(&known->shape, shape)) {
            return Py_NewRef(known->types);
        }
    }
    int stable = PyUnicode_CHECK_INTERNED(schema) && PyUnicode_CHECK_INTERNED(table);
    for (Py_ssize_t i = 0; i < shape->len && stable; i++) {
        stable = PyUnicode_CHECK_INTERNED(shape->names[i]) &&
                 PyUnicode_CHECK_INTERNED(shape->types[i]);
    }
    PyObject *types = PyDict_New();
    if (types == NULL) {
        return NULL;
    }
    if (add_types(types, shape) < 0) {
        Py_DECREF(types);
        return NULL;
    }
    if (stable) {
        KnownShape *known = &shapes[next_shape++ % SHAPES];
        Py_XSETREF(known->schema, Py_NewRef(schema));
        Py_XSETREF(known->table, Py_NewRef(table));
        Py_XSETREF(known->types, Py_NewRef(types));
        shape_clear(&known->shape);
        for (Py_ssize_t i = 0; i < shape->len; i++) {
            known->shape.names[i] = Py_NewRef(shape->names[i]);
            known->shape.types[i] = Py_NewRef(shape->types[i]);
            known->shape.old[i] = shape->old[i];
        }
        known->shape.len = shape->len;
    }
    return types;
}

/* ---- column heads ------------------------------------------------------- */

/* A column's bytes up to its value, as wal2json writes them on every row of a
 * table: {"name":"id","type":"bigint","value": . The heads of the last row of
 * a table are kept; a column of the next row that starts with the same bytes
 * has the same name and type, so those are not read again (comparing the bytes
 * costs a fraction of reading two strings and finding them in the cache). A
 * column that does not match is read in full, and that row's heads are kept
 * instead. Making a value can run Python code (a Decimal made, a collection
 * and its finalizers), which may read another row and replace the heads kept:
 * each column compares its bytes with the heads kept at that moment, and takes
 * the name and type that go with them, so the row is read alike. */
typedef struct {
    const char *start; /* in the row being read */
    Py_ssize_t len;    /* 0: no head (its keys came in another order) */
} HeadSpan;

typedef struct {
    Py_ssize_t count;
    char *text; /* the heads one after another */
    Py_ssize_t ends[MAX_SHAPE];
    PyObject *names[MAX_SHAPE];
    PyObject *types[MAX_SHAPE];
} Heads;

/* The heads of a table's new image ("columns") and old image ("identity"). */
typedef struct {
    PyObject *schema, *table;
    Heads image[2];
} TableHeads;

#define TABLE_HEADS 16

static TableHeads table_heads[TABLE_HEADS];
static unsigned int next_table_heads;

/* What a row's reading of one image saw of its columns' heads. */
typedef struct {
    HeadSpan spans[MAX_SHAPE];
    Py_ssize_t count;
    int changed; /* some column did not match the kept heads */
} SeenHeads;

static TableHeads *
heads_of(PyObject *schema, PyObject *table)
{
    if (schema == NULL || table == NULL) {
        return NULL; /* the columns came before them: read in full */
    }
    for (int k = 0; k < TABLE_HEADS; k++) {
        TableHeads *known = &table_heads[k];
        if (known->table == table && known->schema == schema) {
            return known;
        }
    }
    return NULL;
}

static void
heads_clear(Heads *heads)
{
    for (Py_ssize_t i = 0; i < heads->count; i++) {
        Py_CLEAR(heads->names[i]);
        Py_CLEAR(heads->types[i]);
    }
    PyMem_Free(heads->text);
    heads->text = NULL;
    heads->count = 0;
}

/* Keep the heads ``seen`` for an image whose names and types are
 * ``names``/``types`` (in the order read). Nothing is kept when some column
 * had no head; -1 when memory ran out. */
static int
heads_keep(Heads *heads, const SeenHeads *seen, PyObject *const *names,
           PyObject *const *types)
{
    heads_clear(heads);
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < seen->count; i++) {
        if (seen->spans[i].len == 0) {
            return 0;
        }
        total += seen->spans[i].len;
    }
    char *text = PyMem_Malloc(total > 0 ? (size_t)total : 1);
    if (text == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t at = 0;
    for (Py_ssize_t i = 0; i < seen->count; i++) {
        memcpy(text + at, seen->spans[i].start, (size_t)seen->spans[i].len);
        at += seen->spans[i].len;
        heads->ends[i] = at;
        heads->names[i] = Py_NewRef(names[i]);
        heads->types[i] = Py_NewRef(types[i]);
    }
    heads->text = text;
    heads->count = seen->count;
    return 0;
}

/* A list of columns into ``values``, their names and types onto ``shape``
 * (or into a ``types`` dict made once the shape is too long to keep); null
 * leaves ``*values`` NULL. ``known`` holds the table's kept heads for this
 * image, if any; ``seen`` gets this row's. */
static int
read_columns(Reader *r, PyObject **values, Shape *shape, PyObject **types, int old,
             const Heads *known, SeenHeads *seen)
{
    seen->count = 0;
    seen->changed = 0;
    skip_space(r);
    if (take_word(r, "null", 4)) {
        return 0;
    }
    if (expect(r, '[') < 0) {
        return -1;
    }
    PyObject *dict = PyDict_New();
    if (dict == NULL) {
        return -1;
    }
    *values = dict;
    if (take(r, ']')) {
        seen->changed = known != NULL && known->count != 0;
        return 0;
    }
    do {
        PyObject *name = NULL, *type = NULL, *value = NULL;
        Py_ssize_t i = seen->count;
        skip_space(r);
        const char *start = r->p;
        const char *value_at = NULL;
        int failed = 0;
        Py_ssize_t head = 0;
        if (known != NULL && i < known->count) {
            head = known->ends[i] - (i ? known->ends[i - 1] : 0);
            const char *text = known->text + known->ends[i] - head;
            if (r->end - start < head || memcmp(start, text, (size_t)head) != 0) {
                head = 0;
            }
        }
        if (head) {
            r->p += head;
            name = Py_NewRef(known->names[i]);
            type = Py_NewRef(known->types[i]);
            value = read_value(r);
            failed = value == NULL || expect(r, '}') < 0;
        }
        else {
            seen->changed = 1;
            failed = read_column(r, &name, &type, &value, &value_at) < 0;
            head = value_at != NULL ? value_at - start : 0;
        }
        if (i < MAX_SHAPE) {
            seen->spans[i].start = start;
            seen->spans[i].len = head;
            seen->count = i + 1;
        }
        else {
            seen->changed = 1; /* too many columns to keep heads for */
        }
        failed = failed || PyDict_SetItem(dict, name, value) < 0;
        if (!failed && shape->len >= 0 && shape->len < MAX_SHAPE) {
            Py_ssize_t k = shape->len++;
            shape->names[k] = Py_NewRef(name);
            shape->types[k] = Py_NewRef(type);
            shape->old[k] = (char)old;
        }
        else if (!failed) {
            /* Too many columns to keep: the dict is made as they come. */
            if (*types == NULL) {
                *types = PyDict_New();
            }
            failed = *types == NULL || add_types(*types, shape) < 0 ||
                     add_type(*types, name, type, old) < 0;
            shape_clear(shape);
            shape->len = -1;
        }
        Py_XDECREF(name);
        Py_XDECREF(type);
        Py_XDECREF(value);
        if (failed) {
            return -1;
        }
    } while (take(r, ','));
    if (known != NULL && seen->count != known->count) {
        seen->changed = 1;
    }
    return expect(r, ']');
}

/* "pk": [{"name": ..., "type": ...}, ...] into a tuple of names. */
static PyObject *
read_key(Reader *r)
{
    if (expect(r, '[') < 0) {
        return NULL;
    }
    PyObject *names = PyList_New(0);
    if (names == NULL) {
        return NULL;
    }
    if (!take(r, ']')) {
        do {
            PyObject *name = NULL;
            int have_type = 0, failed = expect(r, '{') < 0;
            while (!failed) {
                Span key;
                if (read_member_name(r, &key) < 0) {
                    failed = 1;
                }
                else if (SPAN_IS(&key, "name") && name == NULL) {
                    name = read_str(r, 1);
                    failed = name == NULL;
                }
                else if (SPAN_IS(&key, "type") && !have_type) {
                    failed = skip_str(r) < 0;
                    have_type = 1;
                }
                else {
                    failed = 1; /* another key, or one repeated */
                }
                if (!failed && !take(r, ',')) {
                    break;
                }
            }
            failed = failed || name == NULL || expect(r, '}') < 0 ||
                     PyList_Append(names, name) < 0;
            Py_XDECREF(name); /* the list holds its own reference */
            if (failed) {
                goto fail;
            }
        } while (take(r, ','));
        if (expect(r, ']') < 0) {
            goto fail;
        }
    }
    PyObject *key = PyList_AsTuple(names);
    Py_DECREF(names);
    return key;
fail:
    Py_DECREF(names);
    return NULL;
}

/* ---- the row -------------------------------------------------------------- */

typedef struct {
    PyObject *action, *schema, *table, *lsn, *new, *old, *types, *key;
    Shape shape;
} Row;

static void
row_clear(Row *row)
{
    Py_CLEAR(row->action);
    Py_CLEAR(row->schema);
    Py_CLEAR(row->table);
    Py_CLEAR(row->lsn);
    Py_CLEAR(row->new);
    Py_CLEAR(row->old);
    Py_CLEAR(row->types);
    Py_CLEAR(row->key);
    shape_clear(&row->shape);
}

/* 0 with ``row`` filled, 1 for a row this file leaves to msgspec, -1 when the
 * row is not what it expects (also left to msgspec, which names the problem). */
/* Keep the heads of a row read whole, where they differ from those kept. */
static int
keep_heads(const Row *row, const SeenHeads *seen)
{
    if (!(seen[0].changed || seen[1].changed) || row->shape.len < 0 ||
        !PyUnicode_CHECK_INTERNED(row->schema) || !PyUnicode_CHECK_INTERNED(row->table)) {
        return 0;
    }
    TableHeads *heads = heads_of(row->schema, row->table);
    if (heads == NULL) {
        heads = &table_heads[next_table_heads++ % TABLE_HEADS];
        heads_clear(&heads->image[0]);
        heads_clear(&heads->image[1]);
        Py_XSETREF(heads->schema, Py_NewRef(row->schema));
        Py_XSETREF(heads->table, Py_NewRef(row->table));
    }
    Py_ssize_t at = 0; /* the image's first column in the shape */
    for (int m = 0; m < 2; m++) {
        if (seen[m].count < 0) {
            continue; /* not in this row */
        }
        if (seen[m].changed &&
            heads_keep(&heads->image[m], &seen[m], row->shape.names + at,
                       row->shape.types + at) < 0) {
            return -1;
        }
        at += seen[m].count;
    }
    return 0;
}

static int
read_row(Reader *r, Row *row, SeenHeads *seen)
{
    TableHeads *known = NULL;
    int seen_timestamp = 0, seen_nextlsn = 0, seen_columns = 0, seen_identity = 0;
    char action = 0;
    if (open_members(r) < 0) {
        return -1;
    }
    do {
        Span key;
        if (read_member_name(r, &key) < 0) {
            return -1;
        }
        if (SPAN_IS(&key, "action") && row->action == NULL) {
            Span value;
            if (read_span(r, &value) < 0) {
                return -1;
            }
            if (value.len != 1 || value.escaped ||
                (value.start[0] != 'I' && value.start[0] != 'U' && value.start[0] != 'D')) {
                return 1; /* B, C, M, T or something else: msgspec's */
            }
            action = value.start[0];
            row->action = cached_str(&value);
            if (row->action == NULL) {
                return -1;
            }
        }
        else if (SPAN_IS(&key, "schema") && row->schema == NULL) {
            if ((row->schema = read_str(r, 1)) == NULL) {
                return -1;
            }
        }
        else if (SPAN_IS(&key, "table") && row->table == NULL) {
            if ((row->table = read_str(r, 1)) == NULL) {
                return -1;
            }
        }
        else if (SPAN_IS(&key, "lsn") && row->lsn == NULL) {
            if ((row->lsn = read_str(r, 0)) == NULL) {
                return -1;
            }
        }
        else if (SPAN_IS(&key, "timestamp") && !seen_timestamp) {
            seen_timestamp = 1;
            if (skip_str_or_null(r) < 0) {
                return -1;
            }
        }
        else if (SPAN_IS(&key, "nextlsn") && !seen_nextlsn) {
            seen_nextlsn = 1;
            if (skip_str(r) < 0) {
                return -1;
            }
        }
        else if (SPAN_IS(&key, "columns") && !seen_columns && !seen_identity) {
            /* Before "identity", as wal2json writes them: the new image's types
             * come first, as msgspec's path makes them. */
            seen_columns = 1;
            known = known ? known : heads_of(row->schema, row->table);
            if (read_columns(r, &row->new, &row->shape, &row->types, 0,
                             known ? &known->image[0] : NULL, &seen[0]) < 0) {
                return -1;
            }
        }
        else if (SPAN_IS(&key, "identity") && !seen_identity) {
            seen_identity = 1;
            known = known ? known : heads_of(row->schema, row->table);
            if (read_columns(r, &row->old, &row->shape, &row->types, 1,
                             known ? &known->image[1] : NULL, &seen[1]) < 0) {
                return -1;
            }
        }
        else if (SPAN_IS(&key, "pk") && row->key == NULL) {
            if ((row->key = read_key(r)) == NULL) {
                return -1;
            }
        }
        else {
            return -1; /* a key we do not expect, or one repeated */
        }
    } while (take(r, ','));
    if (expect(r, '}') < 0) {
        return -1;
    }
    skip_space(r);
    if (r->p != r->end || action == 0 || row->schema == NULL || row->table == NULL ||
        PyUnicode_GET_LENGTH(row->schema) == 0 || PyUnicode_GET_LENGTH(row->table) == 0) {
        return -1;
    }
    if (action == 'D' && seen_columns) {
        return -1; /* a delete with a new image: msgspec's path decides */
    }
    if (row->lsn == NULL) {
        row->lsn = PyUnicode_New(0, 0);
        if (row->lsn == NULL) {
            return -1;
        }
    }
    if (row->key == NULL) {
        row->key = PyTuple_New(0);
        if (row->key == NULL) {
            return -1;
        }
    }
    if (row->shape.len >= 0) {
        row->types = types_of(row->schema, row->table, &row->shape);
        if (row->types == NULL) {
            return -1;
        }
    }
    return keep_heads(row, seen);
}

static PyObject *
change(PyObject *module, PyObject *data)
{
    (void)module;
    Reader reader;
    Py_buffer view = {0};
    if (PyUnicode_Check(data)) {
        /* A row read through SQL: its UTF-8 is kept with it (for ASCII, it is
         * the str's own storage). */
        Py_ssize_t len;
        const char *text = PyUnicode_AsUTF8AndSize(data, &len);
        if (text == NULL) {
            PyErr_Clear(); /* a lone surrogate: msgspec's path names it */
            Py_RETURN_NONE;
        }
        reader.p = text;
        reader.end = text + len;
    }
    else {
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
            return NULL;
        }
        reader.p = view.buf;
        reader.end = (const char *)view.buf + view.len;
    }
    Row row = {0};
    SeenHeads seen[2];
    seen[0].count = seen[1].count = -1; /* neither image read yet */
    seen[0].changed = seen[1].changed = 0;
    int outcome = read_row(&reader, &row, seen);
    if (view.obj != NULL) {
        PyBuffer_Release(&view);
    }
    if (outcome != 0) {
        row_clear(&row);
        PyErr_Clear(); /* msgspec's path meets the same problem and names it */
        Py_RETURN_NONE;
    }
    PyObject *result = PyTuple_Pack(
        8, row.action, row.schema, row.table, row.lsn,
        row.new != NULL ? row.new : Py_None, row.old != NULL ? row.old : Py_None,
        row.types, row.key);
    row_clear(&row);
    return result;
}

/* ---- the module ----------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"change", change, METH_O,
     "change(data) -> (action, schema, table, lsn, new, old, types, key) | None\n\n"
     "A wal2json format-2 change row decoded as msgspec's path decodes it; None\n"
     "for any other row, or one to leave to that path."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "_rowparse",
    "A one-pass reader of wal2json change rows (see wal2json.py).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__rowparse(void)
{
    PyObject *decimal = PyImport_ImportModule("decimal");
    if (decimal == NULL) {
        return NULL;
    }
    decimal_type = PyObject_GetAttrString(decimal, "Decimal");
    Py_DECREF(decimal);
    if (decimal_type == NULL) {
        return NULL;
    }
    return PyModule_Create(&module_def);
}
