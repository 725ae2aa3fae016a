/* A call's JSON written in one pass from its rule's plan and the change's row.
 *
 * write(template, fields, new, types, kinds, outputs, message_id, user_id,
 *       timestamp, depth, old) returns the call's body as bytes, the same bytes
 * the mapper's Python path makes (a payload dict, then orjson), or None when
 * this writer declines the call: a column the row image does not carry, a value
 * it does not know how to write, a conversion that fails. The mapper then makes
 * the call its general way, which reads, converts and explains as it always
 * did: this file only has to be exact where it answers, never complete.
 *
 * ``template`` is the payload's fixed bytes, prepared once per rule, with
 * four placeholders (small ints): the fields object, the messageId, the userId
 * and the timestamp. ``fields`` is a tuple of (key, how, what): ``key`` the
 * field's name as JSON with its colon, ``how`` COLUMN (``what`` a column of the
 * new row), OLD_COLUMN (a column of the old row, ``old``: None when the change
 * has none), CONSTANT (``what`` its JSON) or NESTED (``what`` a tuple of fields).
 * A column's value is written by its declared type's kind (``kinds``, a dict
 * that fills itself): values wal2json decoded as they are sent (text, integers,
 * booleans, exact numerics) are written here; any other goes through its output
 * converter (``outputs``) and, unless it is then one of those, through ``dumps``
 * (orjson with the mapper's options).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { FIELDS = 0, MESSAGE_ID = 1, USER_ID = 2, TIMESTAMP = 3 };
enum { COLUMN = 0, CONSTANT = 1, NESTED = 2, OLD_COLUMN = 3 };
enum { SAME = 0, INTEGER = 1, BOOLEAN = 2, NUMBER = 3, CONVERTED = 4, PADDED = 5,
       TIMESTAMPTZ = 6 };

static PyObject *decimal_type;  /* decimal.Decimal */
static PyObject *dumps;         /* value -> bytes, the mapper's orjson options */
static PyObject *body_name;     /* "body", of an EncodedCall */

/* ---- the buffer ----------------------------------------------------------- */

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
    char small[4096];
} Buffer;

static int
reserve(Buffer *b, Py_ssize_t more)
{
    if (b->len + more <= b->cap) {
        return 0;
    }
    Py_ssize_t cap = b->cap * 2;
    while (cap < b->len + more) {
        cap *= 2;
    }
    char *data;
    if (b->data == b->small) {
        data = PyMem_Malloc((size_t)cap);
        if (data != NULL) {
            memcpy(data, b->small, (size_t)b->len);
        }
    }
    else {
        data = PyMem_Realloc(b->data, (size_t)cap);
    }
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static inline int
put(Buffer *b, const char *s, Py_ssize_t len)
{
    if (reserve(b, len) < 0) {
        return -1;
    }
    memcpy(b->data + b->len, s, (size_t)len);
    b->len += len;
    return 0;
}

#define PUT_LITERAL(b, s) put((b), (s), (Py_ssize_t)sizeof(s) - 1)

static int
put_bytes(Buffer *b, PyObject *bytes)
{
    return put(b, PyBytes_AS_STRING(bytes), PyBytes_GET_SIZE(bytes));
}

/* ---- values --------------------------------------------------------------- */

/* A str as a JSON string, escaped as orjson escapes: quote, backslash and the
 * control characters, the usual ones short, the others as \u00xx. */
static int
put_utf8(Buffer *b, const char *s, Py_ssize_t len)
{
    static const char hex[] = "0123456789abcdef";
    if (reserve(b, len * 6 + 2) < 0) {
        return -1;
    }
    char *o = b->data + b->len;
    *o++ = '"';
    /* Most strings need no escape: a branch-free look first, then one copy. */
    int plain = 1;
    for (Py_ssize_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        plain &= c >= 0x20 && c != '"' && c != '\\';
    }
    if (plain) {
        memcpy(o, s, (size_t)len);
        o += len;
        len = 0;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    *o++ = '"';
    b->len = o - b->data;
    return 0;
}

static int
put_str(Buffer *b, PyObject *str)
{
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(str, &len);
    if (s == NULL) {
        return -1; /* a lone surrogate: the mapper names it */
    }
    return put_utf8(b, s, len);
}

/* A character(n) value without its blank padding, as values.py trims it. */
static int
put_padded(Buffer *b, PyObject *str)
{
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(str, &len);
    if (s == NULL) {
        return -1;
    }
    while (len > 0 && s[len - 1] == ' ') {
        len--; /* a space is one byte, never part of a longer UTF-8 character */
    }
    return put_utf8(b, s, len);
}

static int
digits_at(const char *s, int count, int *value)
{
    int v = 0;
    for (int i = 0; i < count; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        v = v * 10 + (s[i] - '0');
    }
    *value = v;
    return 0;
}

static int
days_in_month(int year, int month)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return days[month - 1] + (month == 2 && leap);
}

/* A timestamptz as the server prints it (2026-12-05 11:39:24.4698+00) written
 * as orjson writes the datetime values.py makes of it
 * ("2026-12-05T11:39:24.469800Z"); 1 for any other form (a BC date, a year past
 * 9999, infinity, an offset with seconds), which takes the Python path. */
static int
put_timestamptz(Buffer *b, PyObject *str)
{
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(str, &len);
    if (s == NULL) {
        return -1;
    }
    int year, month, day, hour, minute, second, offset_hours, offset_minutes = 0;
    if (len < 22 || s[4] != '-' || s[7] != '-' || s[10] != ' ' || s[13] != ':' ||
        s[16] != ':' || digits_at(s, 4, &year) || digits_at(s + 5, 2, &month) ||
        digits_at(s + 8, 2, &day) || digits_at(s + 11, 2, &hour) ||
        digits_at(s + 14, 2, &minute) || digits_at(s + 17, 2, &second) ||
        year < 1 || month < 1 || month > 12 || day < 1 ||
        day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 59) {
        return 1;
    }
    Py_ssize_t at = 19;
    char fraction[6] = {'0', '0', '0', '0', '0', '0'};
    int nonzero = 0;
    if (s[at] == '.') {
        Py_ssize_t start = ++at;
        while (at < len && s[at] >= '0' && s[at] <= '9') {
            if (at - start < 6) {
                fraction[at - start] = s[at];
                nonzero |= s[at] != '0';
            }
            at++;
        }
        if (at == start || at - start > 6) {
            return 1;
        }
    }
    Py_ssize_t rest = len - at;
    if ((rest != 3 && rest != 6) || (s[at] != '+' && s[at] != '-') ||
        digits_at(s + at + 1, 2, &offset_hours) || offset_hours > 23 ||
        (rest == 6 && (s[at + 3] != ':' || digits_at(s + at + 4, 2, &offset_minutes) ||
                       offset_minutes > 59))) {
        return 1;
    }
    if (reserve(b, 40) < 0) {
        return -1;
    }
    char *o = b->data + b->len;
    *o++ = '"';
    memcpy(o, s, 10);
    o[10] = 'T';
    memcpy(o + 11, s + 11, 8);
    o += 19;
    if (nonzero) {
        *o++ = '.';
        memcpy(o, fraction, 6);
        o += 6;
    }
    if (offset_hours == 0 && offset_minutes == 0) {
        *o++ = 'Z';
    }
    else {
        *o++ = s[at];
        memcpy(o, s + at + 1, 2);
        o[2] = ':';
        o[3] = (char)('0' + offset_minutes / 10);
        o[4] = (char)('0' + offset_minutes % 10);
        o += 5;
    }
    *o++ = '"';
    b->len = o - b->data;
    return 0;
}

/* A value ``depth`` containers deep in the call, through dumps: wrapped in as
 * many lists, so that orjson's nesting limit counts what encoding the whole
 * call would count (a json document too deep is then refused here as there),
 * and written without them. A scalar goes at depth 0. */
static int
put_dumped_at(Buffer *b, PyObject *value, int depth)
{
    PyObject *wrapped = Py_NewRef(value);
    for (int i = 0; i < depth && wrapped != NULL; i++) {
        PyObject *list = PyList_New(1);
        if (list == NULL) {
            Py_CLEAR(wrapped);
            break;
        }
        PyList_SET_ITEM(list, 0, wrapped); /* steals the reference */
        wrapped = list;
    }
    if (wrapped == NULL) {
        return -1;
    }
    PyObject *json = PyObject_CallOneArg(dumps, wrapped);
    Py_DECREF(wrapped);
    if (json == NULL) {
        return -1;
    }
    int failed = !PyBytes_Check(json) || PyBytes_GET_SIZE(json) < 2 * depth;
    if (!failed) {
        const char *s = PyBytes_AS_STRING(json);
        Py_ssize_t len = PyBytes_GET_SIZE(json);
        for (int i = 0; i < depth && !failed; i++) {
            failed = s[i] != '[' || s[len - 1 - i] != ']';
        }
        failed = failed || put(b, s + depth, len - 2 * depth) < 0;
    }
    Py_DECREF(json);
    return failed ? -1 : 0;
}

static int
put_int(Buffer *b, PyObject *value)
{
    int overflow;
    long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow) {
        return put_dumped_at(b, value, 0); /* orjson takes up to 2**64 - 1 */
    }
    if (n == -1 && PyErr_Occurred()) {
        return -1;
    }
    char digits[24];
    int len = snprintf(digits, sizeof(digits), "%lld", n);
    return put(b, digits, len);
}

/* A finite Decimal as its text, when str() writes it plainly (no E-); any
 * other through dumps, whose default writes it exactly or refuses it. */
static int
put_decimal(Buffer *b, PyObject *value)
{
    PyObject *text = PyObject_Str(value);
    if (text == NULL) {
        return -1;
    }
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(text, &len);
    int plain = s != NULL && len > 0;
    for (Py_ssize_t i = 0; plain && i < len; i++) {
        char c = s[i];
        plain = (c >= '0' && c <= '9') || c == '.' || c == '-' ||
                (c == 'E' && i + 1 < len && s[i + 1] == '+') ||
                (c == '+' && i > 0 && s[i - 1] == 'E');
    }
    int result = plain ? put(b, s, len) : put_dumped_at(b, value, 0);
    Py_DECREF(text);
    return result;
}

static int
put_value(Buffer *b, PyObject *value, int depth)
{
    if (PyUnicode_CheckExact(value)) {
        return put_str(b, value);
    }
    if (value == Py_None) {
        return PUT_LITERAL(b, "null");
    }
    if (value == Py_True) {
        return PUT_LITERAL(b, "true");
    }
    if (value == Py_False) {
        return PUT_LITERAL(b, "false");
    }
    if (PyLong_CheckExact(value)) {
        return put_int(b, value);
    }
    if ((PyObject *)Py_TYPE(value) == decimal_type) {
        return put_decimal(b, value);
    }
    return put_dumped_at(b, value, depth);
}

/* ---- fields --------------------------------------------------------------- */

static int
kind_of(PyObject *kinds, PyObject *declared)
{
    PyObject *kind = PyDict_GetItemWithError(kinds, declared);
    if (kind != NULL) {
        return (int)PyLong_AsLong(kind);
    }
    if (PyErr_Occurred()) {
        return -1;
    }
    kind = PyObject_GetItem(kinds, declared); /* made on first sight */
    if (kind == NULL) {
        return -1;
    }
    int result = (int)PyLong_AsLong(kind);
    Py_DECREF(kind);
    return result;
}

/* What a call's values are read from, and how many containers deep in the
 * call the value being written sits. */
typedef struct {
    PyObject *new, *types, *kinds, *outputs, *old;
    int depth;
} Row;

static int
put_converted(Buffer *b, const Row *row, PyObject *declared, PyObject *raw)
{
    PyObject *convert = PyObject_GetItem(row->outputs, declared);
    if (convert == NULL) {
        return -1;
    }
    PyObject *value = PyObject_CallOneArg(convert, raw);
    Py_DECREF(convert);
    if (value == NULL) {
        return -1;
    }
    int result = put_value(b, value, row->depth);
    Py_DECREF(value);
    return result;
}

/* A column's value by its declared type's kind (see values.py). */
static int
put_value_of_kind(Buffer *b, const Row *row, PyObject *declared, PyObject *raw)
{
    switch (kind_of(row->kinds, declared)) {
    case SAME:
        return put_value(b, raw, row->depth);
    case INTEGER:
        if (PyLong_CheckExact(raw)) {
            return put_int(b, raw);
        }
        break;
    case BOOLEAN:
        if (PyBool_Check(raw)) {
            return put_value(b, raw, row->depth);
        }
        break;
    case NUMBER:
        if ((PyObject *)Py_TYPE(raw) == decimal_type) {
            return put_decimal(b, raw);
        }
        if (PyLong_CheckExact(raw)) {
            return put_int(b, raw);
        }
        break;
    case PADDED:
        if (PyUnicode_CheckExact(raw)) {
            return put_padded(b, raw);
        }
        break;
    case TIMESTAMPTZ:
        if (PyUnicode_CheckExact(raw)) {
            int written = put_timestamptz(b, raw);
            if (written <= 0) {
                return written;
            }
        }
        break;
    case CONVERTED:
        break;
    default:
        return -1;
    }
    return put_converted(b, row, declared, raw);
}

static int
put_column(Buffer *b, const Row *row, PyObject *image, PyObject *column)
{
    PyObject *raw = PyDict_GetItemWithError(image, column);
    if (raw == NULL) {
        return -1; /* not carried: the general reader says what it is */
    }
    if (raw == Py_None) {
        return PUT_LITERAL(b, "null");
    }
    PyObject *declared = PyDict_GetItemWithError(row->types, column);
    if (declared == NULL) {
        return -1;
    }
    /* Held while Python code runs (a kind made on first sight, a converter):
     * the dicts they were borrowed from could change meanwhile. */
    Py_INCREF(raw);
    Py_INCREF(declared);
    int result = put_value_of_kind(b, row, declared, raw);
    Py_DECREF(declared);
    Py_DECREF(raw);
    return result;
}

static int
put_fields(Buffer *b, const Row *row, PyObject *fields)
{
    if (!PyTuple_Check(fields) || PUT_LITERAL(b, "{") < 0) {
        return -1;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(fields);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *field = PyTuple_GET_ITEM(fields, i);
        if (!PyTuple_Check(field) || PyTuple_GET_SIZE(field) != 3) {
            return -1;
        }
        PyObject *key = PyTuple_GET_ITEM(field, 0);
        long how = PyLong_AsLong(PyTuple_GET_ITEM(field, 1));
        PyObject *what = PyTuple_GET_ITEM(field, 2);
        if (!PyBytes_Check(key) || (i > 0 && PUT_LITERAL(b, ",") < 0) ||
            put_bytes(b, key) < 0) {
            return -1;
        }
        int failed;
        if (how == COLUMN) {
            failed = put_column(b, row, row->new, what);
        }
        else if (how == OLD_COLUMN) {
            /* No old row (an insert), or one without this column (the key
             * alone): the general reader says what the value is. */
            failed = row->old == Py_None ? -1 : put_column(b, row, row->old, what);
        }
        else if (how == CONSTANT && PyBytes_Check(what)) {
            failed = put_bytes(b, what);
        }
        else if (how == NESTED) {
            Row inner = *row;
            inner.depth++;
            failed = put_fields(b, &inner, what);
        }
        else {
            failed = -1;
        }
        if (failed) {
            return -1;
        }
    }
    return PUT_LITERAL(b, "}");
}

/* ---- the call ------------------------------------------------------------- */

static int
put_template(Buffer *b, PyObject *const *args)
{
    PyObject *template = args[0];
    int depth = (int)PyLong_AsLong(args[9]);
    if (depth < 0 || depth > 64) {
        return -1;
    }
    Row row = {args[2], args[3], args[4], args[5], args[10], depth};
    if (!PyTuple_Check(template) || !PyDict_CheckExact(row.new) ||
        !PyDict_CheckExact(row.types) || !PyDict_Check(row.kinds) ||
        (row.old != Py_None && !PyDict_CheckExact(row.old))) {
        return -1;
    }
    Py_ssize_t fields_start = -1, fields_end = -1;
    Py_ssize_t count = PyTuple_GET_SIZE(template);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *part = PyTuple_GET_ITEM(template, i);
        int failed;
        if (PyBytes_Check(part)) {
            failed = put_bytes(b, part);
        }
        else {
            switch (PyLong_AsLong(part)) {
            case FIELDS:
                if (fields_start < 0) {
                    fields_start = b->len;
                    failed = put_fields(b, &row, args[1]);
                    fields_end = b->len;
                }
                else { /* an identify's traits, again in its context */
                    Py_ssize_t len = fields_end - fields_start;
                    failed = reserve(b, len);
                    if (!failed) {
                        memcpy(b->data + b->len, b->data + fields_start, (size_t)len);
                        b->len += len;
                    }
                }
                break;
            case MESSAGE_ID:
                failed = !PyUnicode_CheckExact(args[6]) || put_str(b, args[6]);
                break;
            case USER_ID:
                failed = !PyUnicode_CheckExact(args[7]) || put_str(b, args[7]);
                break;
            case TIMESTAMP:
                failed = !PyUnicode_CheckExact(args[8]) || put_str(b, args[8]);
                break;
            default:
                failed = -1;
            }
        }
        if (failed) {
            return -1;
        }
    }
    return 0;
}

static PyObject *
write_call(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "write() takes 11 arguments");
        return NULL;
    }
    if (dumps == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "write() before configure()");
        return NULL;
    }
    Buffer b;
    b.data = b.small;
    b.len = 0;
    b.cap = (Py_ssize_t)sizeof(b.small);
    PyObject *result = NULL;
    if (put_template(&b, args) == 0) {
        result = PyBytes_FromStringAndSize(b.data, b.len);
    }
    if (b.data != b.small) {
        PyMem_Free(b.data);
    }
    if (result == NULL) {
        PyErr_Clear(); /* the mapper's general path meets it and says what */
        Py_RETURN_NONE;
    }
    return result;
}

/* ---- messageIds ---------------------------------------------------------- */

/* BLAKE2b (RFC 7693) with a 16-byte digest, unkeyed: what ids.digest hashes
 * with hashlib, here without a Python object per step. */

static const uint64_t blake2b_iv[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL,
    0xA54FF53A5F1D36F1ULL, 0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL,
    0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL,
};

static const uint8_t blake2b_sigma[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

static inline uint64_t
rotr64(uint64_t x, int n)
{
    return (x >> n) | (x << (64 - n));
}

static inline uint64_t
load64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

#define MIX(a, b, c, d, x, y)           \
    do {                                \
        v[a] = v[a] + v[b] + (x);       \
        v[d] = rotr64(v[d] ^ v[a], 32); \
        v[c] = v[c] + v[d];             \
        v[b] = rotr64(v[b] ^ v[c], 24); \
        v[a] = v[a] + v[b] + (y);       \
        v[d] = rotr64(v[d] ^ v[a], 16); \
        v[c] = v[c] + v[d];             \
        v[b] = rotr64(v[b] ^ v[c], 63); \
    } while (0)

static void
blake2b_compress(uint64_t h[8], const unsigned char block[128], uint64_t counted,
                 int last)
{
    uint64_t v[16], m[16];
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = blake2b_iv[i];
    }
    v[12] ^= counted; /* the counter's high word stays 0: ids are short */
    if (last) {
        v[14] = ~v[14];
    }
    for (int i = 0; i < 16; i++) {
        m[i] = load64(block + 8 * i);
    }
    for (int round = 0; round < 12; round++) {
        const uint8_t *s = blake2b_sigma[round];
        MIX(0, 4, 8, 12, m[s[0]], m[s[1]]);
        MIX(1, 5, 9, 13, m[s[2]], m[s[3]]);
        MIX(2, 6, 10, 14, m[s[4]], m[s[5]]);
        MIX(3, 7, 11, 15, m[s[6]], m[s[7]]);
        MIX(0, 5, 10, 15, m[s[8]], m[s[9]]);
        MIX(1, 6, 11, 12, m[s[10]], m[s[11]]);
        MIX(2, 7, 8, 13, m[s[12]], m[s[13]]);
        MIX(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++) {
        h[i] ^= v[i] ^ v[i + 8];
    }
}

#define ID_DIGEST_BYTES 16

/* "cdct-" and the hex of the 16-byte BLAKE2b of ``data``, as ids.digest. */
static PyObject *
digest_id(const unsigned char *data, Py_ssize_t len)
{
    static const char hex[] = "0123456789abcdef";
    uint64_t h[8];
    for (int i = 0; i < 8; i++) {
        h[i] = blake2b_iv[i];
    }
    h[0] ^= 0x01010000ULL ^ ID_DIGEST_BYTES;
    uint64_t counted = 0;
    while (len > 128) {
        counted += 128;
        blake2b_compress(h, data, counted, 0);
        data += 128;
        len -= 128;
    }
    unsigned char block[128] = {0};
    memcpy(block, data, (size_t)len);
    counted += (uint64_t)len;
    blake2b_compress(h, block, counted, 1);
    PyObject *id = PyUnicode_New(5 + 2 * ID_DIGEST_BYTES, 127);
    if (id == NULL) {
        return NULL;
    }
    Py_UCS1 *o = PyUnicode_1BYTE_DATA(id);
    memcpy(o, "cdct-", 5);
    o += 5;
    for (int i = 0; i < ID_DIGEST_BYTES; i++) {
        unsigned char byte = (unsigned char)(h[i / 8] >> (8 * (i % 8)));
        *o++ = (Py_UCS1)hex[byte >> 4];
        *o++ = (Py_UCS1)hex[byte & 15];
    }
    return id;
}

/* str(value)'s UTF-8, as ids.key_text joins it. */
static int
put_text_of(Buffer *b, PyObject *value)
{
    if (PyLong_CheckExact(value)) {
        int overflow;
        long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (!overflow && !(n == -1 && PyErr_Occurred())) {
            char digits[24];
            int len = snprintf(digits, sizeof(digits), "%lld", n);
            return put(b, digits, len);
        }
        PyErr_Clear();
    }
    PyObject *text =
        PyUnicode_CheckExact(value) ? Py_NewRef(value) : PyObject_Str(value);
    if (text == NULL) {
        return -1;
    }
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(text, &len);
    int result = s == NULL ? -1 : put(b, s, len);
    Py_DECREF(text);
    return result;
}

static PyObject *
finish_id(Buffer *b, int failed)
{
    PyObject *id = failed ? NULL : digest_id((const unsigned char *)b->data, b->len);
    if (b->data != b->small) {
        PyMem_Free(b->data);
    }
    return id;
}

/* key_id(prefix, new, key): ids.digest(prefix + ids.key_text(the key's values
 * in new)), a column new lacks read as None, as Mapper._live_id names an
 * insert's calls. */
static PyObject *
key_id(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyDict_Check(args[1]) ||
        !PyTuple_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "key_id(prefix: bytes, new: dict, key: tuple)");
        return NULL;
    }
    Buffer b;
    b.data = b.small;
    b.len = 0;
    b.cap = (Py_ssize_t)sizeof(b.small);
    int failed = put_bytes(&b, args[0]) < 0;
    Py_ssize_t count = PyTuple_GET_SIZE(args[2]);
    for (Py_ssize_t i = 0; i < count && !failed; i++) {
        PyObject *value = PyDict_GetItemWithError(args[1], PyTuple_GET_ITEM(args[2], i));
        if (value == NULL && PyErr_Occurred()) {
            failed = 1;
            break;
        }
        value = value != NULL ? value : Py_None;
        Py_INCREF(value); /* str() of it may run Python code */
        failed = (i > 0 && PUT_LITERAL(&b, "\x1f") < 0) || put_text_of(&b, value) < 0;
        Py_DECREF(value);
    }
    return finish_id(&b, failed);
}

/* position_id_after(prefix, commit_lsn, at): ids.digest(prefix + f"{commit_lsn}\x1e
 * {at}"), the prefix being "{namespace}\x1e{rule}\x1e", as ids.position_id. */
static PyObject *
position_id_after(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "position_id_after(prefix: bytes, commit_lsn: int, at: str | int)");
        return NULL;
    }
    unsigned long long lsn = PyLong_AsUnsignedLongLong(args[1]);
    if (lsn == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    Buffer b;
    b.data = b.small;
    b.len = 0;
    b.cap = (Py_ssize_t)sizeof(b.small);
    char digits[24];
    int len = snprintf(digits, sizeof(digits), "%llu\x1e", lsn);
    int failed = put_bytes(&b, args[0]) < 0 || put(&b, digits, len) < 0 ||
                 put_text_of(&b, args[2]) < 0;
    return finish_id(&b, failed);
}

/* ---- request bodies ------------------------------------------------------ */

/* join_bodies(calls, tail): b'{"batch":[' + each call's body but its closing
 * brace, followed by ``tail`` (its sentAt and the brace), comma-separated +
 * b']}', as batching.request_body joins them; None when a body is not bytes
 * or is shorter than {} plus a key (the Python path handles "{}"). */
static PyObject *
join_bodies(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    static const char open[] = "{\"batch\":[";
    static const char close[] = "]}";
    if (nargs != 2 || !PyList_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "join_bodies(calls: list, tail: bytes)");
        return NULL;
    }
    PyObject *calls = args[0];
    Py_ssize_t count = PyList_GET_SIZE(calls);
    Py_ssize_t tail_len = PyBytes_GET_SIZE(args[1]);
    PyObject **bodies = PyMem_Malloc(sizeof(PyObject *) * (size_t)(count ? count : 1));
    if (bodies == NULL) {
        return PyErr_NoMemory();
    }
    Py_ssize_t total = (Py_ssize_t)sizeof(open) - 1 + (Py_ssize_t)sizeof(close) - 1;
    Py_ssize_t got = 0;
    PyObject *result = NULL;
    for (; got < count; got++) {
        PyObject *body = PyObject_GetAttr(PyList_GET_ITEM(calls, got), body_name);
        if (body == NULL) {
            goto done;
        }
        bodies[got] = body;
        if (!PyBytes_Check(body) || PyBytes_GET_SIZE(body) < 3) {
            got++;
            Py_INCREF(Py_None);
            result = Py_None;
            goto done;
        }
        total += PyBytes_GET_SIZE(body) - 1 + tail_len + (got > 0);
    }
    result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL) {
        goto done;
    }
    char *o = PyBytes_AS_STRING(result);
    memcpy(o, open, sizeof(open) - 1);
    o += sizeof(open) - 1;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (i > 0) {
            *o++ = ',';
        }
        Py_ssize_t len = PyBytes_GET_SIZE(bodies[i]) - 1;
        memcpy(o, PyBytes_AS_STRING(bodies[i]), (size_t)len);
        o += len;
        memcpy(o, PyBytes_AS_STRING(args[1]), (size_t)tail_len);
        o += tail_len;
    }
    memcpy(o, close, sizeof(close) - 1);
done:
    for (Py_ssize_t i = 0; i < got; i++) {
        Py_DECREF(bodies[i]);
    }
    PyMem_Free(bodies);
    return result;
}

/* ---- userIds -------------------------------------------------------------- */

static int
is_ascii_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1C && c <= 0x1F);
}

/* The userId of a column's raw value of this kind, in the two common cases:
 * an integer (its decimal text) and an ASCII text with nothing to strip; None
 * for anything else. */
static PyObject *
user_text_of(PyObject *raw, int kind)
{
    if (PyLong_CheckExact(raw) && (kind == SAME || kind == INTEGER || kind == NUMBER)) {
        return PyObject_Str(raw);
    }
    if (PyUnicode_CheckExact(raw) && (kind == SAME || kind == PADDED) &&
        PyUnicode_IS_ASCII(raw)) {
        Py_ssize_t len = PyUnicode_GET_LENGTH(raw);
        const unsigned char *s = PyUnicode_1BYTE_DATA(raw);
        if (len > 0 && !is_ascii_space(s[0]) && !is_ascii_space(s[len - 1])) {
            return Py_NewRef(raw);
        }
    }
    Py_RETURN_NONE;
}

/* user_text(new, types, kinds, column): the userId Mapper._user_id makes of a
 * bare column of the new row, in user_text_of's cases; None for anything else
 * (absent, null, another type or kind, spaces at its ends, non-ASCII), which
 * the Python path reads, converts and explains. */
static PyObject *
user_text(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4 || !PyDict_Check(args[0]) || !PyDict_Check(args[1]) ||
        !PyDict_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "user_text(new: dict, types: dict, kinds: dict, column: str)");
        return NULL;
    }
    PyObject *raw = PyDict_GetItemWithError(args[0], args[3]);
    PyObject *declared = raw == NULL ? NULL : PyDict_GetItemWithError(args[1], args[3]);
    if (declared == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    /* Held while a kind made on first sight runs Python code. */
    Py_INCREF(raw);
    Py_INCREF(declared);
    int kind = kind_of(args[2], declared);
    PyObject *result = kind < 0 ? NULL : user_text_of(raw, kind);
    Py_DECREF(declared);
    Py_DECREF(raw);
    return result;
}

static PyObject *
configure(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *decimal, *dump;
    if (!PyArg_ParseTuple(args, "OO:configure", &decimal, &dump)) {
        return NULL;
    }
    Py_XSETREF(decimal_type, Py_NewRef(decimal));
    Py_XSETREF(dumps, Py_NewRef(dump));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"write", (PyCFunction)(void (*)(void))write_call, METH_FASTCALL,
     "write(template, fields, new, types, kinds, outputs, message_id, user_id,\n"
     "      timestamp, depth, old) -> bytes | None\n\n"
     "A call's body as the mapper's Python path writes it; None to leave the\n"
     "call to that path."},
    {"key_id", (PyCFunction)(void (*)(void))key_id, METH_FASTCALL,
     "key_id(prefix, new, key) -> str: an insert's messageId (see ids.py)."},
    {"position_id_after", (PyCFunction)(void (*)(void))position_id_after, METH_FASTCALL,
     "position_id_after(prefix, commit_lsn, at) -> str: a change's messageId by its\n"
     "WAL position (see ids.py)."},
    {"join_bodies", (PyCFunction)(void (*)(void))join_bodies, METH_FASTCALL,
     "join_bodies(calls, tail) -> bytes | None: a request body (see batching.py)."},
    {"user_text", (PyCFunction)(void (*)(void))user_text, METH_FASTCALL,
     "user_text(new, types, kinds, column) -> str | None: a bare column's userId."},
    {"configure", configure, METH_VARARGS,
     "configure(decimal_type, dumps): what write() calls on."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "_writer",
    "A one-pass writer of calls (see mapping/mapper.py).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__writer(void)
{
    body_name = PyUnicode_InternFromString("body");
    if (body_name == NULL) {
        return NULL;
    }
    return PyModule_Create(&module_def);
}
