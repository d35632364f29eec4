/* mpk_plan.h — what a conversion does, decided before a byte moves: config.json, specs,
 * presets, expert layouts, planning. (Executing a plan: exec/mpk_exec.h.)
 *
 * A conversion spec (JSON, documented in README.md) says how source tensor names map to
 * target tensor names: renames (substring replacements) and converters (source patterns
 * with {captures} -> one target pattern, through a chain of ops from mpk_ops.h). The
 * planner matches every source tensor of a checkpoint, groups the ones that build the same
 * target, checks the groups are complete and consistent, and lays out the output shards.
 */
#ifndef MPK_PLAN_H
#define MPK_PLAN_H

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
    char quant_key[32];          /* where a quantization is declared: "quantization_config",
                                    "compression_config", "hf_quant_config.json"; "" for none */
    char quant_method[64];       /* its quant_method (ModelOpt: "modelopt QUANT_ALGO"), "?" when
                                    it names none */
    char quant_block[64];        /* quantization_config.weight_block_size as JSON, "" when absent */
    long quant_group;            /* values per block scale (ModelOpt's group_size): -1 absent, -2
                                    not a number */
    char quant_format[32];       /* compressed-tensors' "format" ("nvfp4-pack-quantized"), "" absent */
    char quant_bits_key[96];     /* compressed-tensors: the first config group's weights.num_bits
                                    that is a number other than 4 ("quantization_config.config_groups.
                                    group_0.weights.num_bits"), "" when none is */
    long quant_bits;             /* its value */
} mpk_model_config;

/* Why cfg's declared quantization is one moepack does not implement (a sentence naming the
 * key and the method), or NULL when it has none or one moepack handles: "fp8" with 128x128
 * blocks (DeepSeek style) and "mxfp4" (gpt-oss). Static or cfg-owned storage, written to buf. */
const char *mpk_config_quant_unsupported(const mpk_model_config *cfg, char *buf, size_t cap);
/* The same, compressed-tensors included: its nvfp4-pack-quantized, float-quantized and
 * pack-quantized are understood (packed with their companions, or dequantized), any other format
 * is refused naming it. dequantize: whether the conversion dequantizes; pack-quantized is then
 * refused unless every config group's weights are 4 bits (INT8 codes would be read as INT4). */
const char *mpk_config_quant_refused(const mpk_model_config *cfg, bool dequantize, char *buf, size_t cap);
/* The architectures[] of config.json (i < count), NULL past the end. Borrowed from cfg. */
const char *mpk_config_architecture(const mpk_model_config *cfg, int i);

/* Loads DIR/config.json; a missing file is MPK_OK with cfg->found false. Free with
 * mpk_config_free. */
mpk_status mpk_config_load(const char *dir, mpk_model_config *cfg, mpk_error *err);
/* The same from config.json's text; path names it in messages. */
mpk_status mpk_config_parse(const char *text, size_t len, const char *path, mpk_model_config *cfg,
                            mpk_error *err);
void mpk_config_free(mpk_model_config *cfg);
/* config.json text for a quantization change: quantization_config removed (remove = true)
 * or set to qc (a cJSON object, duplicated). NULL without a source config. Free with free(). */
char *mpk_config_requant(const mpk_model_config *cfg, bool remove, const void *qc);

typedef enum mpk_expert_layout {
    MPK_LAYOUT_NONE,       /* no expert tensors */
    MPK_LAYOUT_PER_EXPERT, /* ...experts.<e>.... names */
    MPK_LAYOUT_PACKED,     /* one stacked tensor per layer */
    MPK_LAYOUT_MIXED,
    MPK_LAYOUT_COUNT
} mpk_expert_layout;

/* Looks at tensor names and ranks. */
mpk_expert_layout mpk_detect_layout(const mpk_ckpt *c);
/* A per-expert tensor's name: ".experts.<n>." or ".experts.expert_<n>." in it. */
bool mpk_per_expert_name(const char *n);
const char *mpk_layout_name(mpk_expert_layout l);


/* ---------------------------------------------------------------- specs */

#include "mpk_ops.h"

#define MPK_PATTERN_MAX_PARTS 32
#define MPK_SPEC_MAX_OPS 16

struct mpk_regex; /* a compiled pattern (plan/rename.c) */

/* A name pattern: literal text with {capture}s; a capture matches one dot-free segment. In a
 * "semantics": "transformers" spec, a pattern of transformers' mapping instead: rx searches
 * names with it (a source: the mapping's regex, its `.*.` the list index; a target: its literal
 * text), and parts spell it out as text with the list index as a capture, for writing names. */
typedef struct mpk_pattern {
    const char *text;
    int n_parts;
    struct {
        bool capture;
        const char *s; /* literal text or capture name */
        size_t len;
    } parts[MPK_PATTERN_MAX_PARTS];
    const struct mpk_regex *rx; /* transformers semantics: NULL otherwise */
    int star;                   /* transformers: the regex group of the list index (0: none) */
    bool literal;               /* transformers: parts spell out every name rx matches (the
                                   pattern is literal text but for `.` and the list index) */
} mpk_pattern;

typedef struct mpk_rule {
    mpk_pattern sources[8];
    int n_sources;
    mpk_pattern targets[8];
    int n_targets;
    mpk_op ops[MPK_SPEC_MAX_OPS];
    int n_ops;
    const char *list_capture;   /* the capture that indexes the list (e.g. "expert"), or NULL */
    bool list_in_sources;       /* true: merged from many sources; false: split into targets */
    const char *source_shape[MPK_MAX_DIMS]; /* optional config check ("E", "H", "2I") */
    int source_shape_ndim;
    char path[64];              /* JSON path of the rule in its spec, for messages */
    int scale_of;               /* >= 0: a companion that moves rule scale_of's FP8 scale grids
                                   (every pattern + "_scale_inv", same ops); -1 otherwise */
    bool partition;             /* "partition": the list is cut into as many equal runs as the
                                   side without it has patterns; run k goes through the ops
                                   alone and builds target k (reversed: source k makes run k).
                                   ERNIE-4.5-VL: experts 0..E-1 text, E..2E-1 vision */
    int companion_of;           /* >= 0: a companion that moves a tensor beside rule companion_of's
                                   quantized weights (ModelOpt: weight_scale, weight_scale_2,
                                   input_scale; compressed-tensors: weight_packed, weight_scale,
                                   weight_global_scale, ...); -1 otherwise */
    int companion_kind;         /* which of them (plan/spec_companions.c) */
} mpk_rule;

/* A rename. Old specs: a literal substring replaced (first occurrence) in the names no rule
 * consumes and in the targets. "semantics": "transformers": one of transformers' renamings,
 * applied to every name before the converters match (plan/rename.c). */
enum { MPK_RENAME_LITERAL, MPK_RENAME_REGEX, MPK_RENAME_PREFIX_ADD, MPK_RENAME_PREFIX_REMOVE };
typedef struct mpk_rename {
    const char *from, *to;      /* literal: substring and replacement; regex: the pattern (Python
                                   syntax) and its replacement (\1...); prefix: the prefix */
    int kind;                   /* MPK_RENAME_* */
    int group;                  /* transformers: the index of its transform's first member (a
                                   GroupWeightRename's members are one transform) */
    int n_members;              /* on a transform's first member: its members (1 alone) */
    const char *model_prefix;   /* a prefix change's model prefix ("" for none) */
    const struct mpk_regex *rx, *inv_rx; /* the pattern, and the inverse's (NULL: none) */
    const char *inv_from, *inv_to;       /* the derived inverse: pattern and replacement */
    const char *inv_why;        /* why it has no inverse, NULL when it has */
    int inv_rank;               /* undone, its place in its group (members sorted by "to") */
    char path[40];              /* "$.renames[3]" or "$.renames[3].group[1]" */
} mpk_rename;

typedef struct mpk_spec {
    const char *name;
    const char *description;
    const char **model_types;
    int n_model_types;
    mpk_rename *renames;
    int n_renames;
    mpk_rule *rules;
    int n_rules;
    bool reversed;
    mpk_pattern *pass;          /* "pass": tensors the spec declares pass-throughs (checked by
                                   no refusal: JetMoE's attention experts) */
    int n_pass;
    const char **architectures; /* "architectures": when set and config.json lists some, one of
                                   them must be here for --preset auto to pick the spec */
    int n_architectures;
    bool dequantizes;           /* the spec itself dequantizes (gpt_oss): config.json loses its
                                   quantization_config (reversed: gets quant_config back) */
    void *json;                 /* the parsed document (cJSON, owned), synth section included */
    mpk_arena *arena;
    bool transformers;          /* "semantics": "transformers": transformers' loader's rules
                                   (regex patterns; renames first, on every name; docs/spec.md) */
    struct mpk_regex *regexes;  /* the compiled patterns (owned; a reversed spec borrows) */
    struct mpk_spec *base;      /* a reversed spec owns the spec it reverses (its strings) */
    bool scale_dot;             /* "scale_name": "scale": block scales are X.scale beside X.weight
                                   (DeepSeek-V4), not X.weight_scale_inv */
} mpk_spec;

/* Parses a spec document; where names it in messages. Malformed specs fail with
 * MPK_E_SPEC and the JSON path of the problem ("$.converters[1].ops[0].dim"). */
mpk_status mpk_spec_parse(const char *text, size_t len, const char *where, mpk_spec **out,
                          mpk_error *err);
/* A new spec that undoes s: sources and targets swap, op chains invert, renames swap.
 * On success *out takes ownership of s (it borrows s's strings): free only *out. */
mpk_status mpk_spec_reverse(mpk_spec *s, mpk_spec **out, mpk_error *err);
/* Reshape sizes named after config.json (E, I, H, 2I, E*I) replaced by cfg's values (those it
 * lacks stay named: inferring them fails, saying so). Before reversing. */
void mpk_spec_bind_sizes(mpk_spec *s, const mpk_model_config *cfg);
/* NULL-safe. */
void mpk_spec_free(mpk_spec *s);

/* Embedded presets. */
typedef struct mpk_preset_src {
    const char *name;
    const char *json;
} mpk_preset_src;
extern const mpk_preset_src mpk_presets[];
extern const size_t mpk_n_presets;
/* Loads preset by name, or "auto": the preset whose model_types list cfg's model_type
 * (or text model_type) and, when it lists architectures, one of config.json's. MPK_E_PRESET
 * when no preset has the model type; MPK_E_NOT_UNDERSTOOD when presets have it but none the
 * architecture (a model type shared by different models: DeepSeek-OCR-2's deepseek_vl_v2). */
mpk_status mpk_preset_load(const char *name, const mpk_model_config *cfg, mpk_spec **out,
                           mpk_error *err);

/* Matches pattern p inside name (starting at a segment boundary, ending at one). On a match
 * fills caps (values, up to 8), start and end, returns true. */
typedef struct mpk_capture {
    const char *name;
    size_t name_len;
    const char *val;
    size_t len;
} mpk_capture;
bool mpk_pattern_match(const mpk_pattern *p, const char *name, mpk_capture *caps, int *n_caps,
                       size_t *start, size_t *end);

/* ---------------------------------------------------------------- plans */

typedef struct mpk_plan_out {
    const char *name;
    mpk_tmeta meta;
    uint64_t nbytes;
    int group;                          /* index into groups, -1 for a pass-through */
    int slot;                           /* position in the group's output bundle */
    const mpk_ckpt_tensor *pass;        /* the source of a pass-through */
    int shard;                          /* output shard (0-based) */
    int quant;                          /* --quantize: 1 the F8_E4M3 weight, 2 its F32 scale
                                           grid (named target + "_scale_inv"); 0 otherwise.
                                           nvfp4: 1 the U8 codes, 2 the F8_E4M3 target +
                                           "_weight_scale", 3 the F32 target + "_weight_scale_2"
                                           [lead.., parts] ([lead..] for one part); mxfp4: 1 the
                                           U8 codes, 2 the F8_E8M0 target + "_scale_inv" */
    int parts;                          /* nvfp4: the fused projections along the rows (a
                                           rule's sources: gate and up), each its own global
                                           scale; 0 otherwise */
} mpk_plan_out;

/* How a --dequantize view decodes (plan_views.c finds them). */
typedef enum mpk_view_kind {
    MPK_VIEW_BLOCK,      /* FP8 with a b x b grid (F32 or F8_E8M0), or MXFP4 codes (U8/I8) with one
                            F8_E8M0 per 32 values of a row: told apart by the weight's dtype */
    MPK_VIEW_NVFP4,      /* ModelOpt: e2m1 x f32(e4m3 x weight_scale_2) */
    MPK_VIEW_NVFP4_CT,   /* compressed-tensors nvfp4-pack-quantized: e2m1 x f32(e4m3 / weight_global_scale) */
    MPK_VIEW_FP8_ROW,    /* FP8 x one F32 weight_scale per row ([R, 1]) */
    MPK_VIEW_FP8_TENSOR, /* FP8 x one F32 weight_scale */
    MPK_VIEW_INT4,       /* compressed-tensors pack-quantized INT4: (q - 8) x BF16 scale per group; scale2 is
                            weight_shape, checked when read */
    MPK_VIEW_NVFP4_PACKED, /* packed NVFP4 (--quantize nvfp4, ModelOpt's names): T, T_weight_scale, and
                            T_weight_scale_2 F32 [lead.., parts] or [lead..]: each part's rows (gate, up)
                            their own global scale (mpk_dequant_nvfp4_packed) */
    MPK_VIEW_COUNT
} mpk_view_kind;

/* --dequantize: a quantized weight with its scales, seen by the planner as one BF16 tensor (named
 * X.weight: compressed-tensors' X.weight_packed is renamed). */
typedef struct mpk_plan_view {
    mpk_ckpt_tensor t;                  /* first: plans point at it like at any source tensor */
    mpk_tensor_info info;
    const mpk_ckpt_tensor *weight, *scale;
    const mpk_ckpt_tensor *scale2;      /* NVFP4: the global scale (one F32; packed: one per matrix
                                           and part); NULL otherwise */
    mpk_view_kind kind;
} mpk_plan_view;

typedef struct mpk_plan_group {
    const mpk_rule *rule;
    const char *key;
    const char *prefix, *suffix;
    mpk_capture caps[8];
    int n_caps;
    int n_items;                        /* list length on the source side (1 if none) */
    long item_base;                     /* a part of a partitioned rule: the list value of its
                                           first item (forward: sources, reversed: targets);
                                           the group's rule is then that part's own */
    const mpk_ckpt_tensor **src;        /* [n_sources * n_items] */
    mpk_bundle out_meta;
} mpk_plan_group;

typedef struct mpk_plan_opts {
    uint64_t max_shard_size;            /* bytes; 0 = one shard */
    const mpk_model_config *cfg;        /* optional: checks counts and shapes */
    bool dequantize;                    /* FP8 weight + weight_scale_inv -> BF16, scales dropped */
    int quantize_block;                 /* > 0: rule outputs become FP8 (E4M3) with b x b scale
                                           grids; norms, router, embeddings pass through */
    int quantize4;                      /* 1 NVFP4, 2 MXFP4: rule outputs become 4-bit codes with
                                           their scales (mpk_plan_out's quant) */
    bool pass_unknown;                  /* copy what the spec does not understand (below) */
    const mpk_strmap *known_names;      /* unpacking with a "semantics": "transformers" spec: the
                                           names the output should have (a source record's), to
                                           pick among names the renames could undo to; or NULL */
} mpk_plan_opts;

/* A tensor the spec does not understand, and the rule of "nothing half-converted" it breaks. */
typedef struct mpk_plan_unknown {
    const char *name;
    const char *why;
} mpk_plan_unknown;

/* Where the outputs go when the output follows a given file layout instead of moepack's own
 * (model-0000i-of-0000n.safetensors, tensors in name order, reference headers): a source
 * release pack recorded (exact header bytes and index text: unpack gives the files back byte
 * for byte), or an index (--layout-like: its file names and tensor-to-file assignment, headers
 * written the reference way). */
typedef struct mpk_layout {
    size_t n_files;
    const char **files;                 /* file names (checked safe) */
    const char **headers;               /* per file: its first 8 + N bytes verbatim, or NULL */
    size_t *header_len;
    mpk_st_header **parsed;             /* per file: headers[f] parsed, or NULL */
    mpk_strmap file_of;                 /* tensor name -> file index */
    const char *index_name;             /* the index file to write, NULL for none */
    const char *index_text;             /* its bytes verbatim, or NULL: formatted */
    size_t index_len;
    const char *config_text;            /* the config.json to write (the release's verbatim, or
                                           the packed one as edited since pack), or NULL */
    const char *config_note;            /* why config_text is not simply the recorded one (a
                                           warning to give when the layout is followed), or NULL */
    mpk_arena *arena;
} mpk_layout;
/* NULL-safe; frees l itself. */
void mpk_layout_free(mpk_layout *l);
/* The names l would write, checked against each other and against the files the run writes or
 * removes beside them: each file distinct, none hidden, named as config.json, as the index, or
 * with moepack's own prefix ("moepack.": the manifest, the source record, the staging records).
 * Such a name would have one of those writes replace a shard's bytes, or the landing remove the
 * shard, with the run reporting success. code (with where: the record or the index read) when
 * one is. */
mpk_status mpk_layout_check_names(const mpk_layout *l, mpk_status code, const char *where, mpk_error *err);
/* Why a file of a layout (or its index, index_name NULL) may not be named name, NULL when it may. */
const char *mpk_layout_name_taken(const char *name, const char *index_name);

typedef struct mpk_plan {
    const mpk_ckpt *src;
    const mpk_spec *spec;
    mpk_plan_group *groups;
    size_t n_groups;
    mpk_plan_out *outs;                 /* natural order of names */
    size_t n_outs;
    size_t n_pass;
    size_t n_consumed;                  /* source tensors consumed by rules */
    size_t n_shards;
    uint64_t total_bytes;
    mpk_plan_view *views;               /* --dequantize views (sources point into this) */
    size_t n_views;
    int fp8_block;                      /* block edge of FP8 scale grids (128) */
    int quant4;                         /* opts->quantize4: 1 NVFP4, 2 MXFP4, 0 neither */
    mpk_plan_unknown *unknown;          /* tensors passed through under opts->pass_unknown that
                                           would else refuse the plan, in source order */
    size_t n_unknown;
    mpk_arena *arena;
    const mpk_layout *layout;           /* the file layout outputs follow (mpk_plan_use_layout),
                                           or NULL: moepack's own */
    void *owner;                        /* what the plan's source and spec belong to (a public
                                           plan handle owns them), freed by mpk_plan_free */
    void (*owner_free)(void *owner);
} mpk_plan;

/* config.json for a compressed-tensors checkpoint converted by p with its quantization kept
 * (plan/config_ct.c): quantization_config's config_groups[*].targets and ignore entries that
 * name a module exactly are renamed to what it becomes; class names and "re:" patterns are kept
 * when they name after the conversion what they named before, module for module. An entry that
 * cannot be kept true (the exact name of one per-expert module, merged with others; a pattern
 * matching a module but not what it becomes, or the reverse) is MPK_E_NOT_UNDERSTOOD naming its
 * key. *out: NULL when nothing changes (or cfg is not compressed-tensors), else the new text,
 * owned by the caller (free()). Thread-safe. */
mpk_status mpk_config_ct_rewrite(const mpk_model_config *cfg, const mpk_plan *p, char **out, mpk_error *err);

/* The dequantize view behind a source tensor pointer of the plan, NULL for a real tensor. */
const mpk_plan_view *mpk_plan_view_of(const mpk_plan *p, const mpk_ckpt_tensor *t);
/* s is an FP8 weight w's scale grid with b x b blocks: F32, w's leading dims, then
 * ceil(rows / b) x ceil(cols / b). */
bool mpk_fp8_grid_matches(const mpk_tensor_info *w, const mpk_tensor_info *s, int b);
/* s holds w's block scales in a layout moepack moves with it: an FP8 grid (above, or F8_E8M0
 * b x b), or MXFP4's (w U8/I8 codes [.., R, C/2], s F8_E8M0 [.., R, C/32]: *rows set, blocks
 * along rows only, so no concat can straddle one). */
bool mpk_block_scales_match(const mpk_tensor_info *w, const mpk_tensor_info *s, int b, bool *rows);

/* Matches every tensor of src against spec, groups and checks them, infers every output and
 * lays out the shards. Errors: MPK_E_EXPERT_MISSING, MPK_E_SHAPE, MPK_E_DTYPE_MISMATCH,
 * MPK_E_CONFLICT, MPK_E_ALREADY_CONVERTED, MPK_E_SPEC, MPK_E_QUANT (an FP8 scale grid that
 * does not match its weight, or blocks that would straddle a concat: I % 128 != 0),
 * MPK_E_NOT_UNDERSTOOD (opts->cfg declares a quantization moepack does not implement; or,
 * without opts->pass_unknown, a per-expert tensor no rule consumes or a quantization companion
 * left behind by the weight a rule moves: the message names them, the first few and a count).
 * Owned by the caller (mpk_plan_free). */
mpk_status mpk_plan_build(const mpk_ckpt *src, const mpk_spec *spec, const mpk_plan_opts *opts,
                          mpk_plan **out, mpk_error *err);
void mpk_plan_free(mpk_plan *p);
/* Puts every output of p where l says (p->n_shards becomes l->n_files, p->layout l, which must
 * outlive p). MPK_E_CONFLICT naming the first output l does not place, one that differs (dtype,
 * shape) from l's recorded header, or a recorded tensor the plan does not make; p unchanged then. */
mpk_status mpk_plan_use_layout(mpk_plan *p, const mpk_layout *l, mpk_error *err);
/* The name of output shard sh (0-based): the layout's, or model-0000i-of-0000n.safetensors. */
void mpk_plan_shard_name(const mpk_plan *p, size_t sh, char *buf, size_t cap);
/* Prints the plan (targets with sources and ops, pass-throughs, bytes, shards). */
void mpk_plan_print(const mpk_plan *p, void *file, bool verbose);

#ifdef __cplusplus
}
#endif
#endif
