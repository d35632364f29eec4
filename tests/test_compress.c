/* test_compress.c — compress and decompress (lib/compress.c, formats/mpkz.c) through the CLI when
 * the world changes under them or a write fails (issue 45, items 7 and 15):
 *
 * - a source shard edited in place while compress reads it (paused with MOEPACK_FAULT=N:stop
 *   after the first chunks were read, edited, continued) fails with "the source changed while
 *   it was read" naming the shard; nothing at DST, no staging directory left. Before: exit 0
 *   and a container that decompressed to neither version.
 * - a container edited in place while decompress reads it fails the same way, naming the
 *   container. Before: its per-chunk XXH3 already refused it, but as "corrupt".
 * - ENOSPC at every write-path call of compress and of decompress: exit 1, the message names
 *   the file being written with the errno text, never the source. Before: decompress's chunk
 *   writes named the source container ("zc/x.safetensors.mpkz: write of 4096 bytes at 3160
 *   failed: No space left on device").
 *
 * Every shard's times are set in the past before a run, so an edit is seen through its
 * modification time whatever the file system's timestamp granularity. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "testutil.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char root[] = "/tmp/mpk_compress_XXXXXX";
static char src[300], zsrc[300];

#define SHARD "model-00001-of-00002.safetensors"
/* one thread, 4 KiB chunks: compress reads 4 chunks, then writes them, then reads the next 4 */
#define OPTS "--threads 1"
#define COPTS OPTS " --chunk-size 4096"

#define run(env, args) tu_run(root, (env), (args))
#define err_has(s) tu_err_has(root, (s))

static bool exists(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0;
}

static off_t size_of(const char *p)
{
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    return st.st_size;
}

/* No staging directory of a run is left in root. */
static bool no_staging(void)
{
    return tu_sh("ls -A %s | grep -q moepack-tmp", root) == 1;
}

/* A fresh copy of directory from at root/name, its files' times in 2020; its path. */
static char *copy_of(const char *from, const char *name)
{
    char *d = tu_fmt("%s/%s", root, name);
    tu_rmrf(d);
    assert_int_equal(tu_sh("cp -r %s %s && touch -d 2020-01-01 %s/*", from, d, d), 0);
    return d;
}

/* Where the data section of safetensors file f begins (8 + its header's length). */
static long data_start(const char *f)
{
    unsigned char b[8];
    FILE *fp = fopen(f, "rb");
    assert_non_null(fp);
    assert_int_equal(fread(b, 1, 8, fp), 8);
    fclose(fp);
    long h = 0;
    for (int i = 7; i >= 0; i--)
        h = h << 8 | b[i];
    return 8 + h;
}

/* A shell command that flips the byte at offset off of file f in place (same size). */
static char *flip(const char *f, long off)
{
    return tu_fmt("b=$(od -An -tu1 -j %ld -N1 %s | tr -d ' ') && printf \"\\\\$(printf %%o $((255 - b)))\" | "
                  "dd of=%s bs=1 seek=%ld conv=notrunc 2>/dev/null", off, f, f, off);
}

/* The first k for which "MOEPACK_FAULT=k:ENOSPC moepack ARGS" fails with a message holding
 * what (the write-path call a pause is to happen at); fails the test when none up to 100 does. */
static int first_fault_with(const char *args, const char *dst, const char *what)
{
    for (int k = 1; k <= 100; k++) {
        int rc = run(tu_fmt("MOEPACK_FAULT=%d:ENOSPC", k), args);
        tu_rmrf(dst);
        if (rc == 0)
            break;
        char *t = tu_slurp(tu_fmt("%s/err", root));
        bool hit = t && strstr(t, what);
        free(t);
        if (hit)
            return k;
    }
    fail_msg("no write-path call of '%s' fails with '%s'", args, what);
    return 0;
}

static int group_setup(void **state)
{
    (void)state;
    if (!mkdtemp(root))
        return -1;
    snprintf(src, sizeof src, "%s/src", root);
    snprintf(zsrc, sizeof zsrc, "%s/zsrc", root);
    /* mixtral, 2 layers x 8 experts, 2 shards of about 150 KB */
    if (tu_sh("%s synth %s >/dev/null", tu_moepack(), src))
        return -1;
    return tu_sh("%s compress -q " COPTS " %s %s", tu_moepack(), src, zsrc);
}

static int group_teardown(void **state)
{
    (void)state;
    tu_rmrf(root);
    return 0;
}

/* ---------------------------------------------------------------- a file changed meanwhile */

/* Before: exit 0, and the container gave back the first chunks as they were and the rest as
 * edited: neither version. */
static void test_compress_source_changed(void **state)
{
    (void)state;
    const char *dst = tu_fmt("%s/o", root), *args = tu_fmt("compress " COPTS " %s/changing %s", root, dst);
    char *c = copy_of(src, "changing");
    const char *shard = tu_fmt("%s/" SHARD, c);
    /* paused where the first chunk is written: chunks 0..3 were read, the rest were not */
    int k = first_fault_with(args, dst, SHARD ".mpkz: write of");
    /* edited in place, same size: a byte of the first chunk (read) and of the last (not yet) */
    assert_int_equal(tu_run_changing(root, k, args, tu_fmt("%s && %s", flip(shard, data_start(shard) + 1),
                                                  flip(shard, (long)size_of(shard) - 1))), 1);
    assert_true(err_has(tu_fmt("compress: %s: the source changed while it was read (its modification time", shard)));
    assert_false(exists(dst));
    assert_true(no_staging());
    /* cut short: what the read meets is the change, not "file ends early" naming the output */
    c = copy_of(src, "changing");
    assert_int_equal(tu_run_changing(root, k, args, tu_fmt("truncate -s 10000 %s", shard)), 1);
    assert_true(err_has(tu_fmt("%s: the source changed while it was read (its size", shard)));
    assert_false(exists(dst));
    assert_true(no_staging());
    /* replaced under its name */
    c = copy_of(src, "changing");
    assert_int_equal(tu_run_changing(root, k, args, tu_fmt("cp %s %s.new && mv %s.new %s", shard, shard, shard, shard)), 1);
    assert_true(err_has(tu_fmt("%s: the source changed while it was read (the file at its name (replaced", shard)));
    assert_false(exists(dst));
    /* unchanged: the same paused run succeeds and gives the files back byte for byte */
    c = copy_of(src, "changing");
    assert_int_equal(tu_run_changing(root, k, args, "true"), 0);
    assert_int_equal(run("", tu_fmt("decompress %s %s/back", dst, root)), 0);
    assert_int_equal(tu_sh("cmp -s %s/" SHARD " %s/back/" SHARD, src, root), 0);
    tu_rmrf(dst);
    tu_rmrf(tu_fmt("%s/back", root));
}

/* Before: the chunk read after the edit failed its XXH3 ("corrupt"), one read before it gave
 * the bytes as they were: never a wrong file, but the message blamed the container. */
static void test_decompress_container_changed(void **state)
{
    (void)state;
    const char *dst = tu_fmt("%s/o", root), *args = tu_fmt("decompress " OPTS " %s/zchanging %s", root, dst);
    char *c = copy_of(zsrc, "zchanging");
    const char *z = tu_fmt("%s/" SHARD ".mpkz", c);
    /* paused at the first chunk's write: the last chunk's frames are not read yet */
    int k = first_fault_with(args, dst, "write of 4096 bytes at");
    assert_int_equal(tu_run_changing(root, k, args, flip(z, (long)size_of(z) - 10)), 1);
    assert_true(err_has(tu_fmt("decompress: %s: the source changed while it was read (its modification time", z)));
    assert_false(exists(dst));
    assert_true(no_staging());
    /* unchanged: the paused run succeeds */
    c = copy_of(zsrc, "zchanging");
    assert_int_equal(tu_run_changing(root, k, args, "true"), 0);
    assert_int_equal(tu_sh("cmp -s %s/" SHARD " %s/" SHARD, src, dst), 0);
    tu_rmrf(dst);
}

/* ---------------------------------------------------------------- write failures */

/* How many write-path calls "moepack ARGS" makes (MOEPACK_FAULT=count). */
static int write_points(const char *args, const char *dst)
{
    assert_int_equal(run("MOEPACK_FAULT=count", args), 0);
    tu_rmrf(dst);
    char *t = tu_slurp(tu_fmt("%s/err", root));
    const char *p = t ? strstr(t, "fault points passed: ") : NULL;
    int n = p ? atoi(p + strlen("fault points passed: ")) : 0;
    free(t);
    assert_true(n > 5);
    return n;
}

/* ENOSPC at every write-path call of args (whose source is from): exit 1, the errno's text, a
 * message about a file that is not one of the source, nothing at dst (but after the last call),
 * no staging left. Returns how many of the messages matched the extended regular expression want. */
static int sweep_enospc(const char *args, const char *from, const char *dst, const char *want)
{
    int n = write_points(args, dst), hits = 0;
    for (int k = 1; k <= n; k++) {
        assert_int_equal(run(tu_fmt("MOEPACK_FAULT=%d:ENOSPC", k), args), 1);
        char *t = tu_slurp(tu_fmt("%s/err", root));
        assert_non_null(t);
        /* "moepack: CMD: WHERE: ...": WHERE is never a file of the source (a copy's message may
         * name it after the file it failed to write) */
        const char *where = strstr(t, ": ") ? strstr(t, ": ") + 2 : t;
        if (!strstr(t, "No space left on device") || strncmp(where, tu_fmt("%s/", from), strlen(from) + 1) == 0)
            fail_msg("write-path call %d of '%s': %s", k, args, t);
        free(t);
        hits += tu_sh("grep -Eq '%s' %s/err", want, root) == 0;
        /* only the last call, the fsync of DST's parent after the rename, leaves DST (complete) */
        if (exists(dst) && (k != n || tu_sh("grep -q 'fsync failed' %s/err", root) != 0))
            fail_msg("write-path call %d of %d of '%s' left output behind", k, n, args);
        tu_rmrf(dst);
        assert_true(no_staging());
    }
    return hits;
}

/* Before: "moepack: decompress: zsrc/model-00001-of-00002.safetensors.mpkz: write of 4096 bytes
 * at 3160 failed: No space left on device": the container, which was only read. */
static void test_write_errors_name_the_output(void **state)
{
    (void)state;
    const char *dst = tu_fmt("%s/o", root), *tiny = tu_fmt("%s/tiny", root), *ztiny = tu_fmt("%s/ztiny", root);
    /* a small checkpoint (few write-path calls), one chunk a tensor */
    assert_int_equal(tu_sh("%s synth --layers 1 --experts 2 --hidden 64 --intermediate 32 %s >/dev/null && "
                           "%s compress -q %s %s", tu_moepack(), tiny, tu_moepack(), tiny, ztiny), 0);
    /* decompress: a tensor's bytes (at an offset past the header) name the shard being written
     * in the staging directory */
    const char *chunk_write = tu_fmt("^moepack: decompress: %s/\\.o\\.moepack-tmp[^/]*/" SHARD ": write of [0-9]+ "
                                     "bytes at [1-9][0-9]* failed: No space left on device$", root);
    assert_true(sweep_enospc(tu_fmt("decompress " OPTS " %s %s", ztiny, dst), ztiny, dst, chunk_write) > 0);
    /* the shard's blocks are reserved (fallocate) before anything is decoded: a full disk says
     * so there, naming the shard and its size */
    int k = first_fault_with(tu_fmt("decompress " OPTS " %s %s", ztiny, dst), dst, "cannot reserve its");
    assert_int_equal(run(tu_fmt("MOEPACK_FAULT=%d:ENOSPC", k), tu_fmt("decompress " OPTS " %s %s", ztiny, dst)), 1);
    assert_int_equal(tu_sh("grep -Eq '^moepack: decompress: %s/\\.o\\.moepack-tmp[^/]*/" SHARD ": cannot reserve its "
                           "%ld bytes on disk: No space left on device$' %s/err", root, (long)size_of(tu_fmt("%s/" SHARD, tiny)), root), 0);
    assert_false(exists(dst));
    assert_true(no_staging());
    /* a file system without fallocate (EOPNOTSUPP at the same call): written as before, byte for byte */
    assert_int_equal(run(tu_fmt("MOEPACK_FAULT=%d:EOPNOTSUPP", k), tu_fmt("decompress " OPTS " %s %s", ztiny, dst)), 0);
    assert_int_equal(tu_sh("cmp -s %s/" SHARD " %s/" SHARD, tiny, dst), 0);
    tu_rmrf(dst);
    /* compress: the container being written */
    const char *container_write = tu_fmt("^moepack: compress: %s/\\.o\\.moepack-tmp[^/]*/" SHARD "\\.mpkz: "
                                         "write of [0-9]+ bytes at [0-9]+ failed: No space left on device$", root);
    assert_true(sweep_enospc(tu_fmt("compress " OPTS " %s %s", tiny, dst), tiny, dst, container_write) > 0);
    tu_rmrf(tiny);
    tu_rmrf(ztiny);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compress_source_changed),
        cmocka_unit_test(test_decompress_container_changed),
        cmocka_unit_test(test_write_errors_name_the_output),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
