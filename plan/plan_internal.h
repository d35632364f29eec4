/* plan_internal.h — what the planner's files share: the groups being gathered (plan.c matches
 * tensors into them, plan_group.c checks and infers each). Included only by plan/ and tests. */
#ifndef MPK_PLAN_INTERNAL_H
#define MPK_PLAN_INTERNAL_H

#include "mpk_plan.h"

typedef struct {
    int src;      /* source pattern index */
    long item;    /* list value, 0 when the rule has no list on the source side */
    const mpk_ckpt_tensor *t;
} entry;

typedef struct {
    mpk_plan_group g;
    entry *e;
    size_t n, cap;
    long n_part;  /* a forward part: its list length (items 0..n_part-1 must all be there) */
    int part;     /* a part of a partitioned rule: k, */
    size_t first; /* and the index of part 0's group */
} group_acc;

/* A pattern with its captures filled in, prefix and suffix around it; the list capture as
 * list_val. NULL when out of memory. In arena a. */
char *plan_expand(mpk_arena *a, const mpk_pattern *p, const char *prefix, const char *suffix,
                  const mpk_capture *caps, int n_caps, const char *list_name, const char *list_val);
/* Adds a matched source tensor to a group (MPK_E_NOMEM, or a duplicate). */
mpk_status plan_add_entry(group_acc *acc, entry e, const char *where, mpk_error *err);
/* Whether --quantize turns rule r's outputs (out) into FP8. */
bool plan_quantizes(const mpk_rule *r, const mpk_bundle *out);
/* Checks one group (complete, consistent) and infers its outputs into acc->g.out_meta. */
mpk_status plan_finish_group(mpk_plan *p, group_acc *acc, const mpk_plan_opts *opts, mpk_error *err);
/* Splits the groups of partitioned rules into their parts (see plan_group.c). */
mpk_status plan_split_parts(mpk_plan *p, group_acc **accs, size_t *n_accs, size_t *cap,
                            const mpk_plan_opts *opts, mpk_error *err);

/* The pass-throughs that would be left half-converted (plan_unknown.c): into p->unknown, and
 * without opts->pass_unknown MPK_E_NOT_UNDERSTOOD naming the first few of each kind. */
mpk_status plan_check_unknown(mpk_plan *p, const mpk_ckpt_tensor *const *pass, size_t n_pass,
                              const mpk_ckpt_tensor *const *list, size_t n_list, const bool *used,
                              const mpk_plan_opts *opts, mpk_error *err);

/* ---- plan/spec.c, plan/spec_companions.c */
/* One {capture} pattern into p (MPK_E_SPEC naming path). */
mpk_status spec_parse_pattern(const char *text, mpk_pattern *p, const char *where, const char *path,
                              mpk_error *err);
/* Pattern text t (arena text; NULL: out of memory) into p as s reads patterns: transformers'
 * regex and target text (spec_tf_pattern) for a "semantics": "transformers" spec, else a
 * {capture} pattern. */
mpk_status spec_pattern(mpk_spec *s, const char *t, bool source, mpk_pattern *p, const char *where,
                        const char *path, mpk_error *err);
/* The companions every weight-moving rule gets: FP8 grids (_scale_inv), and the quantized
 * linears' tensors (ModelOpt NVFP4, compressed-tensors), SPEC_QUANT_COMPANIONS a rule at most. */
#define SPEC_QUANT_COMPANIONS 8
mpk_status spec_add_scale_companions(mpk_spec *s, const char *where, mpk_error *err);
mpk_status spec_add_quant_companions(mpk_spec *s, const char *where, mpk_error *err);
/* A quantized linear's companion rule: the name segment it moves ("weight_global_scale"); NULL
 * for any other rule. */
const char *spec_companion_seg(const mpk_rule *r);
/* Keeps the companions of config.json's quantization method (compressed-tensors' own only under
 * it, ModelOpt's weight_scale_2 only outside it) and picks the chains that depend on it (a [1]
 * input_scale under compressed-tensors). Called by mpk_spec_bind_sizes. */
void spec_bind_companions(mpk_spec *s, const mpk_model_config *cfg);

/* ---- plan/spec_tf.c: the parts of a "semantics": "transformers" spec */
/* A converter pattern of transformers' mapping (source: its regex; target: literal text) into p. */
mpk_status spec_tf_pattern(mpk_spec *s, const char *text, bool source, mpk_pattern *p, const char *where,
                           const char *path, mpk_error *err);
/* The list capture of a transformers rule (its `.*.`). */
mpk_status spec_tf_list(mpk_rule *r, const char *where, mpk_error *err);
/* $.renames of a transformers spec. */
struct cJSON;
mpk_status spec_tf_renames(const struct cJSON *root, mpk_spec *s, const char *where, mpk_error *err);

/* ---- plan/rename.c: transformers semantics */
#include <regex.h>
/* Compiles a Python-syntax pattern (translated to POSIX ERE: \d \w \s, (?:...), (?P<n>...);
 * lookarounds and lazy quantifiers refused with MPK_E_SPEC naming path) into s's list. */
mpk_status plan_regex_compile(mpk_spec *s, const char *py, const char *path, const struct mpk_regex **out,
                              mpk_error *err);
void plan_regex_free(struct mpk_regex *rx);
/* Searches name (leftmost match); Python groups 1..n_grp into grp/grp_len (NULL: took no part). */
bool plan_regex_search(const struct mpk_regex *rx, const char *name, regoff_t *so, regoff_t *eo,
                       const char **grp, size_t *grp_len, int n_grp);
/* The capture groups of the Python pattern. */
int plan_regex_groups(const struct mpk_regex *rx);
/* The inverse of the regex rename from -> to; NULL, or why there is none. In arena a. */
const char *plan_rename_inverse(mpk_arena *a, const char *from, const char *to, const char **inv_from,
                                const char **inv_to);
/* name with cut bytes at offset at replaced by ins (ins_len bytes), in a; NULL out of memory. */
char *plan_splice(mpk_arena *a, const char *name, size_t at, size_t cut, const char *ins, size_t ins_len);
/* The first rule of a transformers spec (companions first) whose source (targets: target) regex matches name,
 * the leftmost match among its sources (ties to the first): transformers' first converter whose
 * alternation matches. *rule, *src, the match [*so, *eo) and the list index's text (NULL: none). */
bool plan_tf_first_match(const mpk_spec *spec, bool targets, const char *name, int *rule, int *src, regoff_t *so,
                         regoff_t *eo, const char **item, size_t *item_len);
/* The outputs of a transformers plan (names: a reversed spec's before its renames are undone)
 * converted back: packing, unpack must take each group output for the rule and target that
 * made it and no pass-through for any; unpacking, packing again must take each for the rule and
 * source it came from. Else MPK_E_NOT_INVERTIBLE naming the tensor and both rules. */
mpk_status plan_tf_check_round(const mpk_plan *p, const mpk_spec *spec, const char *const *names, mpk_error *err);
/* One member m's rename (or its inverse) on name; NULL when it does not apply (*why set when its
 * replacement names a group that took no part). */
char *plan_rename_member(mpk_arena *a, const mpk_spec *s, int m, bool inverse, const char *name, const char **why);
/* The transform whose first member is renames[i] (a group: members tried together, the guard
 * *active) on name: *out (name when none applies), *fired the member that did or -1. */
mpk_status plan_rename_transform(mpk_arena *a, const mpk_spec *s, int i, bool inverse, bool *active,
                                 const char *name, const char **out, int *fired, mpk_error *err);
/* Every rename of s applied to names[0..n) in transformers' order (names in dot_natural_key
 * order, renames in spec order) into out; fired[i] (optional) the first rename that changed name
 * i (-1: none); check: each step undone by the rename's inverse gives the name back, else
 * MPK_E_NOT_INVERTIBLE. */
mpk_status plan_rename_all(mpk_arena *a, const mpk_spec *s, const char *const *names, size_t n, const char **out,
                           int *fired, bool check, mpk_error *err);
/* Packing (!inverse): plan_rename_all checked, and no two names become one. Unpacking: each name
 * traced back through the renames to the one name that renames to it (among several, the one
 * known holds: a source record's names). MPK_E_NOT_INVERTIBLE naming the tensors, spec, pattern. */
mpk_status plan_renames_checked(mpk_arena *a, const mpk_spec *s, bool inverse, const char *const *names, size_t n,
                                const mpk_strmap *known, const char **out, mpk_error *err);

/* The tensors the planner sees (plan_views.c): the checkpoint's, with --dequantize each quantized
 * weight replaced by its BF16 view and its scales left out (p->views, p->n_views). */
mpk_status plan_source_list(mpk_plan *p, const mpk_plan_opts *opts, const mpk_ckpt_tensor ***out, size_t *n_out,
                            mpk_error *err);

#endif
