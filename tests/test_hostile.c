/* test_hostile.c — hostile and failing input through the CLI: special files never waited on,
 * config numbers range-checked, expert counts that the checkpoint does not back cost nothing,
 * shape products that overflow refused by plan, a source changed during a run detected, and
 * an allocation failure at every point of pack, unpack, convert, verify and hash giving exit 1
 * "out of memory" (never a hang, a crash or a half-written DST).
 *
 * Each case reproduces what issue 13 reported on the code before it (comments say how). */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mpk_formats.h"
#include "testutil.h"

#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zstd.h>

static char root[] = "/tmp/mpk_hostile_XXXXXX";
static char src[300], packed[300], fp8[300];

#define run(env, args) tu_run(root, (env), (args))
#define err_has(s) tu_err_has(root, (s))

/* "ulimit -v KiB;" (an address-space limit for the command), "" in sanitizer builds */
static const char *limit_as(long kib)
{
    const char *san = getenv("MPK_SANITIZED");
    return san && *san ? "" : tu_fmt("ulimit -v %ld;", kib);
}

static bool exists(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0;
}

/* A fresh copy of checkpoint from at root/name; its path (never freed). */
static char *copy_of(const char *from, const char *name)
{
    char *d = tu_fmt("%s/%s", root, name);
    tu_rmrf(d);
    assert_int_equal(tu_sh("cp -r %s %s", from, d), 0);
    return d;
}

static int group_setup(void **state)
{
    (void)state;
    if (!mkdtemp(root))
        return -1;
    snprintf(src, sizeof src, "%s/src", root);
    snprintf(packed, sizeof packed, "%s/packed", root);
    snprintf(fp8, sizeof fp8, "%s/fp8", root);
    /* mixtral, 2 layers x 8 experts, 2 shards; an FP8 (block-scaled) qwen3_moe */
    if (tu_sh("%s synth %s >/dev/null", tu_moepack(), src) ||
        tu_sh("%s synth --arch qwen3_moe --quant fp8 --layers 1 --experts 4 --hidden 128 --intermediate 128 %s >/dev/null",
              tu_moepack(), fp8))
        return -1;
    return tu_sh("%s pack -q %s %s", tu_moepack(), src, packed);
}

static int group_teardown(void **state)
{
    (void)state;
    tu_rmrf(root);
    return 0;
}

/* ---------------------------------------------------------------- special files */

/* Before: open() of a FIFO blocks for ever (`mkfifo f; timeout 10 moepack pack f o` -> 124). */
static void test_fifo_never_waited_on(void **state)
{
    (void)state;
    const char *dst = tu_fmt("%s/o", root);
    /* SRC itself */
    const char *f = tu_fmt("%s/fifo", root);
    assert_int_equal(tu_sh("mkfifo %s", f), 0);
    assert_int_equal(run("timeout 20", tu_fmt("pack %s %s", f, dst)), 1);
    assert_true(err_has("fifo: not a regular file (a FIFO)"));
    assert_int_equal(run("timeout 20", tu_fmt("inspect %s", f)), 1);
    assert_true(err_has("not a regular file (a FIFO)"));
    /* a shard, config.json, the index */
    const char *member[] = {"model-00001-of-00002.safetensors", "config.json", "model.safetensors.index.json"};
    for (size_t i = 0; i < sizeof member / sizeof member[0]; i++) {
        char *c = copy_of(src, "fifo_ckpt");
        assert_int_equal(tu_sh("rm %s/%s && mkfifo %s/%s", c, member[i], c, member[i]), 0);
        assert_int_equal(run("timeout 20", tu_fmt("pack %s %s", c, dst)), 1);
        assert_true(err_has(tu_fmt("%s/%s: not a regular file (a FIFO)", c, member[i])));
        assert_false(exists(dst));
        if (i != 1) { /* hash reads no config.json */
            assert_int_equal(run("timeout 20", tu_fmt("hash %s", c)), 1);
            assert_true(err_has("FIFO"));
        }
    }
    /* a spec file, a manifest */
    assert_int_equal(run("timeout 20", tu_fmt("convert %s %s --spec %s", src, dst, f)), 1);
    assert_true(err_has("not a regular file (a FIFO)"));
    char *p = copy_of(packed, "fifo_manifest");
    assert_int_equal(tu_sh("rm %s/moepack.manifest.json && mkfifo %s/moepack.manifest.json", p, p), 0);
    assert_int_equal(run("timeout 20", tu_fmt("verify %s", p)), 1);
    assert_true(err_has("not a regular file (a FIFO)"));
    /* a directory where the index names a shard */
    char *c = copy_of(src, "dir_shard");
    assert_int_equal(tu_sh("rm %s/model-00002-of-00002.safetensors && mkdir %s/model-00002-of-00002.safetensors", c, c), 0);
    assert_int_equal(run("timeout 20", tu_fmt("pack %s %s", c, dst)), 1);
    assert_true(err_has("model-00002-of-00002.safetensors: not a regular file (a directory)"));
}

/* ---------------------------------------------------------------- config numbers and counts */

/* Before: 1e300 was cast to long (undefined; clang's UBSan reports it) and accepted. */
static void test_config_numbers_checked(void **state)
{
    (void)state;
    const char *dst = tu_fmt("%s/o", root);
    const char *bad[][2] = {{"1e300", "1e+300"}, {"-1", "-1"}, {"2.5", "2.5"}, {"4294967296", "4294967296"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *c = copy_of(src, "cfg");
        assert_int_equal(tu_sh("sed -i 's/\"num_local_experts\":[[:space:]]*[0-9]*/\"num_local_experts\": %s/' %s/config.json",
                               bad[i][0], c), 0);
        assert_int_equal(run("", tu_fmt("pack %s %s", c, dst)), 1);
        assert_true(err_has(tu_fmt("%s/config.json: \"num_local_experts\" is %s: it must be an integer from 0 to 2147483647",
                                   c, bad[i][1])));
        assert_false(exists(dst));
    }
}

/* Before: num_local_experts 1e8 made plan take 1.6 GB and 4.8 s, 1e9 7.9 GB; a tensor named
 * experts.100000000 the same. Now the hole is found from the tensors there are: under a
 * 1 GiB address-space limit, at once. */
static void test_expert_count_costs_nothing(void **state)
{
    (void)state;
    char *c = copy_of(src, "many");
    assert_int_equal(tu_sh("sed -i 's/\"num_local_experts\":[[:space:]]*[0-9]*/\"num_local_experts\": 1000000000/' %s/config.json", c), 0);
    assert_int_equal(run(limit_as(1048576), tu_fmt("plan %s", c)), 1);
    assert_true(err_has("expert 8 is missing: no tensor 'model.layers.0.block_sparse_moe.experts.8.w1.weight' "
                        "(have expert 0-7 of 1000000000)"));
    c = copy_of(src, "far");
    const char *tests = getenv("MPK_TESTS_DIR") ? getenv("MPK_TESTS_DIR") : "tests";
    assert_int_equal(tu_sh("python3 %s/st_rename.py %s model.layers.1.block_sparse_moe.experts.5.w3.weight "
                           "model.layers.1.block_sparse_moe.experts.100000000.w3.weight", tests, c), 0);
    assert_int_equal(run(limit_as(1048576), tu_fmt("pack %s %s/o", c, root)), 1);
    /* w1 has experts 0-7 of the 100000001 the names imply: 8 is its first hole */
    assert_true(err_has("expert 8 is missing: no tensor 'model.layers.1.block_sparse_moe.experts.8.w1.weight' "
                        "(have expert 0-7 of 100000001)"));
    assert_false(exists(tu_fmt("%s/o", root)));
}

/* Before: a reshape whose element count wraps around 2^64 to the right value passed plan
 * (exit 0) and convert failed with a bare "size-overflow". 16384 x (2^50 + 1) = 2^64 + 16384. */
static void test_plan_refuses_overflow(void **state)
{
    (void)state;
    const char *spec = tu_fmt("%s/wrap.json", root);
    tu_write(spec, "{\"name\": \"wrap\", \"converters\": [{\"sources\": "
                   "[\"model.layers.{layer}.block_sparse_moe.experts.{expert}.w1.weight\"], "
                   "\"target\": \"model.layers.{layer}.w1\", \"ops\": [{\"op\": \"merge\", \"dim\": 0}, "
                   "{\"op\": \"reshape\", \"shape\": [16384, 1125899906842625]}]}]}");
    assert_int_equal(run("", tu_fmt("plan %s --spec %s", src, spec)), 1);
    assert_true(err_has("reshape: the target shape's element count overflows 64 bits"));
    assert_int_equal(run("", tu_fmt("convert %s %s/o --spec %s", src, root, spec)), 1);
    assert_true(err_has("overflows 64 bits"));
    assert_false(exists(tu_fmt("%s/o", root)));
}

/* ---------------------------------------------------------------- a source changed meanwhile */

/* Before: a shard overwritten in place during a pack gave exit 0 and output matching neither
 * the old nor the new source. */
static void test_source_changed_detected(void **state)
{
    (void)state;
    const char *dst = tu_fmt("%s/o", root);
    char *c = copy_of(src, "changing");
    const char *shard = tu_fmt("%s/model-00002-of-00002.safetensors", c);
    /* written in place, same size */
    assert_int_equal(tu_run_changing(root, 3, tu_fmt("pack %s %s", c, dst),
                                  tu_fmt("printf x | dd of=%s bs=1 seek=4000 conv=notrunc 2>/dev/null", shard)), 1);
    assert_true(err_has(tu_fmt("%s: the source changed while it was read", shard)));
    assert_false(exists(dst));
    assert_int_equal(tu_sh("ls -A %s | grep -q moepack-tmp", root), 1);
    /* replaced by another file under its name */
    c = copy_of(src, "changing");
    assert_int_equal(tu_run_changing(root, 3, tu_fmt("pack %s %s", c, dst),
                                  tu_fmt("cp %s %s.new && mv %s.new %s", shard, shard, shard, shard)), 1);
    assert_true(err_has("replaced by another"));
    assert_false(exists(dst));
    /* unchanged: the same run succeeds */
    c = copy_of(src, "changing");
    assert_int_equal(tu_run_changing(root, 3, tu_fmt("pack %s %s", c, dst), "true"), 0);
    assert_true(exists(dst));
    tu_rmrf(dst);
}

/* ---------------------------------------------------------------- names a layout gives */

/* The source record of packed directory dir rewritten, with files[f] (f < 0: the index) given
 * value under key (NULL: rewritten unchanged). */
static void set_in_record(const char *dir, int f, const char *key, const char *value)
{
    const char *path = tu_fmt("%s/moepack.source.zst", dir);
    char *z;
    size_t zl;
    mpk_error e;
    assert_int_equal(mpk_read_file(path, &z, &zl, &e), MPK_OK);
    unsigned long long n = ZSTD_getFrameContentSize(z, zl);
    assert_true(n < (1u << 30));
    char *t = malloc(n + 1);
    assert_non_null(t);
    assert_int_equal(ZSTD_decompress(t, n, z, zl), n);
    t[n] = 0;
    cJSON *j = cJSON_Parse(t);
    assert_non_null(j);
    cJSON *o = f < 0 ? cJSON_GetObjectItem(j, "index") : cJSON_GetArrayItem(cJSON_GetObjectItem(j, "files"), f);
    assert_true(cJSON_IsObject(o) && cJSON_IsString(cJSON_GetObjectItem(o, "file")));
    if (key)
        assert_true(cJSON_ReplaceItemInObject(o, key, cJSON_CreateString(value)));
    char *text = cJSON_PrintUnformatted(j);
    size_t cap = ZSTD_compressBound(strlen(text));
    char *out = malloc(cap);
    size_t zn = ZSTD_compress(out, cap, text, strlen(text), 3);
    assert_false(ZSTD_isError(zn));
    assert_int_equal(mpk_write_file(path, out, zn, false, &e), MPK_OK);
    free(out);
    free(text);
    cJSON_Delete(j);
    free(t);
    free(z);
}

/* Before: a packed directory's record naming a shard config.json, moepack.manifest.json, a
 * staging record's name or the index's name had unpack exit 0 with that shard gone (replaced
 * by the file of that name, or removed with the staging records); the same for an index given
 * to --layout-like that names a shard moepack.manifest.json. Two files of one name failed as
 * "cannot create: File exists" in the staging directory. Now each is refused up front, the
 * record or index named with the rule; pack refuses a source whose shard names its record could
 * not give back. */
static void test_layout_files_checked_before_writing(void **state)
{
    (void)state;
    const char *dst = tu_fmt("%s/o", root);
    const struct {
        int f;
        const char *name, *why;
    } bad[] = {
        {1, "model-00001-of-00002.safetensors", "file name 'model-00001-of-00002.safetensors' is given to two files"},
        {0, "config.json", "file name 'config.json' cannot be written: config.json is written beside the shards"},
        {0, "moepack.manifest.json", "file name 'moepack.manifest.json' cannot be written: moepack's own files"},
        {1, "moepack.shard.0123456789abcdef.x.safetensors", "file name 'moepack.shard.0123456789abcdef.x.safetensors' "
                                                            "cannot be written: moepack's own files"},
        {0, ".x.safetensors", "file name '.x.safetensors' cannot be written: a hidden name"},
        {0, "model.safetensors.index.json", "file name 'model.safetensors.index.json' cannot be written: the index "
                                            "is written under that name"},
        {-1, "config.json", "index file name 'config.json' cannot be written: config.json is written"},
        {-1, "moepack.source.zst", "index file name 'moepack.source.zst' cannot be written: moepack's own files"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *p = copy_of(packed, "named");
        set_in_record(p, bad[i].f, "file", bad[i].name);
        assert_int_equal(run("", tu_fmt("unpack %s %s", p, dst)), 1);
        assert_true(err_has(tu_fmt("%s/moepack.source.zst: %s", p, bad[i].why)));
        assert_false(exists(dst));
        assert_int_equal(tu_sh("ls -A %s | grep -q moepack-tmp", root), 1);
    }
    /* Before: a recorded index that does not match the recorded files was written as it is (exit
     * 0, a release whose index names a file that is not there, or not JSON) */
    char *ix = tu_slurp(tu_fmt("%s/model.safetensors.index.json", src)), *at = strstr(ix, "model-00002-of-00002");
    assert_non_null(at);
    memcpy(at, "model-00001-of-00002", 20);
    const char *index_bad[][2] = {
        {ix, "in model-00001-of-00002.safetensors, its recorded file is model-00002-of-00002.safetensors"},
        {"{\"weight_map\": {}}", "\"weight_map\" is empty: the index lists no tensors"},
        {"{\"weight_map\": {\"no.such.tensor\": \"model-00001-of-00002.safetensors\"}}",
         "lists tensor 'no.such.tensor', which no recorded file holds"},
        {"not json", "the index is not valid JSON"},
    };
    for (size_t i = 0; i < sizeof index_bad / sizeof index_bad[0]; i++) {
        char *p = copy_of(packed, "named");
        set_in_record(p, -1, "text", index_bad[i][0]);
        assert_int_equal(run("", tu_fmt("unpack %s %s", p, dst)), 1);
        assert_true(err_has(tu_fmt("%s/moepack.source.zst: recorded index model.safetensors.index.json", p)));
        assert_true(err_has(index_bad[i][1]));
        assert_false(exists(dst));
    }
    free(ix);
    /* the record rewritten unchanged: unpack gives the release back */
    char *p = copy_of(packed, "named");
    set_in_record(p, 0, NULL, NULL);
    assert_int_equal(run("", tu_fmt("unpack %s %s", p, dst)), 0);
    for (int k = 1; k <= 2; k++)
        assert_int_equal(tu_sh("cmp -s %s/model-0000%d-of-00002.safetensors %s/model-0000%d-of-00002.safetensors",
                               src, k, dst, k), 0);
    tu_rmrf(dst);
    /* an index to follow (--layout-like) naming a shard as the manifest */
    const char *like = tu_fmt("%s/like.json", root);
    assert_int_equal(tu_sh("sed 's/model-00001-of-00002.safetensors/moepack.manifest.json/' %s/model.safetensors.index.json > %s",
                           src, like), 0);
    assert_int_equal(run("", tu_fmt("unpack %s %s --layout-like %s", packed, dst, like)), 1);
    assert_true(err_has(tu_fmt("%s: file name 'moepack.manifest.json' cannot be written: moepack's own files", like)));
    assert_false(exists(dst));
    /* a source whose shard has such a name: pack says so before writing anything */
    char *c = copy_of(src, "named_src");
    assert_int_equal(tu_sh("cd %s && mv model-00002-of-00002.safetensors moepack.b.safetensors && "
                           "sed -i 's/model-00002-of-00002.safetensors/moepack.b.safetensors/' model.safetensors.index.json", c), 0);
    assert_int_equal(run("", tu_fmt("pack %s %s", c, dst)), 1);
    assert_true(err_has(tu_fmt("%s/moepack.b.safetensors: a shard named 'moepack.b.safetensors' could not be written "
                               "back by unpack: moepack's own files", c)));
    assert_false(exists(dst));
    assert_int_equal(tu_sh("ls -A %s | grep -q moepack-tmp", root), 1);
}

/* A source cut short while its expert slices go through the pipe (ranges at another offset
 * within a page than in the output, issue 18), through a bounce buffer, or are read for direct
 * writes: the error names the shard, the offset and the tensor being written; nothing is left
 * behind. */
static void test_source_cut_short_while_spliced(void **state)
{
    (void)state;
    const char *s = tu_fmt("%s/spl", root), *dst = tu_fmt("%s/o", root);
    const char *shard = tu_fmt("%s/model-00002-of-00003.safetensors", s);
    /* (without fsync: the in-kernel path whatever --direct says; direct writes below);
     * through the pipe, then copied through a buffer and hashed on the way (bounce copies) */
    const char *ways[][2] = {{"--bounce never", "splice"}, {"--bounce always", "pread"}};
    int rc;
    for (int k = 0; k < 2; k++) {
        assert_int_equal(tu_sh("rm -rf %s && %s synth --arch qwen3_moe --layers 3 --experts 4 --hidden 512 "
                               "--intermediate 384 --vocab 64 --shards 3 %s >/dev/null", s, tu_moepack(), s), 0);
        tu_moepack_opts(ways[k][0]);
        rc = tu_run_changing(root, 3, tu_fmt("pack --no-fsync --threads 1 %s %s", s, dst), tu_fmt("truncate -s 3000000 %s", shard));
        tu_moepack_opts(NULL);
        assert_int_equal(rc, 1);
        assert_true(err_has(tu_fmt("%s: %s from offset 3000000", shard, ways[k][1])));
        assert_true(err_has("the source ended early (writing tensor 'model.layers.1.mlp.experts.gate_up_proj'"));
        assert_false(exists(dst));
        assert_int_equal(tu_sh("ls -A %s | grep -q moepack-tmp", root), 1);
    }
    /* the same cut while a durable run reads the slices for its direct writes */
    assert_int_equal(tu_sh("rm -rf %s && %s synth --arch qwen3_moe --layers 3 --experts 4 --hidden 512 "
                           "--intermediate 384 --vocab 64 --shards 3 %s >/dev/null", s, tu_moepack(), s), 0);
    tu_moepack_opts("--direct all"); /* (its units are below the size that goes direct with large) */
    rc = tu_run_changing(root, 3, tu_fmt("pack --threads 1 %s %s", s, dst), tu_fmt("truncate -s 3000000 %s", shard));
    tu_moepack_opts(NULL);
    assert_int_equal(rc, 1);
    assert_true(err_has(tu_fmt("%s: read at offset", shard)));
    assert_true(err_has("unexpected end of file"));
    assert_true(err_has("model.layers.1.mlp.experts.gate_up_proj"));
    assert_false(exists(dst));
    assert_int_equal(tu_sh("ls -A %s | grep -q moepack-tmp", root), 1);
    tu_rmrf(s);
}

/* ---------------------------------------------------------------- allocation failures */

/* Allocation calls a run makes (MOEPACK_FAULT=count). */
static long allocations(const char *args)
{
    assert_int_equal(run("MOEPACK_FAULT=count", args), 0);
    char *e = tu_slurp(tu_fmt("%s/err", root));
    assert_non_null(e);
    const char *p = strstr(e, "allocations passed: ");
    assert_non_null(p);
    long n = strtol(p + 20, NULL, 10);
    free(e);
    return n;
}

/* Fails each allocation of "moepack ARGS" in turn (every one with MPK_FULL_SWEEP set, else the
 * first 150 and about 150 more spread over the rest): each run exits 0, or 1 saying "out of
 * memory"; none hangs (timeout) or crashes; a failed run leaves no DST and no temporary
 * directory. dst is the run's destination or NULL. Returns the number of points walked. */
static long sweep(const char *args, const char *dst)
{
    long n = allocations(args);
    if (dst)
        tu_rmrf(dst);
    assert_true(n > 100);
    bool full = getenv("MPK_FULL_SWEEP") != NULL;
    long step = full || n <= 300 ? 1 : (n - 150) / 150, walked = 0;
    for (long k = 1; k <= n; k += k <= 150 ? 1 : step, walked++) {
        int rc = run(tu_fmt("MOEPACK_FAULT=%ld:ENOMEM timeout 60", k), args);
        if (rc == 1 && !err_has("out of memory"))
            fail_msg("%s: allocation %ld of %ld failed: exit 1 without 'out of memory'", args, k, n);
        if (rc != 0 && rc != 1)
            fail_msg("%s: allocation %ld of %ld failed: exit %d (124: hang, >128: signal)", args, k, n, rc);
        if (dst) {
            if (rc == 1 && exists(dst))
                fail_msg("%s: allocation %ld failed but DST exists", args, k);
            if (rc == 0 && !exists(dst))
                fail_msg("%s: allocation %ld: exit 0 without DST", args, k);
            tu_rmrf(dst);
            if (tu_sh("ls -A %s | grep -q moepack-tmp", root) == 0)
                fail_msg("%s: allocation %ld left a temporary directory", args, k);
        }
    }
    print_message("%s: %ld allocation points, %ld failed in turn\n", args, n, walked);
    return walked;
}

/* ---------------------------------------------------------------- the source record read */

/* dir's source record, parsed (cJSON_Delete it). */
static cJSON *record_of(const char *dir)
{
    char *z;
    size_t zl;
    mpk_error e;
    assert_int_equal(mpk_read_file(tu_fmt("%s/moepack.source.zst", dir), &z, &zl, &e), MPK_OK);
    unsigned long long n = ZSTD_getFrameContentSize(z, zl);
    assert_true(n < (1u << 30));
    char *t = malloc(n + 1);
    assert_non_null(t);
    assert_int_equal(ZSTD_decompress(t, n, z, zl), n);
    t[n] = 0;
    cJSON *j = cJSON_Parse(t);
    assert_non_null(j);
    free(t);
    free(z);
    return j;
}

/* dir's source record replaced by head, then chunk times times, then tail, in one zstd frame
 * that declares its content size (streamed: the whole text is never in memory here). */
static void write_record(const char *dir, const char *head, const char *chunk, size_t times, const char *tail)
{
    size_t hl = strlen(head), cl = strlen(chunk), tl = strlen(tail);
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    assert_non_null(cc);
    assert_false(ZSTD_isError(ZSTD_CCtx_setPledgedSrcSize(cc, hl + cl * times + tl)));
    FILE *f = fopen(tu_fmt("%s/moepack.source.zst", dir), "wb");
    assert_non_null(f);
    size_t cap = ZSTD_CStreamOutSize();
    char *out = malloc(cap), *block = malloc(1 << 20);
    assert_true(out && block);
    size_t per = (1 << 20) / cl; /* whole chunks per block */
    for (size_t i = 0; i < per; i++)
        memcpy(block + i * cl, chunk, cl);
    for (int part = 0; part < 3; part++) {
        for (size_t done = 0, n = part == 1 ? times : 1; done < n;) {
            size_t k = part == 1 ? (n - done < per ? n - done : per) : 1;
            ZSTD_inBuffer in = {part == 0 ? head : part == 1 ? block : tail, part == 0 ? hl : part == 1 ? k * cl : tl, 0};
            ZSTD_EndDirective end = part == 2 ? ZSTD_e_end : ZSTD_e_continue;
            size_t left;
            do {
                ZSTD_outBuffer o = {out, cap, 0};
                left = ZSTD_compressStream2(cc, &o, &in, end);
                assert_false(ZSTD_isError(left));
                assert_int_equal(fwrite(out, 1, o.pos, f), o.pos);
            } while (end == ZSTD_e_end ? left != 0 : in.pos < in.size);
            done += k;
        }
    }
    assert_int_equal(fclose(f), 0);
    ZSTD_freeCCtx(cc);
    free(out);
    free(block);
}

/* dir's source record replaced by root's text. */
static void record_put(const char *dir, cJSON *rec)
{
    char *text = cJSON_PrintUnformatted(rec);
    assert_non_null(text);
    write_record(dir, text, " ", 0, "");
    free(text);
}

/* Before: a 4.7 KB moepack.source.zst (zstd of a padded JSON array declaring up to 1 GiB) made
 * unpack allocate its declared size and cJSON build a node per tiny element: 1.6-1.9 GiB, and
 * 90 KB of it ~30 GB. Now the declared size is held to what a record of the checkpoint's files
 * can need before anything is allocated, and the text's shape (values, nesting; the recorded
 * index's and config's too) before cJSON parses it: each refused under an address-space limit,
 * the record and the limit named, nothing at DST. */
static void test_source_record_bomb(void **state)
{
    (void)state;
    const char *dst = tu_fmt("%s/o", root);
    const struct {
        const char *head, *chunk, *tail;
        size_t times;
        const char *why;
    } bomb[] = {
        /* 768 MiB of a padded array: above this checkpoint's limit (tens of MiB) */
        {"[", "0,", "0]", 384u << 20, "more than a source record of this checkpoint can need (limit "},
        /* 12 MiB (under any checkpoint's limit) of tiny elements: 6M cJSON nodes */
        {"[", "0,", "0]", 6u << 20, "JSON values, more than a source record of at most 65536 files holds (limit "},
        {"", "[", "", 100, "nests arrays and objects 100 deep, a source record 3"},
    };
    for (size_t i = 0; i < sizeof bomb / sizeof bomb[0]; i++) {
        char *p = copy_of(packed, "bomb");
        write_record(p, bomb[i].head, bomb[i].chunk, bomb[i].times, bomb[i].tail);
        struct stat st;
        assert_int_equal(stat(tu_fmt("%s/moepack.source.zst", p), &st), 0);
        assert_true(st.st_size < 100000);
        assert_int_equal(run(limit_as(1048576), tu_fmt("unpack %s %s", p, dst)), 1);
        assert_true(err_has(tu_fmt("%s/moepack.source.zst: ", p)));
        assert_true(err_has(bomb[i].why));
        assert_false(exists(dst));
    }
    /* a recorded index or config of tiny elements, the record itself small */
    cJSON *j = record_of(packed);
    char *big = malloc(2u << 20);
    assert_non_null(big);
    size_t o = (size_t)sprintf(big, "{\"weight_map\": {");
    for (int k = 0; k < 100000; k++)
        o += (size_t)sprintf(big + o, "%s\"%x\":\"a\"", k ? "," : "", k);
    sprintf(big + o, "}}");
    cJSON *ix = cJSON_GetObjectItem(j, "index");
    assert_true(cJSON_ReplaceItemInObject(ix, "text", cJSON_CreateString(big)));
    char *p = copy_of(packed, "bomb");
    record_put(p, j);
    assert_int_equal(run(limit_as(1048576), tu_fmt("unpack %s %s", p, dst)), 1);
    assert_true(err_has(tu_fmt("%s/moepack.source.zst: recorded index model.safetensors.index.json: holds 200003 "
                               "JSON values, more than an index of the 65 recorded tensors holds (limit 1154)", p)));
    assert_false(exists(dst));
    cJSON_Delete(j);
    j = record_of(packed);
    o = (size_t)sprintf(big, "{\"a\": [");
    for (int k = 0; k < 100000; k++)
        o += (size_t)sprintf(big + o, "%s0", k ? "," : "");
    sprintf(big + o, "]}");
    assert_true(cJSON_ReplaceItemInObject(j, "config", cJSON_CreateString(big)));
    cJSON_DeleteItemFromObject(j, "packed_config"); /* an older record: compared with config.json */
    p = copy_of(packed, "bomb");
    record_put(p, j);
    assert_int_equal(run(limit_as(1048576), tu_fmt("unpack %s %s", p, dst)), 1);
    assert_true(err_has(tu_fmt("%s/moepack.source.zst: the recorded config.json holds 100003 JSON tokens, more than "
                               "pack could have made of %s/config.json's 28 (limit 1080)", p, p)));
    assert_false(exists(dst));
    cJSON_Delete(j);
    free(big);
    /* the record rewritten as it was: unpack gives the release back */
    j = record_of(packed);
    p = copy_of(packed, "bomb");
    record_put(p, j);
    cJSON_Delete(j);
    assert_int_equal(run(limit_as(1048576), tu_fmt("unpack %s %s", p, dst)), 0);
    assert_int_equal(tu_sh("cmp -s %s/model-00001-of-00002.safetensors %s/model-00001-of-00002.safetensors", src, dst), 0);
    tu_rmrf(dst);
}

/* Before: pack, edit the packed config.json (rope_theta, max_position_embeddings), unpack: the
 * config.json recorded at pack time was written back, the edit lost without a word. Now the
 * record keeps the digest of the config.json pack wrote; an edited one is written as edited
 * (pack's own rewrite of quantization_config undone) with a warning naming it; an unedited one
 * gives the recorded one back; an older record without the digest keeps the recorded one and
 * says that the packed one differs. */
static void test_unpack_keeps_config_edits(void **state)
{
    (void)state;
    const char *dst = tu_fmt("%s/o", root);
    const char *edit = "sed -i 's/\"max_position_embeddings\": 4096/\"max_position_embeddings\": 32768,\\n"
                       "  \"rope_theta\": 500000.0/' %s/config.json";
    /* unedited: the recorded one, byte for byte, nothing said */
    assert_int_equal(run("", tu_fmt("unpack %s %s", packed, dst)), 0);
    assert_int_equal(tu_sh("cmp -s %s/config.json %s/config.json", src, dst), 0);
    assert_int_equal(tu_sh("grep -q config.json %s/err", root), 1);
    tu_rmrf(dst);
    /* edited: written as edited, said */
    char *p = copy_of(packed, "edited");
    assert_int_equal(tu_sh(edit, p), 0);
    assert_int_equal(tu_sh("grep -q '\"rope_theta\": 500000.0' %s/config.json", p), 0);
    assert_int_equal(run("", tu_fmt("unpack %s %s", p, dst)), 0);
    assert_int_equal(tu_sh("cmp -s %s/config.json %s/config.json", p, dst), 0);
    assert_true(err_has(tu_fmt("warning: %s/config.json changed since pack (its XXH3-128 is not the one recorded in "
                               "%s/moepack.source.zst): it is written as edited, not the recorded one", p, p)));
    for (int k = 1; k <= 2; k++) /* the shards are still the release's */
        assert_int_equal(tu_sh("cmp -s %s/model-0000%d-of-00002.safetensors %s/model-0000%d-of-00002.safetensors",
                               src, k, dst, k), 0);
    tu_rmrf(dst);
    /* pack rewrote it (a quantization change): the edit kept, pack's quantization_config undone */
    cJSON *j = record_of(packed);
    cJSON *rec = cJSON_Parse(cJSON_GetObjectItem(j, "config")->valuestring);
    cJSON_AddItemToObject(rec, "quantization_config", cJSON_Parse("{\"quant_method\": \"fp8\"}"));
    char *rec_text = cJSON_Print(rec);
    assert_true(cJSON_ReplaceItemInObject(j, "config", cJSON_CreateString(rec_text)));
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(j, "packed_config"), "rewritten", cJSON_CreateTrue());
    p = copy_of(packed, "edited");
    record_put(p, j);
    assert_int_equal(tu_sh(edit, p), 0);
    assert_int_equal(run("", tu_fmt("unpack %s %s", p, dst)), 0);
    assert_true(err_has("it is written as edited, with pack's own change to quantization_config undone"));
    char *got = tu_slurp(tu_fmt("%s/config.json", dst));
    cJSON *g = cJSON_Parse(got);
    assert_non_null(g);
    assert_int_equal(cJSON_GetObjectItem(g, "max_position_embeddings")->valueint, 32768);
    assert_true(cJSON_GetObjectItem(g, "rope_theta")->valuedouble == 500000.0);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(g, "quantization_config"), "quant_method")->valuestring,
                        "fp8");
    cJSON_Delete(g);
    free(got);
    /* unedited, the same record: the recorded one */
    p = copy_of(packed, "edited");
    record_put(p, j);
    tu_rmrf(dst);
    assert_int_equal(run("", tu_fmt("unpack %s %s", p, dst)), 0);
    got = tu_slurp(tu_fmt("%s/config.json", dst));
    assert_string_equal(got, rec_text);
    assert_int_equal(tu_sh("grep -q config.json %s/err", root), 1);
    free(got);
    free(rec_text);
    cJSON_Delete(rec);
    cJSON_Delete(j);
    tu_rmrf(dst);
    /* an older record (no digest): the recorded one, the difference said */
    j = record_of(packed);
    cJSON_DeleteItemFromObject(j, "packed_config");
    p = copy_of(packed, "edited");
    record_put(p, j);
    assert_int_equal(tu_sh(edit, p), 0);
    assert_int_equal(run("", tu_fmt("unpack %s %s", p, dst)), 0);
    assert_int_equal(tu_sh("cmp -s %s/config.json %s/config.json", src, dst), 0);
    assert_true(err_has(tu_fmt("warning: %s/config.json differs from the config.json recorded in %s/moepack.source.zst, "
                               "which an older moepack wrote without the digest", p, p)));
    tu_rmrf(dst);
    /* ... and unedited: nothing said */
    p = copy_of(packed, "edited");
    record_put(p, j);
    cJSON_AddItemToObject(j, "packed_config", cJSON_Parse("{\"xxh3_128\": \"00\", \"rewritten\": false}"));
    char *bad = copy_of(packed, "bad_digest");
    record_put(bad, j); /* a malformed digest: refused, named */
    cJSON_Delete(j);
    assert_int_equal(run("", tu_fmt("unpack %s %s", bad, dst)), 1);
    assert_true(err_has(tu_fmt("%s/moepack.source.zst: \"packed_config\" needs an \"xxh3_128\" (32 hex digits) and "
                               "\"rewritten\" (true or false)", bad)));
    assert_false(exists(dst));
    assert_int_equal(run("", tu_fmt("unpack %s %s", p, dst)), 0);
    assert_int_equal(tu_sh("cmp -s %s/config.json %s/config.json", src, dst), 0);
    assert_int_equal(tu_sh("grep -q config.json %s/err", root), 1);
    tu_rmrf(dst);
}

/* Before: an allocation failure while padding a header looped for ever (pack, unpack and
 * --dequantize hung at 100% CPU for a band of points), and unchecked spec allocations were
 * dereferenced. */
static void test_allocation_failure_sweep(void **state)
{
    (void)state;
    const char *dst = tu_fmt("%s/o", root);
    const char *spec = tu_fmt("%s/spec.json", root);
    tu_write(spec, "{\"name\": \"s\", \"converters\": [{\"sources\": "
                   "[\"model.layers.{layer}.block_sparse_moe.experts.{expert}.w1.weight\", "
                   "\"model.layers.{layer}.block_sparse_moe.experts.{expert}.w3.weight\"], "
                   "\"target\": \"model.layers.{layer}.mlp.experts.gate_up_proj\", \"ops\": "
                   "[{\"op\": \"merge\", \"dim\": 0}, {\"op\": \"concat\", \"dim\": 1}]}, {\"sources\": "
                   "[\"model.layers.{layer}.block_sparse_moe.experts.{expert}.w2.weight\"], "
                   "\"target\": \"model.layers.{layer}.mlp.experts.down_proj\", \"ops\": [{\"op\": \"merge\", \"dim\": 0}]}]}");
    assert_true(sweep(tu_fmt("pack %s %s -q --threads 2", src, dst), dst) > 200);
    assert_true(sweep(tu_fmt("unpack %s %s -q --threads 1", packed, dst), dst) > 200);
    assert_true(sweep(tu_fmt("convert %s %s --spec %s -q --threads 1", src, dst, spec), dst) > 200);
    assert_true(sweep(tu_fmt("pack %s %s -q --threads 1", fp8, dst), dst) > 200);
    assert_true(sweep(tu_fmt("pack %s %s --dequantize -q --threads 2", fp8, dst), dst) > 200);
    assert_true(sweep(tu_fmt("verify %s", packed), NULL) > 200);
    assert_true(sweep(tu_fmt("verify %s %s", src, packed), NULL) > 200);
    assert_true(sweep(tu_fmt("hash %s", src), NULL) > 100);
    /* durable runs writing every shard with O_DIRECT (exec/direct.c: the carry block, the
     * worker's aligned buffer, the hashes taken from it; --json shows them used on this source) */
    tu_moepack_opts("--direct all");
    long direct_pack = sweep(tu_fmt("pack %s %s -q --threads 2", src, dst), dst);
    long direct_unpack = sweep(tu_fmt("unpack %s %s -q --threads 1", packed, dst), dst);
    assert_int_equal(run("", tu_fmt("pack --json %s %s", src, dst)), 0);
    tu_moepack_opts(NULL);
    assert_true(direct_pack > 200 && direct_unpack > 200);
    assert_int_equal(tu_sh("grep -q '\"direct_bytes\": [1-9]' %s/out", root), 0);
    tu_rmrf(dst);
    /* pure ranges through each worker's buffer, hashed on the way (its buffer, the hash states;
     * a failed allocation of either leaves the output to be read back instead) */
    tu_moepack_opts("--bounce always");
    long bounce_pack = sweep(tu_fmt("pack %s %s -q --no-fsync --threads 2", src, dst), dst);
    assert_int_equal(run("", tu_fmt("pack --json %s %s", src, dst)), 0);
    tu_moepack_opts(NULL);
    assert_true(bounce_pack > 200);
    assert_int_equal(tu_sh("grep -q '\"bounced_bytes\": [1-9]' %s/out", root), 0);
    tu_rmrf(dst);
    char *h = copy_of(packed, "hashed");
    assert_true(sweep(tu_fmt("hash %s --write", h), NULL) > 200);
    /* whatever failed, the manifest is whole: verify passes */
    assert_int_equal(run("", tu_fmt("verify %s", h)), 0);
}

int main(int argc, char **argv)
{
    tu_tuning_args(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fifo_never_waited_on),
        cmocka_unit_test(test_config_numbers_checked),
        cmocka_unit_test(test_expert_count_costs_nothing),
        cmocka_unit_test(test_plan_refuses_overflow),
        cmocka_unit_test(test_source_changed_detected),
        cmocka_unit_test(test_source_cut_short_while_spliced),
        cmocka_unit_test(test_layout_files_checked_before_writing),
        cmocka_unit_test(test_source_record_bomb),
        cmocka_unit_test(test_unpack_keeps_config_edits),
        cmocka_unit_test(test_allocation_failure_sweep),
    };
    if (getenv("MPK_TEST_FILTER")) /* one test by name (a pattern: test_source_*) */
        cmocka_set_test_filter(getenv("MPK_TEST_FILTER"));
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
