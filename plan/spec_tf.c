/* spec_tf.c — the parts of a spec with "semantics": "transformers" (docs/spec.md): renames as
 * transformers' WeightRenaming / GroupWeightRename / PrefixChange, converter patterns as its
 * WeightConverter patterns (regexes, `.*.` the list index). Matching and renaming: rename.c. */
#define _GNU_SOURCE
#include "plan_internal.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TF_FAIL(path, ...) return mpk_error_set(err, MPK_E_SPEC, 0, where, "%s: " __VA_ARGS__)

static const char *const META = ".[]()*+?{}|^$\\";

/* text with every regex metacharacter escaped, in a (NULL when out of memory). */
static char *escaped(mpk_arena *a, const char *text, size_t len)
{
    char *e = mpk_arena_alloc(a, 2 * len + 1);
    size_t n = 0;
    for (size_t i = 0; e && i < len; i++) {
        if (strchr(META, text[i]))
            e[n++] = '\\';
        e[n++] = text[i];
    }
    return e;
}

/* A target as transformers' process_target_pattern leaves it: leading ^ and trailing $ dropped,
 * \. read as '.'. Other escapes stay (\1 ...). */
static char *processed_target(mpk_arena *a, const char *t)
{
    size_t l = strlen(t);
    if (*t == '^')
        t++, l--;
    if (l && t[l - 1] == '$' && (l < 2 || t[l - 2] != '\\'))
        l--;
    char *o = mpk_arena_alloc(a, l + 1);
    size_t n = 0;
    for (size_t i = 0; o && i < l; i++) {
        if (t[i] == '\\' && i + 1 < l && t[i + 1] == '.')
            i++;
        o[n++] = t[i];
    }
    return o;
}

/* Spells p out as parts: the text with escapes read, `.*.` (at star_at) a list capture; false
 * when the pattern is more than literal text (its names cannot be written from it). */
static bool literal_parts(mpk_arena *a, const char *text, const char *star_at, mpk_pattern *p)
{
    char *lit = mpk_arena_alloc(a, strlen(text) + 1);
    size_t n = 0;
    const char *pre_end = NULL;
    if (!lit)
        return false;
    for (const char *s = text; *s; s++) {
        if (s == star_at) {
            lit[n++] = '.';
            pre_end = lit + n;
            lit[n++] = 0; /* the capture's place */
            lit[n++] = '.';
            s += 2;
        } else if (*s == '\\') {
            if (!s[1] || isalnum((unsigned char)s[1]))
                return false;
            lit[n++] = *++s;
        } else if (*s != '.' && strchr(META, *s)) {
            return false;
        } else {
            lit[n++] = *s;
        }
    }
    bool experts = pre_end && pre_end - lit >= 8 && memcmp(pre_end - 8, "experts.", 8) == 0;
    const char *cap = experts ? "expert" : "index";
    if (!pre_end) {
        p->parts[0].s = lit, p->parts[0].len = n, p->n_parts = 1;
        return true;
    }
    p->parts[0].s = lit, p->parts[0].len = (size_t)(pre_end - lit);
    p->parts[1].capture = true, p->parts[1].s = cap, p->parts[1].len = strlen(cap);
    p->parts[2].s = pre_end + 1, p->parts[2].len = n - (size_t)(pre_end + 1 - lit);
    p->n_parts = 3;
    return true;
}

mpk_status spec_tf_pattern(mpk_spec *s, const char *text, bool source, mpk_pattern *p, const char *where,
                           const char *path, mpk_error *err)
{
    memset(p, 0, sizeof *p);
    p->text = text;
    if (!*text)
        TF_FAIL(path, "pattern is empty", path);
    if (strchr(text, '('))
        TF_FAIL(path, "pattern '%s': converter patterns take no groups (no mapping uses them)", path, text);
    const char *form = source ? text : processed_target(s->arena, text);
    const char *star = form ? strstr(form, ".*.") : NULL;
    if (!form)
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    if (star && strstr(star + 1, ".*."))
        TF_FAIL(path, "pattern '%s': more than one `.*.` (one list index per pattern)", path, text);
    p->literal = literal_parts(s->arena, form, star, p);
    if (!source && !p->literal)
        TF_FAIL(path, "target '%s' must be literal text (with at most one `.*.`)", path, text);
    size_t pre = star ? (size_t)(star - form) : strlen(form);
    char *rx;
    if (source) /* transformers' compile: `.*.` -> \..*\. (here with the index as a group) */
        rx = star ? mpk_arena_printf(s->arena, "%.*s\\.(.*)\\.%s", (int)pre, form, star + 3) : (char *)form;
    else {
        char *a = escaped(s->arena, form, pre), *b = star ? escaped(s->arena, star + 3, strlen(star + 3)) : NULL;
        rx = a && (b || !star) ? mpk_arena_printf(s->arena, "%s%s%s", a, star ? "\\.(.*)\\." : "", b ? b : "") : NULL;
    }
    if (!rx)
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    p->star = star ? 1 : 0;
    return plan_regex_compile(s, rx, path, &p->rx, err);
}

/* The list capture of a transformers rule: the `.*.` of all its sources or all its targets. */
mpk_status spec_tf_list(mpk_rule *r, const char *where, mpk_error *err)
{
    const char *path = r->path;
    int ss = 0, ts = 0;
    for (int i = 0; i < r->n_sources; i++)
        ss += r->sources[i].star > 0;
    for (int i = 0; i < r->n_targets; i++)
        ts += r->targets[i].star > 0;
    if ((ss && ss != r->n_sources) || (ts && ts != r->n_targets) || (ss && ts))
        TF_FAIL(path, "`.*.` (the list index) must be in all sources or all targets, not both", path);
    r->list_in_sources = ss > 0;
    const mpk_pattern *p = ss ? &r->sources[0] : ts ? &r->targets[0] : NULL;
    r->list_capture = p && p->n_parts == 3 ? p->parts[1].s : ss || ts ? "index" : NULL;
    for (int i = 0; i < r->n_sources + r->n_targets && r->list_capture; i++) {
        const mpk_pattern *q = i < r->n_sources ? &r->sources[i] : &r->targets[i - r->n_sources];
        if (q->n_parts == 3 && strcmp(q->parts[1].s, r->list_capture) != 0)
            TF_FAIL(path, "the list index must follow `experts.` in all patterns or in none", path);
    }
    return MPK_OK;
}

/* One regex rename (a group member or alone) into r: compiled, its inverse derived. */
static mpk_status tf_regex(mpk_spec *s, const cJSON *e, mpk_rename *r, const char *where, mpk_error *err)
{
    const char *path = r->path;
    const cJSON *rx = cJSON_GetObjectItemCaseSensitive(e, "regex"), *lit = cJSON_GetObjectItemCaseSensitive(e, "from");
    const cJSON *to = cJSON_GetObjectItemCaseSensitive(e, "to");
    if (!cJSON_IsObject(e) || !cJSON_IsString(to) || (!cJSON_IsString(rx) == !cJSON_IsString(lit)))
        TF_FAIL(path, "a rename needs \"regex\" (or literal \"from\") and \"to\" strings, or is "
                      "{\"group\": [...]} or {\"prefix_remove\"/\"prefix_add\": ...}", path);
    const char *src = cJSON_IsString(rx) ? rx->valuestring : escaped(s->arena, lit->valuestring,
                                                                     strlen(lit->valuestring));
    char *t = processed_target(s->arena, to->valuestring);
    if (!src || !t)
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    if (!*src)
        TF_FAIL(path, "pattern is empty", path);
    for (const char *q = t; *q; q++)
        if (*q == '\\' && !isdigit((unsigned char)q[1]))
            TF_FAIL(path, "\"to\" '%s': only \\1..\\N may follow a backslash", path, to->valuestring);
    r->kind = MPK_RENAME_REGEX;
    r->from = src;
    r->to = t;
    MPK_TRY(plan_regex_compile(s, src, path, &r->rx, err));
    r->inv_why = plan_rename_inverse(s->arena, src, t, &r->inv_from, &r->inv_to);
    if (!r->inv_why && plan_regex_compile(s, r->inv_from, path, &r->inv_rx, err) != MPK_OK)
        r->inv_why = "its inverse is not a pattern moepack can run";
    return MPK_OK;
}

static mpk_status tf_prefix(const cJSON *e, mpk_rename *r, const char *where, mpk_error *err)
{
    const char *path = r->path;
    const cJSON *add = cJSON_GetObjectItemCaseSensitive(e, "prefix_add");
    const cJSON *rm = cJSON_GetObjectItemCaseSensitive(e, "prefix_remove");
    const cJSON *mp = cJSON_GetObjectItemCaseSensitive(e, "model_prefix");
    const cJSON *p = add ? add : rm;
    if ((add && rm) || !cJSON_IsString(p) || !*p->valuestring || strchr(p->valuestring, '\\') ||
        (mp && !cJSON_IsString(mp)))
        TF_FAIL(path, "a prefix change is {\"prefix_add\" or \"prefix_remove\": \"prefix\", "
                      "\"model_prefix\"?: \"model\"} (plain text)", path);
    r->kind = add ? MPK_RENAME_PREFIX_ADD : MPK_RENAME_PREFIX_REMOVE;
    r->from = p->valuestring;
    r->model_prefix = mp ? mp->valuestring : "";
    return MPK_OK;
}

mpk_status spec_tf_renames(const cJSON *root, mpk_spec *s, const char *where, mpk_error *err)
{
    const cJSON *rn = cJSON_GetObjectItemCaseSensitive(root, "renames");
    if (!rn)
        return MPK_OK;
    if (!cJSON_IsArray(rn))
        MPK_FAIL(err, MPK_E_SPEC, where, "$.renames: must be an array");
    int total = 0, i = 0;
    for (const cJSON *e = rn->child; e; e = e->next) {
        const cJSON *g = cJSON_GetObjectItemCaseSensitive(e, "group");
        total += cJSON_IsArray(g) ? cJSON_GetArraySize(g) : 1;
    }
    s->renames = mpk_arena_alloc(s->arena, sizeof(mpk_rename) * (size_t)(total + 1));
    if (!s->renames)
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    for (const cJSON *e = rn->child; e; e = e->next, i++) {
        const cJSON *g = cJSON_GetObjectItemCaseSensitive(e, "group");
        int first = s->n_renames;
        if (g && (!cJSON_IsArray(g) || cJSON_GetArraySize(g) < 1))
            MPK_FAIL(err, MPK_E_SPEC, where, "$.renames[%d].group: must be an array of {\"regex\", \"to\"}", i);
        for (const cJSON *m = g ? g->child : e; m; m = g ? m->next : NULL) {
            mpk_rename *r = &s->renames[s->n_renames];
            r->group = first;
            if (g)
                snprintf(r->path, sizeof r->path, "$.renames[%d].group[%d]", i, s->n_renames - first);
            else
                snprintf(r->path, sizeof r->path, "$.renames[%d]", i);
            if (!g && (cJSON_GetObjectItemCaseSensitive(m, "prefix_add") ||
                       cJSON_GetObjectItemCaseSensitive(m, "prefix_remove")))
                MPK_TRY(tf_prefix(m, r, where, err));
            else
                MPK_TRY(tf_regex(s, m, r, where, err));
            s->n_renames++;
        }
        s->renames[first].n_members = s->n_renames - first;
        for (int a = first; g && a < s->n_renames; a++) /* undone, members go by their "to" */
            for (int b = first; b < s->n_renames; b++)
                s->renames[a].inv_rank += strcmp(s->renames[b].to, s->renames[a].to) < 0;
    }
    return MPK_OK;
}
