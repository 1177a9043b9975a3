/*
 * KFENCE_OPTIONS: key=value items in the sanitizers' grammar (separated by
 * spaces, commas, colons, tabs or newlines; a value may be quoted).  The
 * parser runs before anything else in the process may be ready (from the
 * preload's constructor, or inside the first malloc), so it never allocates
 * and never fails: a bad item gets one warning line and the default stays.
 * Its memory is the stack and static storage.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <string.h>
#include <sys/auxv.h>

#include "kf_internal.h"

struct kf_options kf_opt;

enum kf_opt_kind { KF_T_UINT, KF_T_MS, KF_T_POW2, KF_T_BOOL, KF_T_PLACEMENT, KF_T_STR };

struct kf_option {
	struct kfence_option_desc pub;  /* what Python sees */
	enum kf_opt_kind kind;
	size_t offset;  /* of the field in struct kf_options */
};

static const struct kf_option kf_options_table[] = {
#define KF_OPTION(type, name, def, min, max, when, desc) \
	{ { #name, #type, def, #when, desc, min, max }, KF_T_##type, \
	  offsetof(struct kf_options, name) },
#include "options.inc"
#undef KF_OPTION
};
#define KF_NUM_OPTIONS (sizeof(kf_options_table) / sizeof(kf_options_table[0]))

/* A RUNTIME option is a uint32_t of the control block too: its values must fit... */
/* ... and a number: the controller writes it as one (a PLACEMENT or STR one fails to build). */
#define KF_RUNTIME_NUMBER_UINT 1
#define KF_RUNTIME_NUMBER_MS 1
#define KF_RUNTIME_NUMBER_POW2 1
#define KF_RUNTIME_NUMBER_BOOL 1
#define KF_FITS_CONTROL_RUNTIME(type, name, max) \
	_Static_assert((max) <= UINT32_MAX && KF_RUNTIME_NUMBER_##type, \
		       #name " does not fit the control block");
#define KF_FITS_CONTROL_START(type, name, max)
#define KF_OPTION(type, name, def, min, max, when, desc) KF_FITS_CONTROL_##when(type, name, max)
#include "options.inc"
#undef KF_OPTION


/* === Values === */

static bool kf_parse_uint(const char *s, size_t n, uint64_t *out)
{
	uint64_t v = 0;
	if (n == 0 || n > 19)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	*out = v;
	return true;
}

static bool kf_word_is(const char *s, size_t n, const char *word)
{
	return strlen(word) == n && strncmp(s, word, n) == 0;
}

/* Store value s[0..n) into option d of o; false if the value is not acceptable. */
static bool kf_set_value(struct kf_options *o, const struct kf_option *d, const char *s,
			 size_t n)
{
	void *field = (char *)o + d->offset;
	uint64_t v;
	switch (d->kind) {
	case KF_T_UINT:
	case KF_T_MS:
	case KF_T_POW2:
		if (!kf_parse_uint(s, n, &v) || v < d->pub.min || v > d->pub.max)
			return false;
		if (d->kind == KF_T_POW2 && (v & (v - 1)))
			return false;
		*(uint64_t *)field = v;
		return true;
	case KF_T_BOOL:
		if (kf_word_is(s, n, "1") || kf_word_is(s, n, "true") ||
		    kf_word_is(s, n, "yes") || kf_word_is(s, n, "on"))
			*(bool *)field = true;
		else if (kf_word_is(s, n, "0") || kf_word_is(s, n, "false") ||
			 kf_word_is(s, n, "no") || kf_word_is(s, n, "off"))
			*(bool *)field = false;
		else
			return false;
		return true;
	case KF_T_PLACEMENT:
		for (int i = 0; i < KFENCE_PLACEMENT_KINDS; i++) {
			if (kf_word_is(s, n, kfence_placement_name(i))) {
				*(int *)field = i;
				return true;
			}
		}
		return false;
	case KF_T_STR:
		if (n >= sizeof(kf_opt.report_path))
			return false;
		memcpy(field, s, n);
		((char *)field)[n] = '\0';
		return true;
	}
	return false;
}

/* The value of option d in o, as text, into out[cap]. */
static const char *kf_format_value(const struct kf_options *o, const struct kf_option *d,
				   char *out, size_t cap)
{
	const void *field = (const char *)o + d->offset;
	struct kf_buf b = { out, 0, cap - 1 };
	switch (d->kind) {
	case KF_T_UINT:
	case KF_T_MS:
	case KF_T_POW2:
		kf_buf_dec(&b, *(const uint64_t *)field);
		break;
	case KF_T_BOOL:
		kf_buf_str(&b, *(const bool *)field ? "1" : "0");
		break;
	case KF_T_PLACEMENT:
		kf_buf_str(&b, kfence_placement_name(*(const int *)field));
		break;
	case KF_T_STR:
		kf_buf_str(&b, (const char *)field);
		break;
	}
	out[b.len] = '\0';
	return out;
}

static void kf_expectation(const struct kf_option *d, char *out, size_t cap)
{
	struct kf_buf b = { out, 0, cap - 1 };
	switch (d->kind) {
	case KF_T_UINT:
	case KF_T_MS:
	case KF_T_POW2:
		kf_buf_str(&b, d->kind == KF_T_POW2 ? "a power of two in " : "an integer in ");
		kf_buf_dec(&b, d->pub.min);
		kf_buf_str(&b, "..");
		kf_buf_dec(&b, d->pub.max);
		if (d->kind == KF_T_MS)
			kf_buf_str(&b, " ms");
		break;
	case KF_T_BOOL:
		kf_buf_str(&b, "0/1, true/false, yes/no or on/off");
		break;
	case KF_T_PLACEMENT:
		for (int i = 0; i < KFENCE_PLACEMENT_KINDS; i++) {
			kf_buf_str(&b, i ? (i == KFENCE_PLACEMENT_KINDS - 1 ? " or " : ", ") : "");
			kf_buf_str(&b, kfence_placement_name(i));
		}
		break;
	case KF_T_STR:
		kf_buf_str(&b, "a path shorter than 256 bytes");
		break;
	}
	out[b.len] = '\0';
}

/* === Grammar === */

/* The sanitizers' separators (sanitizer_common's flag parser takes '\r' too). */
static bool kf_is_separator(char c)
{
	return c == ' ' || c == ',' || c == ':' || c == '\t' || c == '\n' || c == '\r';
}

int kfence_options_next(const char *text, size_t *pos, struct kfence_options_item *item)
{
	size_t p = *pos;
	while (text[p] && kf_is_separator(text[p]))
		p++;
	*item = (struct kfence_options_item){ .start = p, .key = p };
	if (!text[p]) {
		*pos = p;
		return 0;
	}
	while (text[p] && text[p] != '=' && !kf_is_separator(text[p]))
		p++;
	item->key_len = p - item->key;
	if (text[p] != '=') {
		item->status = KFENCE_ITEM_NOT_KEY_VALUE;
	} else if (text[++p] == '\'' || text[p] == '"') {
		const char *close = strchr(text + p + 1, text[p]);
		item->value = p + 1;
		if (close) {
			item->value_len = (size_t)(close - (text + item->value));
			p = (size_t)(close - text) + 1;
		} else {
			item->value_len = strlen(text + item->value);
			p = item->value + item->value_len;
			item->status = KFENCE_ITEM_UNTERMINATED;
		}
	} else {
		item->value = p;
		while (text[p] && !kf_is_separator(text[p]))
			p++;
		item->value_len = p - item->value;
	}
	item->len = p - item->start;
	*pos = p;
	return 1;
}

/* The quote a value needs in KFENCE_OPTIONS: 0 none, ' or "; -1 when it cannot be written. */
static int kf_value_quote(const char *s, size_t n)
{
	bool plain = n == 0 || (s[0] != '\'' && s[0] != '"');
	for (size_t i = 0; i < n && plain; i++)
		plain = !kf_is_separator(s[i]);
	if (plain)
		return 0;
	if (!memchr(s, '\'', n))
		return '\'';
	return memchr(s, '"', n) ? -1 : '"';
}

/* A value as KFENCE_OPTIONS writes it: quoted when it holds a separator. */
static void kf_buf_value(struct kf_buf *b, const char *value)
{
	int q = kf_value_quote(value, strlen(value));
	char quote[2] = { q > 0 ? (char)q : '\0', '\0' };
	kf_buf_str(b, quote);
	kf_buf_str(b, value);
	kf_buf_str(b, quote);
}

/* === Parser === */

static void kf_defaults_into(struct kf_options *o)
{
	for (size_t i = 0; i < KF_NUM_OPTIONS; i++) {
		const struct kf_option *d = &kf_options_table[i];
		kf_set_value(o, d, d->pub.default_value, strlen(d->pub.default_value));
	}
}

void kf_options_defaults(void)
{
	kf_defaults_into(&kf_opt);
}

/* One item of text into o; returns 1 if it was refused (and warned about). */
static int kf_parse_item(struct kf_options *o, const char *text,
			 const struct kfence_options_item *it, const char *origin, bool quiet)
{
	char item[160], expect[96], current[272];
	size_t shown = it->len < sizeof(item) - 1 ? it->len : sizeof(item) - 1;
	memcpy(item, text + it->start, shown);
	item[shown] = '\0';

	if (it->status == KFENCE_ITEM_NOT_KEY_VALUE) {
		if (!quiet)
			kf_warn("'", item, "' in ", origin, " is not key=value; ignored", NULL);
		return 1;
	}
	if (it->status == KFENCE_ITEM_UNTERMINATED) {
		if (!quiet)
			kf_warn("'", item, "' in ", origin, " has no closing quote; ignored", NULL);
		return 1;
	}
	const char *s = text + it->key;
	size_t klen = it->key_len;
	for (size_t i = 0; i < KF_NUM_OPTIONS; i++) {
		const struct kf_option *d = &kf_options_table[i];
		if (!kf_word_is(s, klen, d->pub.name))
			continue;
		if (kf_set_value(o, d, text + it->value, it->value_len))
			return 0;
		kf_expectation(d, expect, sizeof(expect));
		if (!quiet)
			kf_warn("bad value in ", origin, " '", item, "': expected ", expect, "; keeping ",
			d->pub.name, "=", kf_format_value(o, d, current, sizeof(current)), NULL);
		return 1;
	}
	item[klen < shown ? klen : shown] = '\0';
	if (!quiet)
		kf_warn("unknown option '", item, "' in ", origin, "; ignored", NULL);
	return 1;
}

static int kf_parse_into(struct kf_options *o, const char *text, const char *origin, bool quiet)
{
	int refused = 0;
	size_t pos = 0;
	struct kfence_options_item it;
	while (text && kfence_options_next(text, &pos, &it))
		refused += kf_parse_item(o, text, &it, origin, quiet);
	return refused;
}

/* === help=1 === */

/*
 * The option table on stderr, as the sanitizers' help=1 prints their flags:
 * each option with the value in force, its default, the values it takes,
 * when it takes effect and what it does, all from options.inc.  Not where
 * reports go: a user who asked for it is reading the program's stderr.
 */
static void kf_options_help(void)
{
	static const char intro[] =
		"kfence: KFENCE_OPTIONS is name=value items separated by spaces, commas, colons, "
		"tabs or newlines; a value that holds one goes in quotes ('...' or \"...\").\n"
		"kfence: name=value in force (default; values; when it takes effect), then what it "
		"does:\n";
	kf_os_write_all(2, intro, sizeof(intro) - 1);
	for (size_t i = 0; i < KF_NUM_OPTIONS; i++) {
		const struct kf_option *d = &kf_options_table[i];
		char line[768], value[272], expect[96];
		struct kf_buf b = { line, 0, sizeof(line) - 1 };
		kf_expectation(d, expect, sizeof(expect));
		kf_buf_str(&b, "  ");
		kf_buf_str(&b, d->pub.name);
		kf_buf_str(&b, "=");
		kf_buf_value(&b, kf_format_value(&kf_opt, d, value, sizeof(value)));
		kf_buf_str(&b, " (default ");
		kf_buf_str(&b, d->pub.default_value[0] ? d->pub.default_value : "empty");
		kf_buf_str(&b, "; ");
		kf_buf_str(&b, expect);
		kf_buf_str(&b, strcmp(d->pub.when, "RUNTIME") == 0 ? "; at run time)\n      "
								    : "; at start)\n      ");
		kf_buf_str(&b, d->pub.description);
		line[b.len++] = '\n';
		kf_os_write_all(2, line, b.len);
	}
}

/*
 * Checks of the whole set, once it is parsed.  secure_getenv() semantics for
 * paths: in a setuid, setgid or file-capability program (AT_SECURE) the
 * environment belongs to a less privileged user, who must not choose where
 * the privileged process creates and writes files.  Options passed to
 * kfence_init() count too: the Python package adds KFENCE_OPTIONS to them.
 */
static void kf_options_check_set(void)
{
	if (getauxval(AT_SECURE) && (kf_opt.report_path[0] || kf_opt.state_dir[0])) {
		kf_opt.report_path[0] = '\0';
		kf_opt.state_dir[0] = '\0';
		kf_warn("report_path and state_dir ignored in a setuid/setgid/capability program "
			"(AT_SECURE): its environment may be another user's", NULL);
	}
	/* Below malloc's alignment only right-placed objects can end up (random: half of them). */
	if (kf_opt.align < 2 * sizeof(void *) && kf_opt.placement != KFENCE_PLACE_LEFT) {
		char a[24], g[24];
		struct kf_buf ba = { a, 0, sizeof(a) - 1 }, bg = { g, 0, sizeof(g) - 1 };
		kf_buf_dec(&ba, kf_opt.align);
		kf_buf_dec(&bg, 2 * sizeof(void *));
		a[ba.len] = g[bg.len] = '\0';
		kf_warn("align=", a, " with placement=", kfence_placement_name(kf_opt.placement),
			": guarded objects may be aligned to less than malloc's ", g,
			" bytes; programs that rely on it may crash (CPython does)", NULL);
	}
}

void kf_options_parse(const char *text, const char *origin)
{
	/*
	 * Warnings go where reports go (kfence-py run: to the controller, not the
	 * program's stderr), so report_path is found first, quietly; never in a
	 * privileged program (see below).
	 */
	struct kf_options first;
	kf_defaults_into(&first);
	kf_parse_into(&first, text, origin, true);
	if (!getauxval(AT_SECURE))
		memcpy(kf_opt.report_path, first.report_path, sizeof(kf_opt.report_path));
	kf_parse_into(&kf_opt, text, origin, false);
	kf_options_check_set();
	if (kf_opt.help && kf_first_in_tree("help=1"))
		kf_options_help();
}

int kfence_options_check(const char *text)
{
	struct kf_options scratch;
	kf_defaults_into(&scratch);
	return kf_parse_into(&scratch, text, "the options", false);
}

/* === The table, for Python === */

size_t kfence_option_count(void)
{
	return KF_NUM_OPTIONS;
}

const struct kfence_option_desc *kfence_option_desc(size_t i)
{
	return i < KF_NUM_OPTIONS ? &kf_options_table[i].pub : NULL;
}

static const struct kf_option *kf_option_named(const char *name, size_t n)
{
	for (size_t i = 0; i < KF_NUM_OPTIONS; i++)
		if (kf_word_is(name, n, kf_options_table[i].pub.name))
			return &kf_options_table[i];
	return NULL;
}

static void kf_copy_out(char *out, size_t cap, const char *s)
{
	if (!out || !cap)
		return;
	struct kf_buf b = { out, 0, cap - 1 };
	kf_buf_str(&b, s);
	out[b.len] = '\0';
}

int kfence_option_normalize(const char *key, const char *value, char *out, size_t out_size,
			    char *why, size_t why_size)
{
	char text[272];
	const struct kf_option *d = key ? kf_option_named(key, strlen(key)) : NULL;
	if (!d || !value) {
		kf_copy_out(why, why_size, d ? "no value" : "unknown option");
		return -1;
	}
	struct kf_options scratch;
	size_t n = strlen(value);
	if (!kf_set_value(&scratch, d, value, n)) {
		kf_expectation(d, text, sizeof(text));
		char line[360];
		struct kf_buf b = { line, 0, sizeof(line) - 1 };
		kf_buf_str(&b, "expected ");
		kf_buf_str(&b, text);
		line[b.len] = '\0';
		kf_copy_out(why, why_size, line);
		return -1;
	}
	/* Quoted, a separator can be written; with both quotes in it, nothing holds it. */
	if (kf_value_quote(value, n) < 0) {
		kf_copy_out(why, why_size, "expected a value KFENCE_OPTIONS can hold: one with a "
			    "separator is quoted, so it cannot have both ' and \"");
		return -1;
	}
	kf_copy_out(out, out_size, kf_format_value(&scratch, d, text, sizeof(text)));
	return 0;
}

int kfence_option_item(const char *key, const char *value, char *out, size_t out_size,
		       char *why, size_t why_size)
{
	char canonical[272];
	if (kfence_option_normalize(key, value, canonical, sizeof(canonical), why, why_size))
		return -1;
	char line[560];
	struct kf_buf b = { line, 0, sizeof(line) - 1 };
	kf_buf_str(&b, key);
	kf_buf_str(&b, "=");
	kf_buf_value(&b, canonical);
	line[b.len] = '\0';
	if (b.len >= out_size) {
		kf_copy_out(why, why_size, "no room for the item");
		return -1;
	}
	kf_copy_out(out, out_size, line);
	return 0;
}

const char *kfence_option_value(const char *name)
{
	static char values[KF_NUM_OPTIONS][272];
	for (size_t i = 0; i < KF_NUM_OPTIONS; i++)
		if (strcmp(kf_options_table[i].pub.name, name) == 0)
			return kf_format_value(&kf_opt, &kf_options_table[i], values[i],
					       sizeof(values[i]));
	return NULL;
}
