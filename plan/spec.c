/* spec.c — conversion specs: parsing with JSON-path errors, patterns, reversal, presets. */
#define _GNU_SOURCE
#include "plan_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#define SPEC_FAIL(path, ...) return mpk_error_set(err, MPK_E_SPEC, 0, where, "%s: " __VA_ARGS__)

mpk_status spec_parse_pattern(const char *text, mpk_pattern *p, const char *where,
                              const char *path, mpk_error *err)
{
    memset(p, 0, sizeof *p);
    p->text = text;
    if (!*text)
        SPEC_FAIL(path, "pattern is empty", path);
    const char *s = text;
    while (*s) {
        if (p->n_parts == MPK_PATTERN_MAX_PARTS)
            SPEC_FAIL(path, "pattern '%s' has too many parts", path, text);
        if (*s == '{') {
            const char *e = strchr(s, '}');
            if (!e || e == s + 1)
                SPEC_FAIL(path, "pattern '%s': unterminated or empty {capture}", path, text);
            for (const char *q = s + 1; q < e; q++)
                if (*q == '.' || *q == '{')
                    SPEC_FAIL(path, "pattern '%s': bad capture name", path, text);
            if (p->n_parts && p->parts[p->n_parts - 1].capture)
                SPEC_FAIL(path, "pattern '%s': two captures must be separated by text", path, text);
            p->parts[p->n_parts].capture = true;
            p->parts[p->n_parts].s = s + 1;
            p->parts[p->n_parts].len = (size_t)(e - s - 1);
            p->n_parts++;
            s = e + 1;
        } else {
            const char *e = s;
            while (*e && *e != '{')
                e++;
            if (memchr(s, '}', (size_t)(e - s)))
                SPEC_FAIL(path, "pattern '%s': stray '}'", path, text);
            p->parts[p->n_parts].capture = false;
            p->parts[p->n_parts].s = s;
            p->parts[p->n_parts].len = (size_t)(e - s);
            p->n_parts++;
            s = e;
        }
    }
    return MPK_OK;
}

mpk_status spec_pattern(mpk_spec *s, const char *t, bool source, mpk_pattern *p, const char *where,
                        const char *path, mpk_error *err)
{
    if (!t)
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    return s->transformers ? spec_tf_pattern(s, t, source, p, where, path, err)
                           : spec_parse_pattern(t, p, where, path, err);
}

static bool match_at(const mpk_pattern *p, const char *name, size_t pos, mpk_capture *caps,
                     int *n_caps, size_t *end)
{
    int nc = 0;
    for (int i = 0; i < p->n_parts; i++) {
        if (p->parts[i].capture) {
            size_t l = 0;
            while (name[pos + l] && name[pos + l] != '.')
                l++;
            if (l == 0)
                return false;
            caps[nc++] = (mpk_capture){p->parts[i].s, p->parts[i].len, name + pos, l};
            pos += l;
        } else {
            if (strncmp(name + pos, p->parts[i].s, p->parts[i].len) != 0)
                return false;
            pos += p->parts[i].len;
        }
    }
    if (name[pos] && name[pos] != '.')
        return false;
    *n_caps = nc;
    *end = pos;
    return true;
}

bool mpk_pattern_match(const mpk_pattern *p, const char *name, mpk_capture *caps, int *n_caps,
                       size_t *start, size_t *end)
{
    for (size_t pos = 0; name[pos]; pos++) {
        if (pos > 0 && name[pos - 1] != '.')
            continue;
        if (match_at(p, name, pos, caps, n_caps, end)) {
            *start = pos;
            return true;
        }
    }
    return false;
}

/* Capture names of a pattern, as a small set. */
static int capture_names(const mpk_pattern *p, const char **names, size_t *lens)
{
    int n = 0;
    for (int i = 0; i < p->n_parts; i++)
        if (p->parts[i].capture) {
            names[n] = p->parts[i].s;
            lens[n++] = p->parts[i].len;
        }
    return n;
}

static bool has_capture(const mpk_pattern *p, const char *name, size_t len)
{
    for (int i = 0; i < p->n_parts; i++)
        if (p->parts[i].capture && p->parts[i].len == len && memcmp(p->parts[i].s, name, len) == 0)
            return true;
    return false;
}

static bool same_captures(const mpk_pattern *a, const mpk_pattern *b)
{
    const char *n[32];
    size_t l[32];
    int k = capture_names(a, n, l);
    for (int i = 0; i < k; i++)
        if (!has_capture(b, n[i], l[i]))
            return false;
    return k == capture_names(b, n, l);
}

/* Works out the list capture: in the sources only (merge) or the targets only (split). */
static mpk_status resolve_list_capture(mpk_rule *r, mpk_arena *a, const char *where,
                                       mpk_error *err)
{
    const char *path = r->path;
    for (int i = 1; i < r->n_sources; i++)
        if (!same_captures(&r->sources[0], &r->sources[i]))
            SPEC_FAIL(path, "all sources must use the same {captures}", path);
    for (int i = 1; i < r->n_targets; i++)
        if (!same_captures(&r->targets[0], &r->targets[i]))
            SPEC_FAIL(path, "all targets must use the same {captures}", path);
    const char *n[32];
    size_t l[32];
    int ks = capture_names(&r->sources[0], n, l), extra_s = 0, extra_t = 0;
    const char *list = NULL;
    size_t list_len = 0;
    for (int i = 0; i < ks; i++)
        if (!has_capture(&r->targets[0], n[i], l[i]))
            extra_s++, list = n[i], list_len = l[i];
    int kt = capture_names(&r->targets[0], n, l);
    for (int i = 0; i < kt; i++)
        if (!has_capture(&r->sources[0], n[i], l[i]))
            extra_t++, list = n[i], list_len = l[i];
    if (extra_s + extra_t > 1)
        SPEC_FAIL(path, "at most one {capture} may differ between sources and targets (the "
                        "list index, e.g. {expert})", path);
    r->list_in_sources = extra_s == 1;
    r->list_capture = list ? mpk_arena_strndup(a, list, list_len) : NULL;
    if (list && !r->list_capture)
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    return MPK_OK;
}

/* "sources": ["a", "b"] or "source": "a" (same for targets). */
static mpk_status parse_patterns(const cJSON *rule, const char *plural, const char *single,
                                 mpk_pattern *out, int *n, mpk_spec *s, const char *where,
                                 const char *path, mpk_error *err)
{
    mpk_arena *a = s->arena;
    bool source = strcmp(single, "source") == 0;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(rule, plural);
    if (!v)
        v = cJSON_GetObjectItemCaseSensitive(rule, single);
    char sub[256];
    snprintf(sub, sizeof sub, "%s.%s", path, plural);
    if (!v)
        SPEC_FAIL(sub, "missing", sub);
    *n = 0;
    if (cJSON_IsString(v)) {
        MPK_TRY(spec_pattern(s, mpk_arena_strndup(a, v->valuestring, strlen(v->valuestring)), source, &out[0], where,
                             sub, err));
        *n = 1;
        return MPK_OK;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) < 1 || cJSON_GetArraySize(v) > 8)
        SPEC_FAIL(sub, "must be a string or an array of 1 to 8 strings", sub);
    for (const cJSON *e = v->child; e; e = e->next) {
        char el[320];
        snprintf(el, sizeof el, "%s[%d]", sub, *n);
        if (!cJSON_IsString(e))
            SPEC_FAIL(el, "must be a string", el);
        MPK_TRY(spec_pattern(s, mpk_arena_strndup(a, e->valuestring, strlen(e->valuestring)), source, &out[*n], where,
                             el, err));
        (*n)++;
    }
    return MPK_OK;
}

static mpk_status parse_rule(const cJSON *j, mpk_rule *r, mpk_spec *s, const char *where,
                             mpk_error *err)
{
    mpk_arena *a = s->arena;
    const char *path = r->path;
    if (!cJSON_IsObject(j))
        SPEC_FAIL(path, "a converter must be an object", path);
    MPK_TRY(parse_patterns(j, "sources", "source", r->sources, &r->n_sources, s, where, path, err));
    MPK_TRY(parse_patterns(j, "targets", "target", r->targets, &r->n_targets, s, where, path, err));
    const cJSON *ops = cJSON_GetObjectItemCaseSensitive(j, "ops");
    char sub[256];
    snprintf(sub, sizeof sub, "%s.ops", path);
    if (!cJSON_IsArray(ops) || cJSON_GetArraySize(ops) > MPK_SPEC_MAX_OPS)
        SPEC_FAIL(sub, "must be an array of at most %d ops", sub, MPK_SPEC_MAX_OPS);
    for (const cJSON *o = ops->child; o; o = o->next) {
        char el[320];
        snprintf(el, sizeof el, "%s[%d]", sub, r->n_ops);
        MPK_TRY(mpk_op_parse(o, &r->ops[r->n_ops], where, el, err));
        r->n_ops++;
    }
    const cJSON *ss = cJSON_GetObjectItemCaseSensitive(j, "source_shape");
    if (ss) {
        snprintf(sub, sizeof sub, "%s.source_shape", path);
        if (!cJSON_IsArray(ss) || cJSON_GetArraySize(ss) > MPK_MAX_DIMS)
            SPEC_FAIL(sub, "must be an array of size names (E, H, I, 2I)", sub);
        for (const cJSON *e = ss->child; e; e = e->next) {
            if (!cJSON_IsString(e))
                SPEC_FAIL(sub, "must hold strings", sub);
            char *t = mpk_arena_strndup(a, e->valuestring, strlen(e->valuestring));
            if (!t)
                MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
            r->source_shape[r->source_shape_ndim++] = t;
        }
    }
    MPK_TRY(s->transformers ? spec_tf_list(r, where, err) : resolve_list_capture(r, a, where, err));
    for (int k = 0; k < r->n_ops; k++) /* a chunk of unstated size: one piece per target */
        if (r->ops[k].kind == MPK_OP_CHUNK && r->ops[k].chunks == 0)
            r->ops[k].chunks = r->n_targets;
    const cJSON *part = cJSON_GetObjectItemCaseSensitive(j, "partition");
    if (part) {
        snprintf(sub, sizeof sub, "%s.partition", path);
        if (!cJSON_IsBool(part))
            SPEC_FAIL(sub, "must be true or false", sub);
        r->partition = cJSON_IsTrue(part);
        int other = r->list_in_sources ? r->n_targets : r->n_sources;
        if (r->partition && (!r->list_capture || other < 2))
            SPEC_FAIL(sub, "needs a list {capture} on one side and at least 2 patterns on the "
                           "other (one per part)", sub);
    }
    return MPK_OK;
}

/* $.KEY, an optional array of strings, into *list (NULL-terminated, in the spec's arena). */
static mpk_status parse_strings(const cJSON *root, const char *key, mpk_spec *s, const char ***list, int *n,
                                const char *where, mpk_error *err)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!a)
        return MPK_OK;
    if (!cJSON_IsArray(a))
        MPK_FAIL(err, MPK_E_SPEC, where, "$.%s: must be an array of strings", key);
    *list = mpk_arena_alloc(s->arena, sizeof(char *) * (size_t)(cJSON_GetArraySize(a) + 1));
    if (!*list)
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    for (const cJSON *e = a->child; e; e = e->next) {
        if (!cJSON_IsString(e))
            MPK_FAIL(err, MPK_E_SPEC, where, "$.%s[%d]: must be a string", key, *n);
        (*list)[(*n)++] = e->valuestring;
    }
    return MPK_OK;
}

/* $.pass: the name patterns of tensors the preset declares pass-throughs. */
static mpk_status parse_pass(const cJSON *root, mpk_spec *s, const char *where, mpk_error *err)
{
    const cJSON *ps = cJSON_GetObjectItemCaseSensitive(root, "pass");
    if (!ps)
        return MPK_OK;
    if (!cJSON_IsArray(ps))
        MPK_FAIL(err, MPK_E_SPEC, where, "$.pass: must be an array of name patterns");
    s->pass = mpk_arena_alloc(s->arena, sizeof(mpk_pattern) * (size_t)(cJSON_GetArraySize(ps) + 1));
    if (!s->pass)
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    for (const cJSON *e = ps->child; e; e = e->next) {
        char path[48];
        snprintf(path, sizeof path, "$.pass[%d]", s->n_pass);
        if (!cJSON_IsString(e))
            MPK_FAIL(err, MPK_E_SPEC, where, "%s: must be a string", path);
        MPK_TRY(spec_parse_pattern(e->valuestring, &s->pass[s->n_pass], where, path, err));
        s->n_pass++;
    }
    return MPK_OK;
}

static mpk_status parse_renames(const cJSON *root, mpk_spec *s, const char *where, mpk_error *err)
{
    if (s->transformers)
        return spec_tf_renames(root, s, where, err);
    const cJSON *rn = cJSON_GetObjectItemCaseSensitive(root, "renames");
    if (!rn)
        return MPK_OK;
    if (!cJSON_IsArray(rn))
        MPK_FAIL(err, MPK_E_SPEC, where, "$.renames: must be an array of {\"from\", \"to\"}");
    s->renames = mpk_arena_alloc(s->arena, sizeof(mpk_rename) * (size_t)(cJSON_GetArraySize(rn) + 1));
    if (!s->renames)
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    for (const cJSON *e = rn->child; e; e = e->next) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(e, "from");
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "to");
        if (!cJSON_IsString(f) || !cJSON_IsString(t) || !*f->valuestring)
            MPK_FAIL(err, MPK_E_SPEC, where, "$.renames[%d]: needs non-empty string \"from\" and string \"to\"",
                     s->n_renames);
        mpk_rename *r = &s->renames[s->n_renames];
        r->from = f->valuestring;
        r->to = t->valuestring;
        r->group = s->n_renames++;
        r->n_members = 1;
    }
    return MPK_OK;
}

static mpk_status parse_converters(const cJSON *root, mpk_spec *s, const char *where, mpk_error *err)
{
    const cJSON *cv = cJSON_GetObjectItemCaseSensitive(root, "converters");
    if (!cJSON_IsArray(cv))
        MPK_FAIL(err, MPK_E_SPEC, where, "$.converters: missing or not an array");
    /* room for the companions: FP8 grids, and the quantized linears' (spec_companions.c) */
    s->rules = mpk_arena_alloc(s->arena, sizeof(mpk_rule) * (size_t)((2 + SPEC_QUANT_COMPANIONS) * cJSON_GetArraySize(cv) + 1));
    if (!s->rules)
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    for (const cJSON *e = cv->child; e; e = e->next) {
        mpk_rule *r = &s->rules[s->n_rules];
        snprintf(r->path, sizeof r->path, "$.converters[%d]", s->n_rules);
        r->scale_of = -1;
        r->companion_of = -1;
        MPK_TRY(parse_rule(e, r, s, where, err));
        s->n_rules++;
    }
    return MPK_OK;
}

/* The spec's fields in order, into s (its arena). */
static mpk_status parse_spec_fields(const cJSON *root, mpk_spec *s, const char *where, mpk_error *err)
{
    if (!cJSON_IsObject(root))
        MPK_FAIL(err, MPK_E_SPEC, where, "$: a spec must be a JSON object");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(root, "name");
    if (!cJSON_IsString(name))
        MPK_FAIL(err, MPK_E_SPEC, where, "$.name: missing or not a string");
    s->name = name->valuestring;
    const cJSON *desc = cJSON_GetObjectItemCaseSensitive(root, "description");
    s->description = cJSON_IsString(desc) ? desc->valuestring : "";
    MPK_TRY(parse_strings(root, "model_types", s, &s->model_types, &s->n_model_types, where, err));
    MPK_TRY(parse_strings(root, "architectures", s, &s->architectures, &s->n_architectures, where, err));
    const cJSON *sem = cJSON_GetObjectItemCaseSensitive(root, "semantics");
    if (sem && (!cJSON_IsString(sem) || strcmp(sem->valuestring, "transformers") != 0))
        MPK_FAIL(err, MPK_E_SPEC, where, "$.semantics: the only one is \"transformers\" (leave it out "
                 "for moepack's own {capture} patterns)");
    s->transformers = sem != NULL;
    MPK_TRY(parse_pass(root, s, where, err));
    MPK_TRY(parse_renames(root, s, where, err));
    MPK_TRY(parse_converters(root, s, where, err));
    s->dequantizes = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "dequantizes"));
    const cJSON *sn = cJSON_GetObjectItemCaseSensitive(root, "scale_name");
    if (sn && (!cJSON_IsString(sn) || (strcmp(sn->valuestring, "scale") && strcmp(sn->valuestring, "weight_scale_inv"))))
        MPK_FAIL(err, MPK_E_SPEC, where, "$.scale_name: must be \"weight_scale_inv\" (X.weight_scale_inv, the "
                 "default) or \"scale\" (X.scale, DeepSeek-V4)");
    s->scale_dot = sn && strcmp(sn->valuestring, "scale") == 0;
    if (!cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(root, "scale_companions"))) {
        MPK_TRY(spec_add_scale_companions(s, where, err));
        MPK_TRY(spec_add_quant_companions(s, where, err));
    }
    return MPK_OK;
}

mpk_status mpk_spec_parse(const char *text, size_t len, const char *where, mpk_spec **out,
                          mpk_error *err)
{
    *out = NULL;
    mpk_json *j;
    MPK_TRY(mpk_json_parse(text, len, MPK_E_SPEC, where, "$: the spec", &j, err));
    cJSON *root = mpk_json_take(j);
    mpk_spec *s = mpk_calloc(1, sizeof *s);
    if (!s || !(s->arena = mpk_arena_new())) {
        free(s);
        cJSON_Delete(root);
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    }
    s->json = root;
    mpk_status st = parse_spec_fields(root, s, where, err);
    if (st != MPK_OK) {
        mpk_spec_free(s);
        return st;
    }
    *out = s;
    return MPK_OK;
}

mpk_status mpk_spec_reverse(mpk_spec *s, mpk_spec **out, mpk_error *err)
{
    *out = NULL;
    mpk_spec *r = mpk_calloc(1, sizeof *r);
    if (!r || !(r->arena = mpk_arena_new())) {
        free(r);
        MPK_FAIL(err, MPK_E_NOMEM, s->name, "out of memory");
    }
    r->name = s->name;
    r->description = s->description;
    r->model_types = s->model_types;
    r->n_model_types = s->n_model_types;
    r->reversed = !s->reversed;
    r->dequantizes = s->dequantizes;
    r->scale_dot = s->scale_dot;
    r->pass = s->pass;
    r->n_pass = s->n_pass;
    r->architectures = s->architectures;
    r->n_architectures = s->n_architectures;
    r->renames = mpk_arena_alloc(r->arena, sizeof(mpk_rename) * (size_t)(s->n_renames + 1));
    r->rules = mpk_arena_alloc(r->arena, sizeof(mpk_rule) * (size_t)(s->n_rules + 1));
    if (!r->renames || !r->rules) {
        mpk_spec_free(r);
        MPK_FAIL(err, MPK_E_NOMEM, s->name, "out of memory");
    }
    r->transformers = s->transformers;
    for (int i = 0; i < s->n_renames; i++) { /* transformers: undone by the plan, kept as they are */
        r->renames[i] = s->renames[i];
        if (!s->transformers)
            r->renames[i].from = s->renames[i].to, r->renames[i].to = s->renames[i].from;
    }
    r->n_renames = s->n_renames;
    for (int i = 0; i < s->n_rules; i++) {
        const mpk_rule *f = &s->rules[i];
        mpk_rule *b = &r->rules[i];
        *b = *f;
        memcpy(b->sources, f->targets, sizeof f->targets);
        b->n_sources = f->n_targets;
        memcpy(b->targets, f->sources, sizeof f->sources);
        b->n_targets = f->n_sources;
        b->list_in_sources = f->list_capture && !f->list_in_sources;
        b->source_shape_ndim = 0; /* the check applies to the forward source only */
        mpk_status st = mpk_ops_invert_chain(f->ops, f->n_ops, NULL, b->ops, err);
        if (st != MPK_OK) {
            mpk_error_set(err, MPK_E_SPEC, 0, s->name, "%s: cannot reverse: %s", f->path, err->msg);
            mpk_spec_free(r);
            return MPK_E_SPEC;
        }
        for (int k = 0; k < b->n_ops; k++)
            if (b->ops[k].kind == MPK_OP_CHUNK && b->ops[k].chunks == 0)
                b->ops[k].chunks = b->n_targets;
    }
    r->n_rules = s->n_rules;
    r->json = s->json; /* the synth section stays reachable */
    r->base = s;
    *out = r;
    return MPK_OK;
}

void mpk_spec_free(mpk_spec *s)
{
    if (!s)
        return;
    if (s->base) {
        mpk_spec_free(s->base);
    } else {
        cJSON_Delete(s->json);
        plan_regex_free(s->regexes);
    }
    mpk_arena_free(s->arena);
    free(s);
}

static bool spec_has_type(const mpk_spec *s, const char *t)
{
    for (int i = 0; i < s->n_model_types; i++)
        if (strcmp(s->model_types[i], t) == 0)
            return true;
    return false;
}

/* A spec with an "architectures" list fits a config.json listing architectures only when one
 * of them is in it; without either list the model type decides alone. */
static bool spec_has_arch(const mpk_spec *s, const mpk_model_config *cfg)
{
    if (!s->n_architectures || !mpk_config_architecture(cfg, 0))
        return true;
    for (int k = 0; mpk_config_architecture(cfg, k); k++)
        for (int i = 0; i < s->n_architectures; i++)
            if (strcmp(s->architectures[i], mpk_config_architecture(cfg, k)) == 0)
                return true;
    return false;
}

/* The embedded presets' names, comma-separated, in buf. */
static const char *preset_list(char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = 0;
    for (size_t i = 0; i < mpk_n_presets && o + 40 < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%s", i ? ", " : "", mpk_presets[i].name);
    return buf;
}

mpk_status mpk_preset_load(const char *name, const mpk_model_config *cfg, mpk_spec **out,
                           mpk_error *err)
{
    *out = NULL;
    bool is_auto = !name || strcmp(name, "auto") == 0;
    if (is_auto && (!cfg || !cfg->found || !cfg->model_type[0]))
        MPK_FAIL_ABOUT(err, MPK_FIELD_SPEC, MPK_E_PRESET, "preset",
                 "the preset 'auto' needs a config.json with \"model_type\"; name a preset "
                 "(the presets are listed by mpk_preset_name, 'moepack presets')");
    char typed[512] = ""; /* presets that have the model type but not the architecture */
    /* auto: config.json's model_type first, then its text_config's (Kimi K2.5, kimi_k25, has a
     * kimi_k2 text model: the kimi_k25 preset, not deepseek_v3's, converts the whole model) */
    for (size_t k = 0; k < 2 * mpk_n_presets; k++) {
        size_t i = k % mpk_n_presets;
        bool by_text = k >= mpk_n_presets;
        if ((!is_auto && (by_text || strcmp(mpk_presets[i].name, name) != 0)) ||
            (by_text && !cfg->text_model_type[0]))
            continue;
        mpk_spec *s;
        MPK_TRY(mpk_spec_parse(mpk_presets[i].json, strlen(mpk_presets[i].json), mpk_presets[i].name,
                               &s, err));
        bool typed_ok = is_auto && spec_has_type(s, by_text ? cfg->text_model_type : cfg->model_type);
        if (!is_auto || (typed_ok && spec_has_arch(s, cfg))) {
            *out = s;
            return MPK_OK;
        }
        if (typed_ok)
            snprintf(typed + strlen(typed), sizeof typed - strlen(typed), "%s'%s'", typed[0] ? ", " : "",
                     s->name);
        mpk_spec_free(s);
    }
    if (is_auto && typed[0]) {
        char archs[256] = "", names[1024];
        for (int i = 0; mpk_config_architecture(cfg, i) && strlen(archs) + 2 < sizeof archs; i++)
            snprintf(archs + strlen(archs), sizeof archs - strlen(archs), "%s%s", i ? ", " : "",
                     mpk_config_architecture(cfg, i));
        MPK_FAIL_ABOUT(err, MPK_FIELD_SPEC, MPK_E_NOT_UNDERSTOOD, "preset",
                 "model_type '%s' is served by preset %s, but not architecture %s (a model type "
                 "shared by different models: converting it as the other would merge what it "
                 "understands and copy the rest unconverted); presets: %s. Write a spec for it "
                 "and convert with that spec, or name a preset if you know it fits",
                 cfg->model_type, typed, archs, preset_list(names, sizeof names));
    }
    if (is_auto)
        MPK_FAIL_ABOUT(err, MPK_FIELD_SPEC, MPK_E_PRESET, "preset",
                 "no preset covers model_type '%s' (see 'moepack presets', or write a spec and "
                 "convert with it)",
                 cfg->model_type);
    MPK_FAIL_ABOUT(err, MPK_FIELD_SPEC, MPK_E_PRESET, "preset", "unknown preset '%s' (see 'moepack presets')", name);
}

/* A named size's value under cfg, or the code itself when cfg does not give it. */
static int64_t bound(int64_t d, const mpk_model_config *cfg)
{
    long e = cfg ? cfg->num_experts : -1, i = cfg ? cfg->intermediate_size : -1, h = cfg ? cfg->hidden_size : -1;
    switch (d) {
    case MPK_DIM_E: return e > 0 ? e : d;
    case MPK_DIM_I: return i > 0 ? i : d;
    case MPK_DIM_H: return h > 0 ? h : d;
    case MPK_DIM_2I: return i > 0 ? 2 * (int64_t)i : d;
    case MPK_DIM_EI: return e > 0 && i > 0 ? (int64_t)e * i : d;
    default: return d;
    }
}

void mpk_spec_bind_sizes(mpk_spec *s, const mpk_model_config *cfg)
{
    spec_bind_companions(s, cfg);
    for (int r = 0; r < s->n_rules; r++)
        for (int k = 0; k < s->rules[r].n_ops; k++) {
            mpk_op *op = &s->rules[r].ops[k];
            mpk_op_bind_config(op, cfg ? cfg->json : NULL); /* heads, item counts */
            if (op->kind != MPK_OP_RESHAPE)
                continue;
            for (int d = 0; d < op->ndim; d++)
                op->shape[d] = bound(op->shape[d], cfg);
            for (int d = 0; d < op->inv_ndim; d++)
                op->inv_shape[d] = bound(op->inv_shape[d], cfg);
        }
}
