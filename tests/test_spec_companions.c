/* test_spec_companions.c — the rules a spec gets for the tensors beside quantized weights
 * (plan/spec_companions.c): ModelOpt NVFP4's and compressed-tensors' companions of a merge +
 * concat rule, their names, their op chains, and which survive config.json's method (issue 49,
 * item 2). The bytes they move are checked end to end by tests/ctensors.py and tests/nvfp4.py. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "plan_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *good_spec =
    "{\"name\":\"t\",\"converters\":[{\"sources\":[\"x.{e}.g\",\"x.{e}.u\"],\"target\":\"x.gu\","
    "\"ops\":[{\"op\":\"merge\",\"dim\":0},{\"op\":\"concat\",\"dim\":1}]}]}";

/* The rule of a spec whose first target is text (NULL when none). */
static const mpk_rule *rule_to(const mpk_spec *s, const char *text)
{
    for (int i = 0; i < s->n_rules; i++)
        if (strcmp(s->rules[i].targets[0].text, text) == 0)
            return &s->rules[i];
    return NULL;
}

/* Issue 49, item 2: the quantized linears' companions of a merge + concat rule, named after its
 * patterns, with the chains that stack scalars and shapes, kept per config.json's method. */
static void test_quant_companions(void **state)
{
    (void)state;
    mpk_spec *s;
    mpk_error err = {0};
    for (int method = 0; method < 3; method++) { /* none, compressed-tensors, ModelOpt */
        assert_int_equal(mpk_spec_parse(good_spec, strlen(good_spec), "t.json", &s, &err), MPK_OK);
        mpk_model_config cfg = {.found = true, .num_experts = -1, .hidden_size = -1, .intermediate_size = -1};
        snprintf(cfg.quant_method, sizeof cfg.quant_method, "%s",
                 method == 1 ? "compressed-tensors" : method == 2 ? "modelopt NVFP4" : "");
        mpk_spec_bind_sizes(s, &cfg);
        const mpk_rule *packed = rule_to(s, "x.gu_weight_packed"), *shape = rule_to(s, "x.gu_weight_shape");
        const mpk_rule *in = rule_to(s, "x.gu_input_scale"), *s2 = rule_to(s, "x.gu_weight_scale_2");
        assert_non_null(rule_to(s, "x.gu_weight_scale")); /* both methods */
        assert_true((packed != NULL) == (method == 1));
        assert_true((shape != NULL) == (method == 1));
        assert_true((s2 != NULL) == (method != 1));
        assert_non_null(in);
        if (packed) { /* moved like the weights: merge, concat along the rows */
            assert_string_equal(packed->sources[1].text, "x.{e}.u_weight_packed");
            assert_int_equal(packed->n_ops, 2);
            assert_int_equal(packed->companion_of, 0);
            /* [2] -> [E, 2] -> [E, 1, 2] -> [E, sources, 2] */
            assert_int_equal(shape->n_ops, 3);
            assert_int_equal(shape->ops[1].kind, MPK_OP_RESHAPE);
            assert_int_equal(shape->ops[1].ndim, 3);
            assert_int_equal(shape->ops[1].inv_ndim, 2);
            assert_int_equal(shape->ops[2].kind, MPK_OP_CONCAT);
            assert_int_equal(shape->ops[2].dim, 1);
        }
        /* input_scale: [1] under compressed-tensors (merge, concat), [] else (a reshape between) */
        assert_int_equal(in->n_ops, method == 1 ? 2 : 3);
        assert_int_equal(in->ops[in->n_ops - 1].kind, MPK_OP_CONCAT);
        mpk_spec_free(s);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quant_companions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
