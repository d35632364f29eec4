/* config_ct.c — compressed-tensors' quantization_config kept true through a conversion.
 *
 * Its config_groups[*].targets and ignore lists name modules three ways: a class ("Linear"), a
 * module's exact name ("lm_head", "model.layers.0.mlp.gate"), or a Python regex matched at the
 * start of the name ("re:.*mlp\.experts.*"). A conversion renames modules (a preset's renames)
 * and merges per-expert modules into one packed module (mlp.experts.0.gate_proj ->
 * mlp.experts, whose tensors are gate_up_proj_weight_packed, ...). Every entry must name after
 * the conversion what it named before, module for module: an exact name of a renamed module is
 * renamed; a class name is kept (a checkpoint holds no class); a pattern is kept when it matches
 * each module before exactly when it matches what that module became. Anything else (an exact
 * name of a per-expert module, merged with others; an exact name that would newly name a module;
 * a pattern matching one side only) is refused naming the key: never a config that is silently
 * wrong. ModelOpt's lists (fnmatch wildcards, in config.json and hf_quant_config.json) are
 * checked the same way but not rewritten: an entry a conversion would change is refused. */
#define _GNU_SOURCE
#include "plan_internal.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *src, *dst; /* a module before and what it became */
} mod_pair;

typedef struct {
    mod_pair *v;
    size_t n, cap;
    mpk_strmap seen; /* "src\001dst" */
    mpk_arena *a;
    const char *file; /* the file the lists checked now are in (for errors): config.json, ... */
} pairs;

static const char *dir_of(mpk_arena *a, const char *name)
{
    const char *dot = strrchr(name, '.');
    return mpk_arena_strndup(a, name, dot ? (size_t)(dot - name) : 0);
}

static mpk_status pair_add(pairs *ps, const char *src_name, const char *dst_name, mpk_error *err)
{
    const char *s = dir_of(ps->a, src_name), *d = dir_of(ps->a, dst_name);
    char *key = s && d ? mpk_arena_printf(ps->a, "%s\001%s", s, d) : NULL;
    if (!key)
        MPK_FAIL(err, MPK_E_NOMEM, "config.json", "out of memory");
    if (mpk_strmap_put(&ps->seen, key, strlen(key), ps->n, NULL))
        return MPK_OK;
    if (ps->n == ps->cap) {
        size_t cap = ps->cap ? 2 * ps->cap : 256;
        mod_pair *v = realloc(ps->v, cap * sizeof *v);
        if (!v)
            MPK_FAIL(err, MPK_E_NOMEM, "config.json", "out of memory");
        ps->v = v, ps->cap = cap;
    }
    ps->v[ps->n++] = (mod_pair){s, d};
    return MPK_OK;
}

/* Every (source module, output module) pair of plan p. */
static mpk_status collect_pairs(const mpk_plan *p, pairs *ps, mpk_error *err)
{
    for (size_t i = 0; i < p->n_outs; i++) {
        const mpk_plan_out *o = &p->outs[i];
        if (o->group < 0) {
            if (o->pass)
                MPK_TRY(pair_add(ps, o->pass->info->name, o->name, err));
            continue;
        }
        const mpk_plan_group *g = &p->groups[o->group];
        for (long k = 0; k < (long)g->rule->n_sources * g->n_items; k++)
            if (g->src[k])
                MPK_TRY(pair_add(ps, g->src[k]->info->name, o->name, err));
    }
    return MPK_OK;
}

/* Python's re.match(rx, name). */
static bool rx_match(const struct mpk_regex *rx, const char *name)
{
    regoff_t so, eo;
    const char *g[2];
    size_t gl[2];
    return plan_regex_search(rx, name, &so, &eo, g, gl, 0) && so == 0;
}

static mpk_status check_regex(mpk_spec *rxs, const pairs *ps, const char *key, const char *pat, mpk_error *err)
{
    const struct mpk_regex *rx;
    char *anchored = mpk_arena_printf(ps->a, "^(?:%s)", pat);
    if (!anchored)
        MPK_FAIL(err, MPK_E_NOMEM, ps->file, "out of memory");
    if (plan_regex_compile(rxs, anchored, key, &rx, err) != MPK_OK) {
        char why[256];
        const char *w = strstr(err->msg, "': "); /* after "PATH: pattern '...'" */
        snprintf(why, sizeof why, "%.200s", w ? w + 3 : err->msg);
        MPK_FAIL(err, MPK_E_NOT_UNDERSTOOD, ps->file, "%s: 're:%s' is a pattern moepack cannot match (%s): "
                 "it cannot tell whether the converted modules still answer to it", key, pat, why);
    }
    for (size_t i = 0; i < ps->n; i++) {
        bool a = rx_match(rx, ps->v[i].src), b = rx_match(rx, ps->v[i].dst);
        if (a != b)
            MPK_FAIL(err, MPK_E_NOT_UNDERSTOOD, ps->file,
                     "%s: 're:%s' %s module '%s' but %s '%s', which it becomes: the converted quantization_config "
                     "would not say which modules are quantized (write a pattern that matches both, or dequantize)",
                     key, pat, a ? "matches" : "does not match", ps->v[i].src, a ? "not" : "matches", ps->v[i].dst);
    }
    return MPK_OK;
}

/* An exact module name: the name it takes after the conversion (*to; itself when the module is
 * not in the checkpoint or not renamed). */
static mpk_status map_name(const pairs *ps, const char *key, const char *name, const char **to, mpk_error *err)
{
    const char *dst = NULL, *newly = NULL;
    for (size_t i = 0; i < ps->n; i++) {
        if (strcmp(ps->v[i].src, name) == 0) {
            if (dst && strcmp(dst, ps->v[i].dst))
                MPK_FAIL(err, MPK_E_NOT_UNDERSTOOD, ps->file, "%s: module '%s' becomes both '%s' and '%s'",
                         key, name, dst, ps->v[i].dst);
            dst = ps->v[i].dst;
        } else if (strcmp(ps->v[i].dst, name) == 0) {
            newly = ps->v[i].src;
        }
    }
    for (size_t i = 0; dst && i < ps->n; i++)
        if (strcmp(ps->v[i].dst, dst) == 0 && strcmp(ps->v[i].src, name))
            MPK_FAIL(err, MPK_E_NOT_UNDERSTOOD, ps->file,
                     "%s: '%s' names one module that the conversion merges with others into '%s' (e.g. '%s'): no "
                     "module name says the same after it (use a \"re:\" pattern for the experts, or dequantize)",
                     key, name, dst, ps->v[i].src);
    if (!dst && newly)
        MPK_FAIL(err, MPK_E_NOT_UNDERSTOOD, ps->file,
                 "%s: '%s' names no module of the checkpoint but would name the one '%s' becomes", key, name, newly);
    *to = dst ? dst : name;
    return MPK_OK;
}

/* The entries of one list (a JSON array of strings under key), renamed in place. */
static mpk_status rewrite_list(mpk_spec *rxs, const pairs *ps, cJSON *list, const char *key, bool *changed,
                               mpk_error *err)
{
    int i = 0;
    for (cJSON *e = cJSON_IsArray(list) ? list->child : NULL; e; e = e->next, i++) {
        char k[160];
        snprintf(k, sizeof k, "%s[%d]", key, i);
        if (!cJSON_IsString(e))
            MPK_FAIL(err, MPK_E_CONFIG, ps->file, "%s: not a string", k);
        if (strncmp(e->valuestring, "re:", 3) == 0) {
            MPK_TRY(check_regex(rxs, ps, k, e->valuestring + 3, err));
            continue;
        }
        const char *to = NULL;
        MPK_TRY(map_name(ps, k, e->valuestring, &to, err));
        if (strcmp(to, e->valuestring)) {
            if (!cJSON_SetValuestring(e, to))
                MPK_FAIL(err, MPK_E_NOMEM, ps->file, "out of memory");
            *changed = true;
        }
    }
    return MPK_OK;
}

static mpk_status rewrite_qc(mpk_spec *rxs, const pairs *ps, cJSON *qc, bool *changed, mpk_error *err)
{
    const cJSON *groups = cJSON_GetObjectItemCaseSensitive(qc, "config_groups");
    for (const cJSON *g = cJSON_IsObject(groups) ? groups->child : NULL; g; g = g->next) {
        char key[128];
        snprintf(key, sizeof key, "quantization_config.config_groups.%s.targets", g->string);
        MPK_TRY(rewrite_list(rxs, ps, cJSON_GetObjectItemCaseSensitive(g, "targets"), key, changed, err));
    }
    MPK_TRY(rewrite_list(rxs, ps, cJSON_GetObjectItemCaseSensitive(qc, "ignore"), "quantization_config.ignore", changed,
                         err));
    /* sparsity_config names modules the same way; transform_config's nested lists moepack does
     * not rewrite: refused rather than left naming modules that are gone */
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(qc, "sparsity_config");
    if (cJSON_IsObject(sp)) {
        MPK_TRY(rewrite_list(rxs, ps, cJSON_GetObjectItemCaseSensitive(sp, "targets"),
                             "quantization_config.sparsity_config.targets", changed, err));
        MPK_TRY(rewrite_list(rxs, ps, cJSON_GetObjectItemCaseSensitive(sp, "ignore"),
                             "quantization_config.sparsity_config.ignore", changed, err));
    }
    const cJSON *tf = cJSON_GetObjectItemCaseSensitive(qc, "transform_config");
    if (tf && !cJSON_IsNull(tf) && !(cJSON_IsObject(tf) && !tf->child))
        MPK_FAIL(err, MPK_E_NOT_UNDERSTOOD, "config.json",
                 "quantization_config.transform_config: its module lists are not rewritten by moepack, so after the "
                 "renames they could name modules that are gone; convert a dequantized copy");
    return MPK_OK;
}

/* ModelOpt's lists (quantization_config's ignore / exclude_modules, hf_quant_config.json's
 * quantization.exclude_modules) name modules exactly or by fnmatch wildcards
 * ("model.layers.*.mlp.gate"). moepack does not rewrite them (hf_quant_config.json is copied as
 * it is): each entry must name after the conversion what it named before, or the conversion is
 * refused naming it. A wildcard is checked as the regex it stands for. */
static mpk_status check_fn_list(mpk_spec *rxs, const pairs *ps, const cJSON *list, const char *key, mpk_error *err)
{
    int i = 0;
    for (const cJSON *e = cJSON_IsArray(list) ? list->child : NULL; e; e = e->next, i++) {
        char k[200];
        snprintf(k, sizeof k, "%s[%d]", key, i);
        if (!cJSON_IsString(e))
            MPK_FAIL(err, MPK_E_CONFIG, ps->file, "%s: not a string", k);
        const char *v = e->valuestring;
        if (strpbrk(v, "*?[")) {
            char *rx = mpk_arena_alloc(ps->a, 2 * strlen(v) + 2), *o = rx;
            if (!rx)
                MPK_FAIL(err, MPK_E_NOMEM, ps->file, "out of memory");
            for (const char *c = v; *c; c++) {
                if (*c == '*')
                    *o++ = '.', *o++ = '*';
                else if (*c == '?')
                    *o++ = '.';
                else if (strchr(".+()^$|{}\\", *c))
                    *o++ = '\\', *o++ = *c;
                else
                    *o++ = *c;
            }
            *o++ = '$';
            *o = 0;
            MPK_TRY(check_regex(rxs, ps, k, rx, err));
            continue;
        }
        const char *to = NULL;
        MPK_TRY(map_name(ps, k, v, &to, err));
        if (strcmp(to, v))
            MPK_FAIL(err, MPK_E_NOT_UNDERSTOOD, ps->file,
                     "%s: module '%s' becomes '%s', and moepack does not rewrite ModelOpt's module lists: the "
                     "converted checkpoint would name a module that is gone (dequantize it, or use a preset "
                     "without that rename)", k, v, to);
    }
    return MPK_OK;
}

static mpk_status check_modelopt(mpk_spec *rxs, pairs *ps, const cJSON *root, const char *dir, mpk_error *err)
{
    const cJSON *qc = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    MPK_TRY(check_fn_list(rxs, ps, cJSON_GetObjectItemCaseSensitive(qc, "ignore"), "quantization_config.ignore", err));
    MPK_TRY(check_fn_list(rxs, ps, cJSON_GetObjectItemCaseSensitive(qc, "exclude_modules"),
                          "quantization_config.exclude_modules", err));
    char *path = mpk_path_join(dir, "hf_quant_config.json"), *text = NULL;
    size_t len = 0;
    mpk_error ig;
    if (!path)
        MPK_FAIL(err, MPK_E_NOMEM, "config.json", "out of memory");
    bool have = mpk_read_file(path, &text, &len, &ig) == MPK_OK;
    free(path);
    if (!have)
        return MPK_OK; /* none (or unreadable: the copy of the other files says so) */
    cJSON *h = cJSON_ParseWithLength(text, len);
    free(text);
    ps->file = "hf_quant_config.json";
    mpk_status st = check_fn_list(rxs, ps,
                                  cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(h, "quantization"),
                                                                   "exclude_modules"),
                                  "quantization.exclude_modules", err);
    cJSON_Delete(h);
    return st;
}

mpk_status mpk_config_ct_rewrite(const mpk_model_config *cfg, const mpk_plan *p, char **out, mpk_error *err)
{
    *out = NULL;
    bool modelopt = cfg && cfg->json && strncmp(cfg->quant_method, "modelopt", 8) == 0;
    if (!modelopt && (!cfg || !cfg->json || strcmp(cfg->quant_method, "compressed-tensors")))
        return MPK_OK;
    /* ModelOpt's lists are checked in place; compressed-tensors' rewritten in a copy */
    cJSON *c = modelopt ? NULL : cJSON_Duplicate(cfg->json, 1);
    pairs ps = {.a = mpk_arena_new(), .file = "config.json"};
    mpk_spec rxs = {.name = "config.json"};
    bool changed = false;
    mpk_status st = (!modelopt && !c) || !ps.a || mpk_strmap_init(&ps.seen, p->n_outs + 16) != MPK_OK
                        ? mpk_error_set(err, MPK_E_NOMEM, 0, "config.json", "out of memory")
                        : collect_pairs(p, &ps, err);
    if (st == MPK_OK && modelopt)
        st = check_modelopt(&rxs, &ps, cfg->json, p->src->dir, err);
    else if (st == MPK_OK)
        st = rewrite_qc(&rxs, &ps, cJSON_GetObjectItemCaseSensitive(c, "quantization_config"), &changed, err);
    if (st == MPK_OK && changed && !(*out = mpk_json_print(c, true)))
        st = mpk_error_set(err, MPK_E_NOMEM, 0, "config.json", "out of memory");
    plan_regex_free(rxs.regexes);
    mpk_strmap_free(&ps.seen);
    free(ps.v);
    mpk_arena_free(ps.a);
    cJSON_Delete(c);
    return st;
}
