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

#endif
