/* fuzz_spec.c — a conversion spec: parsed, and, when accepted, reversed (the ops' inverses)
 * and reversed back, which gives the same number of rules. */
#include "fuzz.h"
#include "mpk_plan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mpk_spec *s = NULL, *r = NULL, *rr = NULL;
    mpk_error err = {0};
    if (mpk_spec_parse((const char *)data, size, "fuzz", &s, &err) != MPK_OK) {
        FUZZ_CHECK(err.code != MPK_OK && err.msg[0]);
        return 0;
    }
    /* a successful reverse owns what it reversed: free only the outermost */
    if (mpk_spec_reverse(s, &r, &err) != MPK_OK) {
        FUZZ_CHECK(err.code != MPK_OK && err.msg[0]);
        mpk_spec_free(s);
        return 0;
    }
    FUZZ_CHECK(r->n_rules == s->n_rules && r->reversed != s->reversed);
    if (mpk_spec_reverse(r, &rr, &err) != MPK_OK) {
        mpk_spec_free(r);
        return 0;
    }
    FUZZ_CHECK(rr->n_rules == s->n_rules && rr->reversed == s->reversed);
    mpk_spec_free(rr);
    return 0;
}
