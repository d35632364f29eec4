/* fuzz_config.c — config.json text: the facts moepack takes from it are in range, and the
 * rewrite pack does (quantization_config removed or replaced) works on whatever was accepted. */
#include "fuzz.h"
#include "mpk_plan.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mpk_model_config cfg;
    mpk_error err = {0};
    if (mpk_config_parse((const char *)data, size, "fuzz", &cfg, &err) == MPK_OK) {
        FUZZ_CHECK(cfg.found && cfg.num_experts >= -1 && cfg.num_experts <= 2147483647L);
        FUZZ_CHECK(cfg.hidden_size >= -1 && cfg.intermediate_size >= -1 && cfg.num_layers >= -1);
        free(mpk_config_requant(&cfg, true, NULL));
        mpk_config_free(&cfg);
    } else {
        FUZZ_CHECK(err.code != MPK_OK && err.msg[0]);
    }
    return 0;
}
