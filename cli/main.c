/* main.c — `moepack` entry point: command table, help, version (shared helpers: util.c). */
#define _GNU_SOURCE
#include "cli.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <getopt.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

static int cmd_help(int argc, char **argv);
static int cmd_completion(int argc, char **argv);
#define PRESET_OPT \
    "  --preset NAME          preset (default auto: from config.json's model_type; see\n"\
    "                         'moepack presets')\n"
#define REVISION_OPT \
    "  --revision REV         SRC a repo id (ORG/NAME, looked up in the Hugging Face cache) or a\n"\
    "                         cache folder models--ORG--NAME: its snapshot of REV (a branch,\n"\
    "                         tag or commit; default main). Nothing is downloaded\n"
#define CONV_OPTS \
    REVISION_OPT \
    "  --max-shard-size SIZE  output shard size (default 50GB, transformers v5's; 0: one\n"\
    "                         shard; KB/MB/GB decimal, KiB/MiB/GiB binary)\n"\
    "  --threads N            worker threads (default: CPUs)\n"\
    "  --mem SIZE             budget for in-flight buffers (default 1GiB)\n"\
    "  --force                replace an existing DST that is a checkpoint or empty (the new\n"\
    "                         one is complete and on disk before the old one is swapped out;\n"\
    "                         never one that holds SRC; a file or a folder with no .safetensors\n"\
    "                         file, index or manifest at its top is refused and left alone)\n"\
    "  --resume               continue an interrupted run into DST (same SRC, options and\n"\
    "                         version): its complete shards are kept once their hashes check\n"\
    "                         out; a run with --resume that fails keeps its partial output\n"\
    "  --copy-links           copy what symlinks in SRC pointing outside it point at (e.g. a\n"\
    "                         Hugging Face cache snapshot) instead of skipping them\n"\
    "  --io auto|io_uring|pread  read back end for buffered copies\n"\
    "  --no-copy-range        never use copy_file_range (always read + write)\n"\
    "  --json                 print the report as JSON on stdout (schema in docs/json.md)\n"\
    "  -q, --quiet            no progress, no summary\n"\
    "  --dequantize           FP8 weights with scale grids -> BF16, grids dropped\n"\
    "  --quantize F           packed experts quantized from BF16/F16/F32 (docs/quantized.md):\n"\
    "                         fp8-block128: F8_E4M3 with 128x128 scale grids; nvfp4: ModelOpt\n"\
    "                         NVFP4 (scales per 16 + a global scale per projection, config.json\n"\
    "                         and hf_quant_config.json); mxfp4: OCP MXFP4 (E8M0 scale per 32)\n"\
    "  --no-manifest          do not write moepack.manifest.json into DST\n"\
    "  --pass-unknown         copy tensors the preset does not understand (per-expert leftovers,\n"\
    "                         scales it does not move) as they are instead of refusing\n"\
    "  --compress             write every shard as NAME.safetensors.mpkz (zstd containers,\n"\
    "                         formats/MPKZ.md); not with --resume\n"\
    "  --level N              zstd level of --compress, 1..19 (default 1)\n"\
    "  --no-fsync             rename DST into place without flushing it to disk first (as cp\n"\
    "                         does; faster, but a crash soon after may leave it incomplete)\n"
#define LAYOUT_LIKE_OPT \
    "  --layout-like INDEX    write DST's files as INDEX (a model.safetensors.index.json) names\n"\
    "                         and assigns them (unpack of a packed checkpoint pack did not write)\n"
static int cmd_version(int argc, char **argv);

static void print_features(FILE *f)
{
    fprintf(f, "moepack %s\nfeatures: %s\n", mpk_version(), mpk_features());
}

int mpk_cli_json_opt(const char *cmd, int argc, char **argv, bool *json)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'}, {0}};
    int ch;
    *json = false;
    while ((ch = mpk_cli_next_opt(argc, argv, "", opts, NULL)) != -1) {
        if (ch != 'j')
            return mpk_cli_usage(cmd, "unknown option '%s'", argv[optind - 1]);
        *json = true;
    }
    return -1;
}

static int cmd_version(int argc, char **argv)
{
    bool json;
    int rc = mpk_cli_json_opt("version", argc, argv, &json);
    if (rc >= 0)
        return rc;
    if (argc > optind)
        return mpk_cli_usage("version", "unexpected argument '%s'", argv[optind]);
    if (!json) {
        print_features(stdout);
        return MPK_EXIT_OK;
    }
    /* the features are words separated by spaces, each a JSON-safe identifier */
    printf("{\n  \"schema\": \"moepack.version/1\",\n  \"version\": \"%s\",\n  \"features\": [", mpk_version());
    const char *f = mpk_features();
    for (bool first = true; *f;) {
        size_t n = strcspn(f, " ");
        if (n)
            printf("%s\"%.*s\"", first ? "" : ", ", (int)n, f), first = false;
        f += n + (f[n] == ' ');
    }
    puts("]\n}");
    return MPK_EXIT_OK;
}

static const char exit_table[] =
    "Exit status:\n"
    "  0   success\n"
    "  1   runtime failure (invalid input, I/O error); the message names file, tensor, rule\n"
    "  2   usage error (bad command line)\n"
    "  3   verify/diff found differences\n"
    "  77  precondition missing (gpucheck without a usable GPU)\n"
    "  A terminating signal (SIGINT, SIGTERM, SIGHUP, SIGPIPE, ...) while a command writes DST\n"
    "  removes what it staged, then ends moepack by that signal (a shell shows 128+N).\n";

/* s as roff text: backslashes doubled, a leading dot or quote escaped. */
static void roff(const char *s)
{
    bool bol = true;
    for (; *s; s++) {
        if (bol && (*s == '.' || *s == '\''))
            fputs("\\&", stdout);
        if (*s == '\\')
            fputs("\\e", stdout);
        else if (*s == '-')
            fputs("\\-", stdout);
        else
            putchar(*s);
        bol = *s == '\n';
    }
}

static const char mpi_text[] =
    "Under mpirun or srun (a build with MPI: 'moepack version' says mpi=yes), pack, unpack,\n"
    "convert, hash, verify, diff, compress and decompress split their work across the ranks\n"
    "and write what one process writes; other commands run on rank 0. Launch them with\n"
    "mpirun --bind-to none (srun --cpu-bind=none) so that a rank's threads use its host's cores.\n";

/* moepack(1), from the command table --help prints. */
static int print_man(void)
{
    printf(".TH MOEPACK 1 \"\" \"moepack %s\" \"User Commands\"\n", mpk_version());
    puts(".SH NAME\nmoepack \\- convert Mixture-of-Experts checkpoints between per-expert and packed layouts");
    puts(".SH SYNOPSIS\n.B moepack\n.I command\n[options] ARGS");
    puts(".SH DESCRIPTION\nConverts Mixture-of-Experts safetensors checkpoints between the per-expert layout "
         "and the packed layout (one [E, 2I, H] gate_up_proj and one [E, H, I] down_proj per layer), "
         "streaming, with bounded memory; verifies, compares, hashes and compresses them.");
    puts(".SH COMMANDS");
    for (size_t i = 0; i < mpk_n_commands; i++) {
        printf(".SS %s\n", mpk_commands[i].name);
        roff(mpk_commands[i].summary);
        puts("\n.PP\n.nf");
        roff(mpk_commands[i].usage);
        puts(".fi");
    }
    puts(".SH MEASUREMENT AND TUNING OPTIONS\n.nf");
    roff(mpk_cli_tuning_help);
    puts(".fi\n.SH MPI");
    roff(mpi_text);
    puts(".SH EXIT STATUS\n.nf");
    roff(exit_table);
    puts(".fi\n.SH SEE ALSO\n.BR libmoepack (3)");
    return MPK_EXIT_OK;
}

/* A bash completion script: the commands from the table, each command's options asked of its
 * own parser (MOEPACK_LIST_OPTIONS) when completing, so they never drift from what it takes. */
static int cmd_completion(int argc, char **argv)
{
    if (argc != 2 || strcmp(argv[1], "bash") != 0)
        return mpk_cli_usage("completion", argc < 2 ? "which shell? (bash)" : "unknown shell or argument '%s' (bash)",
                             argc < 2 ? "" : argv[1]);
    printf("# bash completion for moepack %s (moepack completion bash)\n"
           "_moepack() {\n"
           "    local cur=${COMP_WORDS[COMP_CWORD]} cmds=\"", mpk_version());
    for (size_t i = 0; i < mpk_n_commands; i++)
        printf("%s%s", i ? " " : "", mpk_commands[i].name);
    printf("\"\n"
           "    local i=1 tuning=\"");
    mpk_cli_tuning_names(stdout);
    printf("\"\n"
           "    while [[ $i -lt $COMP_CWORD && ${COMP_WORDS[i]} == --* ]]; do\n" /* the tuning options */
           "        case \" $tuning \" in *\" ${COMP_WORDS[i]} \"*) [[ ${COMP_WORDS[i]} == --no-* ]] || i=$((i + 1));; esac\n"
           "        i=$((i + 1))\n"
           "    done\n"
           "    if [ \"$COMP_CWORD\" -eq \"$i\" ]; then\n"
           "        [[ $cur == -* ]] && COMPREPLY=($(compgen -W \"$tuning\" -- \"$cur\")) \\\n"
           "            || COMPREPLY=($(compgen -W \"$cmds\" -- \"$cur\"))\n"
           "        return\n"
           "    fi\n"
           "    local cmd=${COMP_WORDS[i]}\n"
           "    case \"$cmd\" in help) COMPREPLY=($(compgen -W \"$cmds\" -- \"$cur\")); return;; esac\n"
           "    if [[ $cur == -* ]]; then\n"
           "        COMPREPLY=($(compgen -W \"$(MOEPACK_LIST_OPTIONS=1 \"${COMP_WORDS[0]}\" \"$cmd\" </dev/null 2>/dev/null)\" -- \"$cur\"))\n"
           "    else\n"
           "        COMPREPLY=($(compgen -f -- \"$cur\"))\n"
           "    fi\n"
           "}\n"
           "complete -o filenames -F _moepack moepack\n");
    return MPK_EXIT_OK;
}

static int cmd_help(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--man") == 0)
        return print_man();
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        fputs(mpk_commands[0].usage, stdout); /* help's own */
        return MPK_EXIT_OK;
    }
    if (argc > 2)
        return mpk_cli_usage("help", "expected at most one COMMAND, got %d arguments", argc - 1);
    if (argc > 1 && argv[1][0] == '-')
        return mpk_cli_usage("help", "unknown option '%s'", argv[1]);
    if (argc > 1) {
        for (size_t i = 0; i < mpk_n_commands; i++)
            if (strcmp(mpk_commands[i].name, argv[1]) == 0) {
                fputs(mpk_commands[i].usage, stdout);
                return MPK_EXIT_OK;
            }
        const char *g = mpk_cli_nearest(argv[1], &mpk_commands[0].name, mpk_n_commands, sizeof mpk_commands[0]);
        return mpk_cli_usage("help", "unknown command '%s'%s%s%s", argv[1], g ? " (did you mean '" : "", g ? g : "",
                             g ? "'?)" : "");
    }
    printf("usage: moepack <command> [options] ARGS\n\n"
           "Converts Mixture-of-Experts safetensors checkpoints between the per-expert layout\n"
           "and the packed layout (one [E, 2I, H] gate_up_proj and one [E, H, I] down_proj\n"
           "per layer), streaming, with bounded memory.\n\nCommands:\n");
    for (size_t i = 0; i < mpk_n_commands; i++)
        printf("  %-10s %s\n", mpk_commands[i].name, mpk_commands[i].summary);
    printf("\n'moepack <command> --help' shows a command's options.\n\n%s\n%s\n%s", mpk_cli_tuning_help, mpi_text,
           exit_table);
    return MPK_EXIT_OK;
}

const mpk_command mpk_commands[] = {
    {"help", "show this help, or a command's",
     "usage: moepack help [COMMAND | --man]\n\n"
     "Lists the commands and the exit codes; with COMMAND, prints that command's help (the same\n"
     "as 'moepack COMMAND --help'); with --man, the moepack(1) manual page (roff) built from\n"
     "the same texts.\n\n"
     "example: moepack help pack\n", cmd_help},
    {"completion", "print a shell completion script (bash)",
     "usage: moepack completion bash\n\n"
     "Prints a bash completion script: commands from this table, each command's options asked\n"
     "of its own parser while completing. 'meson install' puts it where bash-completion finds it.\n\n"
     "example: moepack completion bash > ~/.local/share/bash-completion/completions/moepack\n", cmd_completion},
    {"version", "print the version and the features built in",
     "usage: moepack version [--json]\n\n"
     "Prints moepack's version and the features this binary was built with (io_uring, MPI,\n"
     "CUDA, AVX-512).\n\n"
     "  --json   {\"schema\": \"moepack.version/1\", \"version\", \"features\": [...]}\n\n"
     "example: moepack version\n", cmd_version},
    {"inspect", "list a checkpoint's shards, tensors, dtypes and expert layout",
     "usage: moepack inspect PATH [--revision REV] [--json]\n\n"
     "PATH is a .safetensors file or a checkpoint directory (model.safetensors or\n"
     "model.safetensors.index.json; compressed .mpkz shards are read in place). Validates every\n"
     "shard strictly and prints shards, tensor count, total bytes, a dtype histogram,\n"
     "config.json facts (model_type, number of experts, per-expert or packed experts) and every\n"
     "tensor. PATH may also be a Hugging Face cache snapshot, a cache folder models--ORG--NAME or a\n"
     "repo id ORG/NAME found in the cache ($HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub),\n"
     "as for every command that reads a checkpoint.\n\n"
     "  --json   one JSON document on stdout (schema in docs/json.md)\n"
     "  --revision REV  PATH a repo id or cache folder: its snapshot of REV (default main)\n\n"
     "example: moepack inspect ./Qwen3-30B-A3B --json\n",
     mpk_cmd_inspect},
    {"presets", "list the embedded architecture presets, or print one's JSON spec",
     "usage: moepack presets [--json] [NAME]\n\n"
     "Lists every embedded preset: its name, the config.json model_types it serves (what\n"
     "--preset auto matches) and a description. With NAME, prints that preset's JSON spec, a\n"
     "start for a custom one ('moepack convert --spec FILE').\n\n"
     "  --json   the list as a JSON array of {\"name\", \"description\", \"model_types\"}\n\n"
     "example: moepack presets qwen3_moe > my_spec.json\n", mpk_cmd_presets},
    {"plan", "show what a conversion would do, writing nothing",
     "usage: moepack plan SRC [--preset P | --spec FILE] [--reverse] [--dequantize |\n"
     "                    --quantize fp8-block128|nvfp4|mxfp4] [--verbose] [--json]\n\n"
     "Prints each target with its sources and ops, the pass-through tensors, the bytes and\n"
     "the output shards. SRC may be a release whose shards are not downloaded yet: from its\n"
     "config.json and model.safetensors.index.json alone the plan shows what each target is\n"
     "built from, expert holes and unmatched tensors, and says that shapes were not checked.\n\n"
     PRESET_OPT
     "  --spec FILE            a conversion spec instead of a preset (docs/spec.md)\n"
     "  --reverse              the spec undone (packed -> per-expert)\n"
     "  --dequantize           plan with FP8 weights dequantized to BF16\n"
     "  --quantize F           plan with the packed experts quantized: fp8-block128, nvfp4, mxfp4\n"
     "  --pass-unknown         plan with what the preset does not understand passed through\n"
     "  --verbose              every group and pass-through tensor, not the first few\n"
     REVISION_OPT
     "  --json                 the plan as JSON on stdout (schema in docs/json.md)\n\n"
     "example: moepack plan ./Mixtral-8x22B --verbose\n", mpk_cmd_convert},
    {"pack", "per-expert -> packed ([E,2I,H] gate_up_proj, [E,H,I] down_proj)",
     "usage: moepack pack SRC DST [options]\n\n"
     "Streams SRC (per-expert layout) into DST (packed layout), with bounded memory. DST is\n"
     "written to a temporary directory beside it and renamed into place when complete.\n"
     "SRC's other files and folders (config.json, tokenizer, original/, ...) are copied,\n"
     "symlinks inside SRC reproduced; FIFOs, devices and links out of SRC are skipped (said).\n"
     "DST may not be, hold or lie inside SRC (exit 2). An interrupted run's temporary directory\n"
     "is removed by the next run into DST, or continued with --resume. DST keeps a record of\n"
     "SRC's files (moepack.source.zst) so that 'moepack unpack' gives them back byte for byte.\n\n"
     PRESET_OPT CONV_OPTS "\n"
     "example: moepack pack ./Qwen3-30B-A3B ./Qwen3-30B-A3B-packed\n", mpk_cmd_convert},
    {"unpack", "packed -> per-expert (the preset reversed)",
     "usage: moepack unpack SRC DST [options]\n\n"
     "Splits every packed expert tensor of SRC back into one tensor per expert, streaming, with\n"
     "the same guarantees as pack (staged output, bounded memory, nothing at DST on failure).\n"
     "When SRC was written by 'moepack pack', it holds a record of the release it was packed from\n"
     "(moepack.source.zst: file names, header bytes, index): DST gets those files back byte for\n"
     "byte (sha256-equal). Without one, --layout-like INDEX follows a release's index.\n\n"
     PRESET_OPT LAYOUT_LIKE_OPT CONV_OPTS "\n"
     "example: moepack unpack ./Qwen3-30B-A3B-packed ./Qwen3-30B-A3B-again\n", mpk_cmd_convert},
    {"convert", "convert with a JSON spec file (docs/spec.md)",
     "usage: moepack convert SRC DST --spec FILE [--reverse] [options]\n\n"
     "Runs any conversion a spec describes (patterns with captures -> targets through op\n"
     "chains; 'moepack presets NAME' prints a preset's spec to start from), with the same\n"
     "streaming, staging and verification as pack. --reverse runs the spec undone.\n\n"
     "  --spec FILE            the conversion spec (JSON; docs/spec.md)\n"
     "  --reverse              the spec undone\n"
     LAYOUT_LIKE_OPT CONV_OPTS "\n"
     "example: moepack convert ./model ./model-converted --spec my_spec.json\n", mpk_cmd_convert},
    {"compress", "every shard into a compressed container (.mpkz: byte planes, zstd, chunks)",
     "usage: moepack compress SRC DST [--level N] [--threads N] [--chunk-size SIZE] [--revision REV] [--force]\n"
     "                        [--json] [-q]\n\n"
     "Writes every NAME.safetensors of the checkpoint directory SRC as DST/NAME.safetensors.mpkz\n"
     "(formats/MPKZ.md: the header verbatim, each tensor in chunks of --chunk-size (default 1MiB)\n"
     "original bytes, each chunk's bytes split into planes by element width: a float's exponent\n"
     "plane Huffman-coded, its mantissa bits stored, other planes a zstd frame at --level\n"
     "(default 1); an XXH3-64 per chunk) and copies the other files.\n"
     "'moepack decompress' gives every file back byte for byte; every other command reads the\n"
     "compressed checkpoint in place.\n\n"
     "  --level N          zstd level 1..19 (default 1) of the planes zstd codes\n"
     "  --threads N        worker threads (default: CPUs)\n"
     "  --chunk-size SIZE  original bytes per chunk (default 1MiB)\n"
     "  --revision REV     SRC a repo id or cache folder: its snapshot of REV (default main)\n"
     "  --force            replace an existing DST that is a checkpoint or empty\n"
     "  --json             the report as JSON on stdout\n"
     "  -q, --quiet        no progress, no summary\n\n"
     "example: moepack compress ./model ./model-z --level 3\n", mpk_cmd_compress},
    {"decompress", "compressed containers back into the original .safetensors files, byte for byte",
     "usage: moepack decompress SRC DST [--threads N] [--force] [--json]\n\n"
     "Writes every NAME.safetensors.mpkz of SRC back as DST/NAME.safetensors, byte for byte (each\n"
     "chunk checked against its XXH3-64), and copies the other files. A corrupt, truncated or\n"
     "inconsistent container is an error naming the file, the tensor and the chunk (exit 1).\n\n"
     "  --threads N        worker threads (default: CPUs)\n"
     "  --force            replace an existing DST that is a checkpoint or empty\n"
     "  --json             the report as JSON on stdout\n"
     "  -q, --quiet        no progress, no summary\n\n"
     "example: moepack decompress ./model-z ./model\n",
     mpk_cmd_compress},
    {"synth", "write a small random checkpoint with a preset's real tensor names",
     "usage: moepack synth [--arch PRESET] [--layers N] [--experts N] [--hidden N]\n"
     "                     [--intermediate N] [--vocab N] [--dtype BF16|F16|F32] [--shards N]\n"
     "                     [--seed N] [--layout per-expert|packed] [--quant fp8|none] [--json] OUT\n\n"
     "Writes a checkpoint with the tensor names, config.json and layout the preset's family\n"
     "publishes (some families publish packed or MXFP4 experts), random values from --seed.\n"
     "OUT's missing parent directories are made.\n\n"
     "  --arch PRESET      the preset whose family to imitate (default mixtral)\n"
     "  --layers N         layers (default 2)\n"
     "  --experts N        experts per layer (default 8)\n"
     "  --hidden N         H (default 64)\n"
     "  --intermediate N   I, the experts' intermediate size (default 32)\n"
     "  --vocab N          vocabulary (default 128)\n"
     "  --dtype D          BF16, F16 or F32 (default BF16)\n"
     "  --shards N         output shards (default 2)\n"
     "  --seed N           random seed (default 0)\n"
     "  --layout L         per-expert or packed experts (default: as the family publishes)\n"
     "  --quant fp8        weights stored as FP8 E4M3 with 128x128 block scales\n"
     "                     (weight_scale_inv), as DeepSeek-V3 publishes them, and\n"
     "                     quantization_config in config.json; none (default) leaves them\n"
     "  --json             what was written as JSON (schema moepack.synth/1)\n\n"
     "example: moepack synth --arch qwen3_moe --experts 16 /tmp/tiny-qwen3\n", mpk_cmd_synth},
    {"hash", "XXH3-128 per tensor and a sharding-independent checkpoint digest",
     "usage: moepack hash PATH [--json] [--write] [--revision REV]\n\n"
     "Prints 'HASH DTYPE SHAPE NAME' per tensor and the whole-checkpoint digest (independent of\n"
     "sharding and file order).\n\n"
     "  --json    the manifest document on stdout\n"
     "  --write   store it as PATH/moepack.manifest.json (atomically)\n"
     "  --revision REV  PATH a repo id or cache folder: its snapshot of REV (default main)\n"
     "  -q, --quiet  no progress bar\n\n"
     "example: moepack hash ./model --write\n", mpk_cmd_inspect},
    {"verify", "prove DST is the conversion of SRC (or matches its own manifest)",
     "usage: moepack verify SRC DST [--preset P | --spec FILE] [--dequantize | --quantize F]\n"
     "                      [--atol X] [--rtol Y] [--json] [--junit FILE]\n"
     "       moepack verify DST [--json] [--junit FILE]\n\n"
     "Recomputes every DST tensor from SRC with the reference CPU ops (one target, or one expert\n"
     "of it, at a time) and compares: missing and extra tensors, dtype/shape, content. The\n"
     "direction is taken from the layouts (per-expert -> packed, packed -> per-expert, or the\n"
     "same layout: a round trip) and the quantization from the headers (FP8 in DST only:\n"
     "quantized; in SRC only: dequantized; NVFP4 _weight_scale_2 or MXFP4 E8M0 _scale_inv in DST\n"
     "only: --quantize nvfp4 / mxfp4). Quantized conversions compare values within --rtol\n"
     "and --atol; everything else compares bytes. 'identical' means every byte matched; 'within\n"
     "tolerance' that values matched within the tolerances. With one path, checks DST against\n"
     "its moepack.manifest.json and prints the provenance recorded there.\n\n"
     "  --preset NAME      the preset (default: from SRC's config.json)\n"
     "  --spec FILE        a spec instead of a preset\n"
     "  --dequantize       SRC's FP8 weights were dequantized (found out when not given)\n"
     "  --quantize F       DST's packed experts were quantized with F: fp8-block128, nvfp4 or\n"
     "                     mxfp4 (found out when not given)\n"
     "  --atol X           absolute tolerance (default 0)\n"
     "  --rtol Y           relative tolerance (default 2^-8)\n"
     "  --revision REV     SRC a repo id or cache folder: its snapshot of REV (default main)\n"
     "  --json             the report as JSON on stdout (schema in docs/json.md)\n"
     "  --junit FILE       also a JUnit XML report (one testcase per differing tensor and one\n"
     "                     for those that matched) for CI; docs/ci.md\n"
     "  -q, --quiet        no progress bar\n\n"
     "Exit 0 identical or within tolerance, 3 differences (listed), 1 could not run.\n\n"
     "example: moepack verify ./model ./model-packed --json > verify.json\n",
     mpk_cmd_verify},
    {"diff", "numeric comparison per tensor (max abs/rel error, RMSE, cosine)",
     "usage: moepack diff A B [--atol X] [--rtol Y] [--preset P | --spec FILE]\n"
     "                    [--dequantize | --quantize F] [--json] [--junit FILE]\n\n"
     "For every float tensor (F32, F16, BF16, F8_E4M3, F8_E5M2): max abs error, max relative\n"
     "error, RMSE, cosine similarity and the count beyond atol + rtol*|a| (defaults 0 and 0).\n"
     "A and B may be in different layouts or quantizations of the same model (per-expert vs\n"
     "packed, BF16 vs FP8): A is mapped through the preset as verify does.\n\n"
     "  --atol X           absolute tolerance (default 0)\n"
     "  --rtol Y           relative tolerance (default 0)\n"
     "  --preset NAME      the preset (default: from A's config.json)\n"
     "  --spec FILE        a spec instead of a preset\n"
     "  --dequantize       A's FP8 weights were dequantized in B (found out when not given)\n"
     "  --quantize F       B's packed experts are A's quantized with F: fp8-block128, nvfp4 or\n"
     "                     mxfp4 (found out when not given)\n"
     "  --revision REV     A a repo id or cache folder: its snapshot of REV (default main)\n"
     "  --json             the report as JSON on stdout (schema in docs/json.md)\n"
     "  --junit FILE       also a JUnit XML report for CI (docs/ci.md)\n"
     "  -q, --quiet        no progress bar\n\n"
     "Exit 0 all within tolerance, 3 otherwise.\n\n"
     "example: moepack diff ./model-bf16 ./model-fp8 --rtol 0.07\n", mpk_cmd_verify},
    {"gpucheck", "run packed experts with eager/batched/grouped backends against a CPU reference",
     "usage: moepack gpucheck PATH | --synthetic E,H,I [options]\n\n"
     "Random x and softmax top-k routing (from --seed) through layer L's packed experts (BF16\n"
     "gate_up_proj [E,2I,H], down_proj [E,H,I]; FP8 E4M3 ones with their 128x128 _scale_inv\n"
     "grids are dequantized to BF16 first) with each backend: on the CPU (small cases, or\n"
     "--cpu), then on the GPU when the binary has CUDA and a device answers. Each is checked\n"
     "against the fp64 CPU reference on up to --check-rows tokens (CPU: relative error < 1e-3,\n"
     "each element within 1e-4 + 1e-2|ref|; GPU, BF16 activations: relative error < 1e-2, each\n"
     "element within 0.05 rms(ref) + 0.05|ref|; never NaN/Inf, every output element written), then timed\n"
     "with CUDA events (median of --runs after warm-up): ms, TFLOP/s, GB/s of expert weights.\n\n"
     "  --synthetic E,H,I      random packed experts of that size instead of PATH\n"
     "  --layer L              packed layer to load (default 0)\n"
     "  --tokens LIST          token counts (default 1,4,16,64,256,1024,4096)\n"
     "  --topk K               experts per token (default 2)\n"
     "  --backends LIST        eager,batched,grouped,grouped_cublas,decode,grouped_wgmma,\n"
     "                         grouped_tma,fp8\n"
     "                         (default all but fp8; fp8 quantizes the weights to E4M3 with\n"
     "                         128x128 scales: checked at relative error < 0.1, each element\n"
     "                         within 0.5 rms(ref) + 0.5|ref|)\n"
     "  --reference SRC        compute the reference from SRC's per-expert weights (the\n"
     "                         checkpoint PATH was packed from): proves gate-first and expert order\n"
     "  --plot FILE.svg        tokens (log) vs time per GPU backend (needs GPU timings)\n"
     "  --peer FILE.json       gpu/peer_torch.py --json output: print our time / peer time\n"
     "  --save-inputs DIR      write each case's x, top_k_index, top_k_weights (for the peer)\n"
     "  --runs N               timed runs per case (default 20)\n"
     "  --check-rows N         tokens checked against the reference (default 32)\n"
     "  --cpu                  the CPU checks only, on any size: exit 0 when they pass\n"
     "  --seed N               inputs and routing seed (default 1)\n"
     "  --json                 one JSON document on stdout\n\n"
     "The cuBLAS backends (eager, batched, grouped_cublas) load libcublas.so.13 at run time\n"
     "(LD_LIBRARY_PATH, or MOEPACK_CUBLAS=/path/libcublas.so.13), fp8 libcublasLt.so.13\n"
     "(or MOEPACK_CUBLASLT=PATH). Exit 0 all correct, 3 a\n"
     "backend disagrees, 77 no usable GPU (after the CPU checks pass; not with --cpu).\n\n"
     "example: moepack gpucheck ./model-packed --layer 3 --tokens 1,64,4096\n", mpk_cmd_gpucheck},
    {"demo", "synth -> pack -> unpack -> verify on an embedded default",
     "usage: moepack demo [DIR]\n\nWrites a small Mixtral-style checkpoint, packs it, unpacks it\n"
     "and checks every tensor comes back byte-identical. DIR defaults to a new directory in\n"
     "$TMPDIR (else /tmp), removed when the demo passes and kept, and named, when it fails;\n"
     "a DIR that exists is left as it is and the demo works in a new directory inside it.\n\n"
     "example: moepack demo /tmp/moepack-demo\n",
     mpk_cmd_demo},
};
const size_t mpk_n_commands = sizeof mpk_commands / sizeof mpk_commands[0];

/* The commands that split their work across MPI ranks; under mpirun/srun every other command
 * runs on rank 0 alone while the others wait. */
static bool distributed(const char *name)
{
    static const char *const names[] = {"pack", "unpack", "convert", "hash", "verify", "diff", "compress",
                                        "decompress", NULL};
    for (int i = 0; names[i]; i++)
        if (strcmp(name, names[i]) == 0)
            return true;
    return false;
}

static int run(int argc, char **argv);

int main(int argc, char **argv)
{
    /* the tests' failure injection (libmoepack's test hooks): armed by the program, never by the
     * library for every program that links it */
    mpk_test_hooks_arm(getenv("MOEPACK_FAULT"), getenv("MOEPACK_FAULT_RANK"));
    /* a write past RLIMIT_FSIZE fails with EFBIG (reported, cleaned up) instead of killing us */
    signal(SIGXFSZ, SIG_IGN);
    int mpi = mpk_mpi_begin(&argc, &argv), used = 0;
    /* the measurement and tuning options before the command (tuning.c) */
    int bad = mpk_cli_tuning_parse(argc, argv, &used);
    if (bad >= 0)
        return bad;
    if (used) {
        argv[used] = argv[0];
        argv += used;
        argc -= used;
    }
    if (mpi == 1 && mpk_mpi_rank() != 0) {
        return MPK_EXIT_OK; /* launched, but without MPI built in: rank 0 works alone */
    } else if (mpk_mpi_size() == 1 && mpk_mpi_rank() == 0 && strstr(mpk_features(), "mpi=no") &&
               (getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE"))) {
        fprintf(stderr, "moepack: started by a launcher, but built without MPI: rank 0 works alone\n");
    } else if (mpk_mpi_size() > 1) {
        atexit(mpk_mpi_end); /* (every rank finalizes, also on exit()) */
        if (mpk_mpi_rank() != 0 && !getenv("MOEPACK_MPI_VERBOSE")) {
            /* one report, one error: rank 0's (every rank ends with the same status) */
            if (!freopen("/dev/null", "w", stdout) || !freopen("/dev/null", "w", stderr))
                return MPK_EXIT_FAIL;
        }
        if (argc < 2 || !distributed(argv[1])) {
            if (mpk_mpi_rank() != 0)
                return MPK_EXIT_OK;
            mpk_mpi_solo();
        }
    }
    int rc = run(argc, argv);
    mpk_mpi_end();
    return rc;
}

static int run(int argc, char **argv)
{
    if (argc < 2)
        return cmd_help(1, argv), MPK_EXIT_USAGE;
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0)
        return cmd_help(1, argv);
    if (strcmp(name, "--version") == 0)
        return cmd_version(1, argv);
    for (int i = 2; i < argc; i++) /* `moepack pack "$SRC" "$OUT"` with OUT unset: say so, write nothing */
        if (!argv[i][0])
            return mpk_cli_usage(name, "argument %d is empty (an unset shell variable?)", i - 1);
    for (size_t i = 0; i < mpk_n_commands; i++) {
        const mpk_command *c = &mpk_commands[i];
        if (strcmp(c->name, name) == 0) {
            /* a command that takes --json, given it: its errors as documents too */
            for (int k = 2; k < argc && strcmp(argv[k], "--") != 0 && strstr(c->usage, "--json"); k++)
                mpk_cli_json_errors |= strcmp(argv[k], "--json") == 0;
            if (c->run != cmd_help && mpk_cli_wants_help(c, argc - 1, argv + 1))
                return MPK_EXIT_OK;
            return c->run(argc - 1, argv + 1);
        }
    }
    const char *g = mpk_cli_nearest(name, &mpk_commands[0].name, mpk_n_commands, sizeof mpk_commands[0]);
    fprintf(stderr, "moepack: unknown command '%s'", name);
    if (g)
        fprintf(stderr, " (did you mean '%s'?)", g);
    fprintf(stderr, "\nTry 'moepack help'.\n");
    return MPK_EXIT_USAGE;
}
