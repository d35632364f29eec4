/* tuning.c — the measurement and tuning options, given before the command
 * (`moepack --no-simd --direct all pack SRC DST`): the switches bench/ and the tests turn to
 * measure a mechanism or to run the portable code. The process-wide ones go to mpk_tune(), the
 * conversion's into its request (mpk_cli_tuning_apply). The library reads no environment
 * variable for any of them. */
#include "cli.h"

#include <stdarg.h>
#include <string.h>

/* What the options said (all zero: the defaults). */
static struct {
    mpk_tuning lib;        /* for mpk_tune */
    mpk_direct direct;     /* a conversion's */
    mpk_switch bounce;
    unsigned flags;        /* MPK_CONVERT_NO_SPLICE | _NO_PREFETCH | _NO_WRITEBACK */
} tuned;

typedef struct tuning_opt {
    const char *name;
    const char *const *values; /* the words a value may be (NULL-ended), or NULL: no value */
    int which;
} tuning_opt;

enum { T_IO, T_XXH, T_NO_SIMD, T_WRITE_PIECE, T_DIRECT, T_BOUNCE, T_NO_SPLICE, T_NO_PREFETCH, T_NO_WRITEBACK };

static const char *const io_words[] = {"auto", "io_uring", "pread", NULL};        /* mpk_io_backend order */
static const char *const xxh_words[] = {"auto", "generic", NULL};
static const char *const direct_words[] = {"off", "large", "all", NULL};         /* mpk_direct order */
static const char *const bounce_words[] = {"auto", "never", "always", NULL};     /* mpk_switch order */
static const char *const size_words[] = {NULL};                                  /* any size */

static const tuning_opt opts[] = {
    {"io-engine", io_words, T_IO},
    {"xxh", xxh_words, T_XXH},
    {"no-simd", NULL, T_NO_SIMD},
    {"write-piece", size_words, T_WRITE_PIECE},
    {"direct", direct_words, T_DIRECT},
    {"bounce", bounce_words, T_BOUNCE},
    {"no-splice", NULL, T_NO_SPLICE},
    {"no-prefetch", NULL, T_NO_PREFETCH},
    {"no-writeback", NULL, T_NO_WRITEBACK},
};

const char mpk_cli_tuning_help[] =
    "Measurement and tuning options, before the command (moepack [OPTIONS] COMMAND ...): they\n"
    "turn a mechanism off or on to measure it (bench/) or run the portable code (tests); the\n"
    "defaults are the measured best (docs/streaming.md):\n"
    "  --io-engine auto|io_uring|pread  the reader of every command (a conversion's --io first)\n"
    "  --xxh auto|generic       XXH3: moepack's AVX2 build where the CPU has it, or libxxhash's\n"
    "  --no-simd                the portable kernels of the number formats and .mpkz byte planes\n"
    "  --write-piece SIZE       most bytes one write call writes (default 64KiB; 0: no limit)\n"
    "  --direct off|large|all   O_DIRECT writes of a durable conversion's shards: never (default),\n"
    "                           shards of large units, every shard\n"
    "  --bounce auto|never|always  pure bytes of hashed outputs copied through a worker's buffer:\n"
    "                           where outputs are large (default), never, wherever they can be\n"
    "  --no-splice              copy_file_range for every pure byte range (no pipe)\n"
    "  --no-prefetch            no read-ahead hints for the source's ranges\n"
    "  --no-writeback           no writeback started as each output completes\n";

void mpk_cli_tuning_names(FILE *f)
{
    for (size_t i = 0; i < sizeof opts / sizeof *opts; i++)
        fprintf(f, "%s--%s", i ? " " : "", opts[i].name);
}

/* A usage error of these options (they come before any command): exit status 2. */
static int bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int bad(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("moepack: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'moepack help'.\n", stderr);
    return MPK_EXIT_USAGE;
}

static int set(const tuning_opt *o, const char *v)
{
    int k = 0;
    if (o->values && o->values[0])
        for (; o->values[k] && strcmp(o->values[k], v) != 0; k++)
            ;
    if (o->values && o->values[0] && !o->values[k]) {
        char words[64] = "";
        for (int w = 0; o->values[w]; w++)
            snprintf(words + strlen(words), sizeof words - strlen(words), "%s%s", w ? "|" : "", o->values[w]);
        return bad("--%s takes %s, not '%s'", o->name, words, v);
    }
    uint64_t n = 0;
    switch (o->which) {
    case T_IO: tuned.lib.io = (mpk_io_backend)k; break;
    case T_XXH: tuned.lib.xxh_generic = k == 1; break;
    case T_NO_SIMD: tuned.lib.no_simd = true; break;
    case T_WRITE_PIECE:
        if (!mpk_parse_size(v, &n))
            return bad("--write-piece takes a size (64KiB, 4096; 0: no limit), not '%s'", v);
        tuned.lib.write_piece = n ? n : UINT64_MAX;
        break;
    case T_DIRECT: tuned.direct = (mpk_direct)k; break;
    case T_BOUNCE: tuned.bounce = (mpk_switch)k; break;
    case T_NO_SPLICE: tuned.flags |= MPK_CONVERT_NO_SPLICE; break;
    case T_NO_PREFETCH: tuned.flags |= MPK_CONVERT_NO_PREFETCH; break;
    default: tuned.flags |= MPK_CONVERT_NO_WRITEBACK; break;
    }
    return -1;
}

int mpk_cli_tuning_parse(int argc, char **argv, int *used)
{
    int i = 1;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        const char *a = argv[i] + 2, *eq = strchr(a, '=');
        size_t n = eq ? (size_t)(eq - a) : strlen(a);
        const tuning_opt *o = NULL;
        for (size_t k = 0; k < sizeof opts / sizeof *opts && !o; k++)
            if (strlen(opts[k].name) == n && strncmp(opts[k].name, a, n) == 0)
                o = &opts[k];
        if (!o) /* --help, --version, or not one of ours: the command line goes on from here */
            break;
        const char *v = eq ? eq + 1 : NULL;
        if (o->values && !v) {
            if (i + 1 >= argc)
                return bad("--%s needs a value", o->name);
            v = argv[++i];
        } else if (!o->values && v) {
            return bad("--%s takes no value", o->name);
        }
        int rc = set(o, v);
        if (rc >= 0)
            return rc;
    }
    *used = i - 1;
    mpk_tune(&tuned.lib);
    return -1;
}

void mpk_cli_tuning_apply(mpk_convert_req *r)
{
    r->direct = tuned.direct;
    r->bounce = tuned.bounce;
    r->flags |= tuned.flags;
}
