/* rename_undo.c — undoing a "semantics": "transformers" spec's renames (unpack): each regex
 * rename's inverse derived from its pattern and replacement, and a packed name traced back
 * through the renames in reverse to every name that would rename to it. One is the answer;
 * several (a name a rename leaves alone can look renamed: Kimi K2.5's blocks -> layers leaves
 * language_model.model.layers.N as it is) are told apart by the names the source record
 * (moepack.source.zst) holds, else refused (MPK_E_NOT_INVERTIBLE) naming them.
 */
#define _GNU_SOURCE
#include "plan_internal.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RX_GROUPS 16
#define MAX_PRE 16 /* names one packed name may trace back to */

/* A top-level group of a rename's pattern. */
typedef struct {
    const char *s;      /* its text, parentheses included */
    size_t len;
    int py;             /* its Python group number */
    int nested;         /* capture groups inside it */
    int inv;            /* its group number in the inverse pattern, 0 until 'to' uses it */
} top_group;

/* The end of the group opening at s (past its ')'), counting the captures inside. */
static const char *group_end(const char *s, int *nested)
{
    int depth = 0;
    bool in_class = false;
    for (; *s; s++) {
        if (*s == '\\' && s[1])
            s++;
        else if (in_class)
            in_class = *s != ']';
        else if (*s == '[')
            in_class = true;
        else if (*s == '(') {
            if (depth++ && s[1] != '?')
                (*nested)++;
        } else if (*s == ')' && --depth == 0)
            return s + 1;
    }
    return NULL;
}

/* Splits a pattern into literal text and top-level groups; why it cannot be undone, or NULL. */
static const char *split_pattern(const char *from, top_group *g, int *ng, bool *caret, bool *dollar)
{
    int py = 0;
    size_t fl = strlen(from);
    *caret = from[0] == '^';
    *dollar = fl > 1 && from[fl - 1] == '$' && from[fl - 2] != '\\';
    for (const char *s = from + *caret; s < from + fl - *dollar; s++) {
        if (*s == '\\') {
            if (!s[1] || isalnum((unsigned char)s[1]))
                return "its pattern has a class escape (\\d, \\w...) outside a group";
            s++;
        } else if (*s == '(') {
            int nested = 0;
            const char *e = group_end(s, &nested);
            if (!e || *ng == RX_GROUPS)
                return "its pattern has an unbalanced or 17th group";
            bool capt = s[1] != '?' || (s[2] == 'P' && s[3] == '<');
            if (!capt)
                return "its pattern has a (?...) group";
            g[(*ng)++] = (top_group){s, (size_t)(e - s), ++py, nested, 0};
            py += nested;
            s = e - 1;
        } else if (strchr("[]*+?{}|^$)", *s)) {
            return "its pattern has a quantifier, class or alternative outside a group";
        }
    }
    return NULL;
}

const char *plan_rename_inverse(mpk_arena *a, const char *from, const char *to, const char **inv_from,
                                const char **inv_to)
{
    top_group g[RX_GROUPS];
    int ng = 0, k = 0;
    bool caret, dollar;
    const char *why = split_pattern(from, g, &ng, &caret, &dollar);
    if (why)
        return why;
    size_t cap = 2 * (strlen(from) + strlen(to)) + 8, n = 0;
    char *f = mpk_arena_alloc(a, cap), *t = mpk_arena_alloc(a, cap);
    if (!f || !t)
        return "out of memory";
    if (caret)
        f[n++] = '^';
    for (const char *s = to; *s; s++) { /* the inverse pattern: 'to', groups where \N was */
        if (*s == '\\' && isdigit((unsigned char)s[1])) {
            char *e;
            long num = strtol(s + 1, &e, 10);
            int gi = 0;
            while (gi < ng && g[gi].py != num)
                gi++;
            if (gi == ng || g[gi].inv)
                return "its replacement uses a group twice, or one inside another";
            g[gi].inv = ++k;
            k += g[gi].nested;
            memcpy(f + n, g[gi].s, g[gi].len);
            n += g[gi].len;
            s = e - 1;
        } else {
            if (strchr(".[]()*+?{}|^$\\", *s))
                f[n++] = '\\';
            f[n++] = *s;
        }
    }
    if (dollar)
        f[n++] = '$';
    f[n] = 0;
    n = 0;
    int gi = 0;
    bool after_ref = false;
    for (const char *s = from + caret; *s && !(dollar && !s[1]); s++) { /* the inverse replacement */
        if (gi < ng && s == g[gi].s) {
            if (!g[gi].inv)
                return "its replacement drops one of its groups";
            n += (size_t)sprintf(t + n, "\\%d", g[gi].inv);
            s += g[gi++].len - 1;
            after_ref = true;
            continue;
        }
        char c = *s == '\\' ? *++s : *s;
        if (after_ref && isdigit((unsigned char)c))
            return "a digit right after a group in its pattern (\\1 then 0 would read \\10)";
        t[n++] = c;
        after_ref = false;
    }
    t[n] = 0;
    *inv_from = f;
    *inv_to = t;
    return NULL;
}

/* Every name x with R(x) == y for the transforms before t (in order), appended to out (at most
 * MAX_PRE, *n counts; more is reported as MAX_PRE + 1). */
static void preimages(mpk_arena *a, const mpk_spec *s, int t, const char *y, const char **out, int *n)
{
    if (*n > MAX_PRE)
        return;
    if (t == 0) {
        for (int k = 0; k < *n; k++)
            if (strcmp(out[k], y) == 0)
                return;
        if (*n < MAX_PRE)
            out[*n] = y;
        (*n)++;
        return;
    }
    int first = s->renames[t - 1].group;
    bool on = true;
    const char *fwd;
    int f;
    mpk_error e;
    /* y as it was: the transform left it alone */
    if (plan_rename_transform(a, s, first, false, &on, y, &fwd, &f, &e) == MPK_OK && f < 0)
        preimages(a, s, first, y, out, n);
    for (int m = first; m < first + s->renames[first].n_members; m++) { /* or one member made it */
        const char *why = NULL, *c = plan_rename_member(a, s, m, true, y, &why);
        on = true;
        if (c && plan_rename_transform(a, s, first, false, &on, c, &fwd, &f, &e) == MPK_OK && f >= 0 &&
            strcmp(fwd, y) == 0)
            preimages(a, s, first, c, out, n);
    }
}

mpk_status plan_renames_checked(mpk_arena *a, const mpk_spec *s, bool inverse, const char *const *names, size_t n,
                                const mpk_strmap *known, const char **out, mpk_error *err)
{
    const char *sname = s->name;
    if (!inverse) { /* packing: each rename's inverse checked step by step, and no two names one */
        int *fired = mpk_calloc(n + 1, sizeof *fired);
        mpk_strmap seen = {0};
        if (!fired || mpk_strmap_init(&seen, n + 1) != MPK_OK) {
            free(fired);
            MPK_FAIL(err, MPK_E_NOMEM, sname, "out of memory");
        }
        mpk_status st = plan_rename_all(a, s, names, n, out, fired, true, err);
        for (size_t i = 0, j; i < n && st == MPK_OK; i++)
            if (mpk_strmap_put(&seen, out[i], strlen(out[i]), i, &j))
                st = mpk_error_set(err, MPK_E_NOT_INVERTIBLE, 0, sname, "spec '%s': tensors '%s' and '%s' both "
                                   "become '%s' (%s, %s): the conversion could not be undone", sname, names[j],
                                   names[i], out[i], fired[j] >= 0 ? s->renames[fired[j]].path : "no rename",
                                   fired[i] >= 0 ? s->renames[fired[i]].path : "no rename");
        free(fired);
        mpk_strmap_free(&seen);
        return st;
    }
    for (size_t i = 0; i < n; i++) {
        const char *pre[MAX_PRE], *pick = NULL;
        int np = 0, nk = 0;
        size_t v;
        preimages(a, s, s->n_renames, names[i], pre, &np);
        for (int k = 0; k < np && k < MAX_PRE; k++)
            if (known && mpk_strmap_get(known, pre[k], strlen(pre[k]), &v))
                pick = pre[k], nk++;
        if (np == 1)
            pick = pre[0], nk = 1;
        if (nk == 1) {
            out[i] = pick;
            continue;
        }
        char list[600] = "";
        for (int k = 0; k < np && k < MAX_PRE && strlen(list) < 400; k++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s'%s'", k ? ", " : "", pre[k]);
        MPK_FAIL(err, MPK_E_NOT_INVERTIBLE, sname, "spec '%s' (reversed): tensor '%s' %s%s%s: %s", sname, names[i],
                 np ? "could have been named any of " : "is no name its renames make", list,
                 np > MAX_PRE ? " ..." : "", known ? "the source record (moepack.source.zst) names none of them, or "
                 "several" : "the source record pack writes (moepack.source.zst) says which, and this checkpoint "
                 "has none");
    }
    return MPK_OK;
}

mpk_status plan_tf_check_round(const mpk_plan *p, const mpk_spec *spec, const char *const *names, mpk_error *err)
{
    const mpk_spec *other = spec->reversed ? spec->base : spec; /* whose rules convert back */
    bool on_targets = !spec->reversed;
    for (size_t i = 0; other && i < p->n_outs; i++) {
        const mpk_plan_out *o = &p->outs[i];
        int ri = -1, si = -1, want_r = -1, want_s = -1;
        regoff_t so, eo;
        const char *item;
        size_t il;
        if (o->quant)
            continue;
        if (o->group >= 0) {
            const mpk_plan_group *g = &p->groups[o->group];
            want_r = (int)(g->rule - spec->rules);
            want_s = g->out_meta.n_items ? o->slot / g->out_meta.n_items : 0;
            if (want_r < 0 || want_r >= spec->n_rules)
                continue; /* a part of a partitioned rule: its own copy */
        }
        bool hit = plan_tf_first_match(other, on_targets, names[i], &ri, &si, &so, &eo, &item, &il);
        if (hit ? (ri == want_r && si == want_s) : want_r < 0)
            continue;
        const char *side = on_targets ? "target" : "source";
        char was[160] = "it passes through", now[160] = "none";
        if (want_r >= 0)
            snprintf(was, sizeof was, "%s made it (%s '%s')", other->rules[want_r].path, side,
                     (on_targets ? other->rules[want_r].targets : other->rules[want_r].sources)[want_s].text);
        if (hit)
            snprintf(now, sizeof now, "%s %s '%s'", other->rules[ri].path, side,
                     (on_targets ? other->rules[ri].targets : other->rules[ri].sources)[si].text);
        MPK_FAIL(err, MPK_E_NOT_INVERTIBLE, spec->name, "spec '%s'%s: '%s' would not be converted back the way it "
                 "came (%s; %s, the first converter matching it is %s): reorder the converters or anchor their "
                 "patterns", spec->name, spec->reversed ? " (reversed)" : "", names[i], was,
                 spec->reversed ? "packing it again" : "unpacking", now);
    }
    return MPK_OK;
}
