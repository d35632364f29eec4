/* mpk_converter.h — the conversion graph: specs, presets, planning, streaming execution.
 *
 * A conversion spec (JSON, documented in README.md) says how source tensor names map to
 * target tensor names: renames (substring replacements) and converters (source patterns
 * with {captures} -> one target pattern, through a chain of ops from mpk_ops.h). The
 * planner matches every source tensor of a checkpoint, groups the ones that build the same
 * target, checks the groups are complete and consistent, and lays out the output shards.
 * The executor streams: byte-permutation ops become ranged reads written at their final
 * offsets; compute ops (transpose, cast) run in bounded blocks.
 */
#ifndef MPK_CONVERTER_H
#define MPK_CONVERTER_H

#include "mpk_formats.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- config.json */

typedef struct mpk_model_config {
    bool found;                  /* config.json was present and parsed */
    char model_type[64];         /* "" when absent */
    char text_model_type[64];    /* text_config.model_type, "" when absent */
    long num_experts;            /* -1 when absent */
    long hidden_size;
    long intermediate_size;      /* moe_intermediate_size when present */
    long num_layers;
    void *json;                  /* the parsed cJSON document (owned) */
} mpk_model_config;

/* Loads DIR/config.json; a missing file is MPK_OK with cfg->found false. Free with
 * mpk_config_free. */
mpk_status mpk_config_load(const char *dir, mpk_model_config *cfg, mpk_error *err);
void mpk_config_free(mpk_model_config *cfg);

typedef enum mpk_expert_layout {
    MPK_LAYOUT_NONE,       /* no expert tensors */
    MPK_LAYOUT_PER_EXPERT, /* ...experts.<e>.... names */
    MPK_LAYOUT_PACKED,     /* one stacked tensor per layer */
    MPK_LAYOUT_MIXED,
    MPK_LAYOUT_COUNT
} mpk_expert_layout;

/* Looks at tensor names and ranks. */
mpk_expert_layout mpk_detect_layout(const mpk_ckpt *c);
const char *mpk_layout_name(mpk_expert_layout l);

#ifdef __cplusplus
}
#endif
#endif
