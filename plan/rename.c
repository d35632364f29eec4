/* rename.c — the names of a "semantics": "transformers" spec, as transformers' loader makes them
 * (core_model_loading.py: WeightTransform.__init__ / rename_source_key, GroupWeightRename,
 * PrefixChange, rename_source_key; docs/spec.md has the facts): the mapping's Python regexes run
 * with POSIX <regex.h>, every rename applied in order to every name (at most once each), a group
 * rename's members tried together (no chaining), and the inverse of each rename derived, so that
 * unpack gives every name back; a plan checks that it does on the checkpoint's own names.
 */
#define _GNU_SOURCE
#include "plan_internal.h"

#include <ctype.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RX_GROUPS 16

struct mpk_regex {
    regex_t re;
    int n_py;                   /* capture groups of the Python pattern */
    int gmap[RX_GROUPS + 1];    /* Python group -> POSIX group ((?:...) is a POSIX group too) */
    size_t n_posix;
    struct mpk_regex *next;
};

static void put(char *o, size_t *n, size_t cap, const char *s)
{
    size_t l = strlen(s);
    if (*n + l < cap)
        memcpy(o + *n, s, l + 1);
    *n += l;
}

/* One escape \c of a Python pattern in POSIX ERE (in_class: inside [...]); NULL: refused. */
static const char *tr_escape(char c, bool in_class, char *buf)
{
    switch (c) {
    case 'd': return in_class ? "0-9" : "[0-9]";
    case 'w': return in_class ? "[:alnum:]_" : "[[:alnum:]_]";
    case 's': return in_class ? "[:space:]" : "[[:space:]]";
    case 'D': return in_class ? NULL : "[^0-9]";
    case 'W': return in_class ? NULL : "[^[:alnum:]_]";
    case 'S': return in_class ? NULL : "[^[:space:]]";
    default: break;
    }
    if (isalnum((unsigned char)c) || c == 0)
        return NULL; /* \b \A \Z \1 ...: no POSIX equivalent */
    if (in_class && (c == ']' || c == '\\' || c == '^' || c == '-'))
        return NULL;
    buf[0] = !in_class && strchr(".[]()*+?{}|^$\\", c) ? '\\' : c;
    buf[1] = buf[0] == '\\' ? c : 0;
    buf[2] = 0;
    return buf;
}

/* Python regex py -> POSIX ERE in out; the group map into rx. NULL, or why it cannot be. */
static const char *translate(const char *py, char *out, size_t cap, struct mpk_regex *rx)
{
    size_t n = 0;
    bool in_class = false;
    out[0] = 0;
    for (const char *s = py; *s; s++) {
        char buf[4];
        if (*s == '\\') {
            const char *t = tr_escape(s[1], in_class, buf);
            if (!t)
                return "an escape with no POSIX equivalent (\\b, \\A, a backreference...)";
            put(out, &n, cap, t);
            s++;
        } else if (in_class) {
            in_class = *s != ']';
            buf[0] = *s, buf[1] = 0;
            put(out, &n, cap, buf);
        } else if (*s == '[') {
            in_class = true;
            put(out, &n, cap, "[");
            if (s[1] == '^')
                put(out, &n, cap, "^"), s++;
            if (s[1] == ']')
                put(out, &n, cap, "]"), s++;
        } else if (*s == '(') {
            if (++rx->n_posix > 2 * RX_GROUPS)
                return "more than 32 groups";
            if (s[1] == '?' && s[2] == ':') {
                s += 2;
            } else if (s[1] == '?' && s[2] == 'P' && s[3] == '<' && strchr(s, '>')) {
                s = strchr(s, '>');
                goto capture;
            } else if (s[1] == '?') {
                return "a lookahead/lookbehind or (?...) group (POSIX regex has none)";
            } else {
            capture:
                if (rx->n_py == RX_GROUPS)
                    return "more than 16 groups";
                rx->gmap[++rx->n_py] = (int)rx->n_posix;
            }
            put(out, &n, cap, "(");
        } else if ((*s == '*' || *s == '+' || *s == '?' || *s == '}') && s[1] == '?') {
            return "a lazy quantifier (POSIX matching is leftmost-longest)";
        } else {
            buf[0] = *s, buf[1] = 0;
            put(out, &n, cap, buf);
        }
    }
    if (in_class)
        return "an unterminated [class]";
    return n < cap ? NULL : "too long";
}

void plan_regex_free(struct mpk_regex *rx)
{
    while (rx) {
        struct mpk_regex *nx = rx->next;
        regfree(&rx->re);
        free(rx);
        rx = nx;
    }
}

mpk_status plan_regex_compile(mpk_spec *s, const char *py, const char *path, const struct mpk_regex **out,
                              mpk_error *err)
{
    struct mpk_regex *rx = mpk_calloc(1, sizeof *rx);
    char *ere = malloc(4 * strlen(py) + 16);
    if (!rx || !ere) {
        free(rx);
        free(ere);
        MPK_FAIL(err, MPK_E_NOMEM, s->name, "out of memory");
    }
    const char *why = translate(py, ere, 4 * strlen(py) + 16, rx);
    int rc = why ? 0 : regcomp(&rx->re, ere, REG_EXTENDED);
    free(ere);
    if (why || rc) {
        free(rx);
        MPK_FAIL(err, MPK_E_SPEC, s->name, "%s: pattern '%s': %s", path, py,
                 why ? why : "not a valid regular expression");
    }
    rx->next = s->regexes;
    s->regexes = rx;
    *out = rx;
    return MPK_OK;
}

bool plan_regex_search(const struct mpk_regex *rx, const char *name, regoff_t *so, regoff_t *eo,
                       const char **grp, size_t *grp_len, int n_grp)
{
    regmatch_t m[2 * RX_GROUPS + 2];
    if (rx->n_posix + 1 > sizeof m / sizeof m[0] || regexec(&rx->re, name, rx->n_posix + 1, m, 0) != 0)
        return false;
    *so = m[0].rm_so;
    *eo = m[0].rm_eo;
    for (int g = 1; g <= n_grp; g++) {
        int pg = g <= rx->n_py ? rx->gmap[g] : -1;
        bool took = pg >= 0 && m[pg].rm_so >= 0;
        grp[g] = took ? name + m[pg].rm_so : NULL;
        grp_len[g] = took ? (size_t)(m[pg].rm_eo - m[pg].rm_so) : 0;
    }
    return true;
}

int plan_regex_groups(const struct mpk_regex *rx)
{
    return rx->n_py;
}

/* transformers' replacement: every \N (all its digits) is group N of the match; the first
 * occurrence of the matched text in name is replaced, once (str.replace(..., 1)). NULL with
 * *why on a group that did not take part; NULL without *why when out of memory. */
static char *replace(mpk_arena *a, const struct mpk_regex *rx, const char *to, const char *name, regoff_t so,
                     regoff_t eo, const char **why)
{
    const char *grp[RX_GROUPS + 1];
    size_t gl[RX_GROUPS + 1], cap = strlen(name) + strlen(to) + 1;
    regoff_t s2, e2;
    plan_regex_search(rx, name, &s2, &e2, grp, gl, RX_GROUPS);
    for (int g = 1; g <= RX_GROUPS; g++)
        cap += gl[g] * 4;
    char *r = mpk_arena_alloc(a, cap + strlen(name));
    if (!r)
        return NULL;
    size_t o = 0;
    for (const char *t = to; *t; t++) {
        if (*t == '\\' && isdigit((unsigned char)t[1])) {
            long g = strtol(t + 1, (char **)&t, 10);
            t--;
            if (g < 1 || g > rx->n_py || !grp[g]) {
                *why = "its replacement names a group the pattern has not, or one that took no part";
                return NULL;
            }
            memcpy(r + o, grp[g], gl[g]);
            o += gl[g];
        } else {
            r[o++] = *t;
        }
    }
    r[o] = 0;
    size_t ml = (size_t)(eo - so);
    const char *occ = memmem(name, strlen(name), name + so, ml);
    return plan_splice(a, name, (size_t)(occ - name), ml, r, o);
}

char *plan_splice(mpk_arena *a, const char *name, size_t at, size_t cut, const char *ins, size_t ins_len)
{
    char *out = mpk_arena_alloc(a, strlen(name) - cut + ins_len + 1);
    if (!out)
        return NULL;
    memcpy(out, name, at);
    memcpy(out + at, ins, ins_len);
    strcpy(out + at + ins_len, name + at + cut);
    return out;
}

/* A PrefixChange (forward or undone: add and remove swap). NULL: it does not apply. */
static char *prefix_change(mpk_arena *a, const mpk_rename *r, bool inverse, const char *name)
{
    bool add = (r->kind == MPK_RENAME_PREFIX_ADD) != inverse;
    size_t ml = strlen(r->model_prefix), pl = strlen(r->from);
    const char *rest = name;
    if (ml) {
        if (strncmp(name, r->model_prefix, ml) != 0 || name[ml] != '.')
            return NULL;
        rest = name + ml + 1;
    }
    bool has = strncmp(rest, r->from, pl) == 0 && rest[pl] == '.';
    if (add ? (has || !*rest) : (!has || !rest[pl + 1]))
        return NULL;
    return add ? mpk_arena_printf(a, "%.*s%s%s.%s", (int)ml, name, ml ? "." : "", r->from, rest)
               : mpk_arena_printf(a, "%.*s%s%s", (int)ml, name, ml ? "." : "", rest + pl + 1);
}

char *plan_rename_member(mpk_arena *a, const mpk_spec *s, int m, bool inverse, const char *name, const char **why)
{
    const mpk_rename *r = &s->renames[m];
    if (r->kind == MPK_RENAME_PREFIX_ADD || r->kind == MPK_RENAME_PREFIX_REMOVE)
        return prefix_change(a, r, inverse, name);
    const struct mpk_regex *rx = inverse ? r->inv_rx : r->rx;
    regoff_t so, eo;
    if (!rx || !plan_regex_search(rx, name, &so, &eo, NULL, NULL, 0))
        return NULL;
    return replace(a, rx, inverse ? r->inv_to : r->to, name, so, eo, why);
}

/* One transform (renames[i], a group's members i..i+n-1) on name. *out the new name (name when
 * none applies), *fired the member that did (-1 none). A group's members are tried together
 * like transformers' alternation: the leftmost match, ties to the first member (by "to" when
 * undone); members past the first apply only once the first has (*active). */
mpk_status plan_rename_transform(mpk_arena *a, const mpk_spec *s, int i, bool inverse, bool *active, const char *name,
                            const char **out, int *fired, mpk_error *err)
{
    const mpk_rename *r = &s->renames[i];
    *out = name;
    *fired = -1;
    if (r->kind == MPK_RENAME_PREFIX_ADD || r->kind == MPK_RENAME_PREFIX_REMOVE) {
        char *n = prefix_change(a, r, inverse, name);
        if (n)
            *out = n, *fired = i;
        return MPK_OK;
    }
    int best = -1, best_rank = 0;
    regoff_t bso = 0, beo = 0;
    for (int m = i; m < i + r->n_members; m++) {
        const mpk_rename *mr = &s->renames[m];
        const struct mpk_regex *rx = inverse ? mr->inv_rx : mr->rx;
        regoff_t so, eo;
        const char *g[1];
        size_t gl[1];
        if (!rx || !plan_regex_search(rx, name, &so, &eo, g, gl, 0))
            continue;
        int rank = inverse ? mr->inv_rank : m - i;
        if (best < 0 || so < bso || (so == bso && rank < best_rank))
            best = m, best_rank = rank, bso = so, beo = eo;
    }
    if (best < 0)
        return MPK_OK;
    if (best_rank == 0)
        *active = true;
    else if (!*active)
        return MPK_OK; /* GroupWeightRename's guard: its first member not seen yet */
    const mpk_rename *br = &s->renames[best];
    const char *why = NULL;
    char *n = replace(a, inverse ? br->inv_rx : br->rx, inverse ? br->inv_to : br->to, name, bso, beo, &why);
    if (!n && why)
        MPK_FAIL(err, MPK_E_SPEC, s->name, "%s: tensor '%s': pattern '%s': %s", br->path, name,
                 inverse ? br->inv_from : br->from, why);
    if (!n)
        MPK_FAIL(err, MPK_E_NOMEM, s->name, "out of memory");
    *out = n;
    *fired = best;
    return MPK_OK;
}

/* transformers' dot_natural_key: '.'-separated segments, all-digit ones as integers before
 * the others, the rest as strings. */
static int dot_natural_cmp(const char *a, const char *b)
{
    for (;;) {
        size_t la = strcspn(a, "."), lb = strcspn(b, ".");
        bool da = la > 0, db = lb > 0;
        for (size_t k = 0; k < la; k++)
            da &= isdigit((unsigned char)a[k]) != 0;
        for (size_t k = 0; k < lb; k++)
            db &= isdigit((unsigned char)b[k]) != 0;
        if (da != db)
            return da ? -1 : 1;
        int c = 0;
        if (da) {
            const char *sa = a, *sb = b;
            size_t ea = la, eb = lb;
            while (ea > 1 && *sa == '0')
                sa++, ea--;
            while (eb > 1 && *sb == '0')
                sb++, eb--;
            c = ea != eb ? (ea < eb ? -1 : 1) : memcmp(sa, sb, ea);
        } else {
            c = memcmp(a, b, la < lb ? la : lb);
            if (!c && la != lb)
                c = la < lb ? -1 : 1;
        }
        if (c)
            return c < 0 ? -1 : 1;
        if (!a[la] || !b[lb])
            return a[la] ? 1 : b[lb] ? -1 : 0;
        a += la + 1;
        b += lb + 1;
    }
}

static const char *const *sort_names;
static int cmp_idx(const void *x, const void *y)
{
    size_t i = *(const size_t *)x, j = *(const size_t *)y;
    int c = dot_natural_cmp(sort_names[i], sort_names[j]);
    return c ? c : (i < j ? -1 : i > j);
}

mpk_status plan_rename_all(mpk_arena *a, const mpk_spec *s, const char *const *names, size_t n, const char **out,
                           int *fired, bool check, mpk_error *err)
{
    size_t *ord = mpk_calloc(n + 1, sizeof *ord);
    bool *active = mpk_calloc((size_t)s->n_renames + 1, sizeof *active);
    if (!ord || !active) {
        free(ord);
        free(active);
        MPK_FAIL(err, MPK_E_NOMEM, s->name, "out of memory");
    }
    for (size_t i = 0; i < n; i++)
        ord[i] = i;
    sort_names = names;
    qsort(ord, n, sizeof *ord, cmp_idx);
    mpk_status st = MPK_OK;
    for (size_t k = 0; k < n && st == MPK_OK; k++) {
        size_t i = ord[k];
        const char *cur = names[i], *nxt, *why = NULL;
        if (fired)
            fired[i] = -1;
        for (int t = 0; t < s->n_renames && st == MPK_OK; t += s->renames[t].n_members) {
            int f;
            if ((st = plan_rename_transform(a, s, t, false, &active[t], cur, &nxt, &f, err)) != MPK_OK || f < 0)
                continue;
            const char *back = check ? plan_rename_member(a, s, f, true, nxt, &why) : cur;
            if (!back || strcmp(back, cur) != 0) /* its inverse must give the name back */
                st = mpk_error_set(err, MPK_E_NOT_INVERTIBLE, 0, s->name, "spec '%s': %s ('%s') renames '%s' to "
                                   "'%s', which its inverse%s%s gives back as '%s': the conversion could not be "
                                   "undone byte for byte", s->name, s->renames[f].path,
                                   s->renames[f].kind == MPK_RENAME_REGEX ? s->renames[f].from : "prefix change",
                                   cur, nxt, s->renames[f].inv_why ? " cannot be: " : "",
                                   s->renames[f].inv_why ? s->renames[f].inv_why : "", back ? back : "nothing");
            if (fired && fired[i] < 0)
                fired[i] = f;
            cur = nxt;
        }
        out[i] = cur;
    }
    free(ord);
    free(active);
    return st;
}

/* The first rule (companions first) whose source regex matches name, the leftmost match of its
 * sources (ties to the first): transformers' first converter whose alternation matches. */
bool plan_tf_first_match(const mpk_spec *spec, bool targets, const char *name, int *rule, int *src, regoff_t *so,
                         regoff_t *eo, const char **item, size_t *item_len)
{
    for (int pass = 0; pass < 2; pass++)
        for (int ri = 0; ri < spec->n_rules; ri++) {
            const mpk_rule *r = &spec->rules[ri];
            if ((r->scale_of >= 0 || r->companion_of >= 0) != (pass == 0))
                continue; /* companions first: their names extend the weights' */
            *src = -1;
            const mpk_pattern *pats = targets ? r->targets : r->sources;
            for (int si = 0; si < (targets ? r->n_targets : r->n_sources); si++) {
                regoff_t s0, e0;
                const char *g[2];
                size_t gl[2];
                if (!plan_regex_search(pats[si].rx, name, &s0, &e0, g, gl, pats[si].star) ||
                    (*src >= 0 && s0 >= *so))
                    continue;
                *src = si, *so = s0, *eo = e0;
                *item = pats[si].star ? g[1] : NULL;
                *item_len = pats[si].star ? gl[1] : 0;
            }
            if (*src >= 0) {
                *rule = ri;
                return true;
            }
        }
    return false;
}
