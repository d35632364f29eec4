/* test_safety.c — never lose a byte: overlap refused, atomic landing (RENAME_NOREPLACE /
 * EXCHANGE), umask, recursive side files without following links out of SRC, crash litter
 * removed or resumed, failures (ENOSPC, EIO, EFBIG) and kills at every write-path call.
 *
 * Most cases drive the CLI ($MOEPACK) with the MOEPACK_FAULT hook: N:ERRNO fails the Nth
 * write-path call (write, copy, fsync, rename, create), N:kill SIGKILLs the process there.
 * Each case first reproduces what the issue reported (the reproducers are in comments). */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "exec_internal.h"
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char root[] = "/tmp/mpk_safety_XXXXXX";
static char src[300], ref[300];

#define moepack tu_moepack
#define path tu_fmt
#define slurp tu_slurp
/* moepack ARGS under env, output in root/out and root/err */
#define run(env, args) tu_run(root, (env), (args))
#define err_has(s) tu_err_has(root, (s))

static bool exists(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0;
}

/* Temporary directories of runs into anything under dir. */
static int litter(const char *dir)
{
    return tu_sh("ls -A '%s' | grep -q moepack-tmp", dir) == 0;
}

/* The directories hold the same files, links and bytes. */
static bool same_tree(const char *a, const char *b)
{
    return tu_sh("diff -r --no-dereference '%s' '%s' >/dev/null", a, b) == 0;
}

static int group_setup(void **state)
{
    (void)state;
    if (!mkdtemp(root))
        return -1;
    snprintf(src, sizeof src, "%s/src", root);
    snprintf(ref, sizeof ref, "%s/ref", root);
    /* a 3-shard per-expert checkpoint with side files in subfolders */
    if (tu_sh("%s synth --layers 3 --hidden 128 --intermediate 64 --shards 3 %s >/dev/null", moepack(), src) ||
        tu_sh("mkdir -p %s/original/metal && echo weights > %s/original/metal/model.bin && "
              "echo tok > %s/tokenizer.json && ln -s ../tokenizer.json %s/original/tok.json",
              src, src, src, src))
        return -1;
    /* the uninterrupted reference: several output shards */
    return tu_sh("%s pack %s %s -q --threads 1 --max-shard-size 200KB", moepack(), src, ref);
}

static int group_teardown(void **state)
{
    (void)state;
    tu_sh("umount %s/small 2>/dev/null", root);
    tu_rmrf(root);
    return 0;
}

#define PACK_ARGS "-q --threads 1 --max-shard-size 200KB"

/* ---------------------------------------------------------------- 1. overlap */

static void test_overlap_refused(void **state)
{
    (void)state;
    /* reproducer: `moepack pack SRC SRC --force` replaced the source; `pack SRC PARENT
     * --force` deleted it */
    char *s = path("%s/ov", root), *h1 = path("%s/ov.hash", root), *h2 = path("%s/ov.hash2", root);
    assert_int_equal(tu_sh("cp -r %s %s && cd %s && find . | sort > %s && cat $(find . -type f | sort) | md5sum >> %s",
                           src, s, s, h1, h1), 0);
    const char *cases[][2] = {
        {"%s %s --force", "is the source"},
        {"%s %s/.. --force", "holds the source"},
        {"%s %s/sub", "lies inside the source"},
        {"%s %s/original/new", "lies inside the source"},
        {"%s/ %s/./sub/../sub2", "lies inside the source"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[700];
        snprintf(args, sizeof args, "pack %s", path(cases[i][0], s, s));
        assert_int_equal(run("", args), 2);
        assert_true(err_has(cases[i][1]));
        assert_true(err_has(s)); /* names the source */
    }
    /* through a symlink to SRC, and into the parent through a symlink to it */
    assert_int_equal(tu_sh("ln -sfn %s %s/ov-link", s, root), 0);
    assert_int_equal(run("", path("pack %s %s/ov-link --force", s, root)), 2);
    assert_true(err_has("is the source"));
    assert_int_equal(run("", path("pack %s/ov-link %s/x", root, s)), 2);
    assert_int_equal(run("", path("unpack %s %s --force", ref, ref)), 2);
    assert_int_equal(run("", path("convert %s %s --force --spec /dev/null", s, s)), 1); /* the spec fails first */
    /* DST holds SRC through a symlinked spelling of its parent */
    assert_int_equal(tu_sh("ln -sfn %s %s/root-link", root, root), 0);
    assert_int_equal(run("", path("pack %s %s/root-link/root-link --force", s, root)), 2);
    assert_true(err_has("holds the source"));
    /* a bind mount of SRC elsewhere (where the machine lets us mount) */
    char *bind = path("%s/bind", root);
    mkdir(bind, 0755);
    if (mount(s, bind, NULL, MS_BIND, NULL) == 0) {
        assert_int_equal(run("", path("pack %s %s/sub", s, bind)), 2);
        assert_true(err_has("lies inside the source"));
        assert_int_equal(run("", path("pack %s %s --force", bind, s)), 2);
        /* reproducer: `compress BIND SRC --force` replaced the source (compress compared
         * real path strings, which a bind mount does not share) */
        assert_int_equal(run("", path("compress %s %s --force -q", bind, s)), 2);
        assert_true(err_has("is the source"));
        assert_int_equal(run("", path("decompress %s %s --force", bind, s)), 2);
        assert_int_equal(run("", path("compress %s %s/sub -q", s, bind)), 2);
        assert_true(err_has("lies inside the source"));
        umount(bind);
    } else {
        print_message("bind mount not permitted here (%s): that case skipped\n", strerror(errno));
    }
    /* nothing changed, nothing written */
    assert_int_equal(tu_sh("cd %s && find . | sort > %s && cat $(find . -type f | sort) | md5sum >> %s && cmp -s %s %s",
                           s, h2, h2, h1, h2), 0);
    assert_false(litter(root));
    assert_false(litter(s));
    /* the library call itself */
    mpk_error err = {0};
    assert_int_equal(mpk_overlap_check(s, NULL, path("%s/a/b/c", s), &err), MPK_E_OVERLAP);
    assert_int_equal(mpk_overlap_check(s, NULL, path("%s/ov-other", root), &err), MPK_OK);
    unlink(path("%s/root-link", root));
    unlink(path("%s/ov-link", root));
    tu_rmrf(s);
}

/* ---------------------------------------------------------------- 1b. what --force replaces */

static void test_force_replaces_only_checkpoints(void **state)
{
    (void)state;
    /* reproducer: `moepack pack SRC ~/models --force` (the subfolder's name forgotten)
     * exited 0 and ~/models, every other model in it, was gone; likewise a file */
    char *home = path("%s/fh", root), *file = path("%s/fh.txt", root), *h1 = path("%s/fh.sum", root),
         *h2 = path("%s/fh.sum2", root);
    assert_int_equal(tu_sh("mkdir -p %s/other-model && echo w > %s/other-model/model.safetensors && "
                           "echo notes > %s/notes.md && echo data > %s", home, home, home, file), 0);
    assert_int_equal(tu_sh("(cd %s && find . | sort && cat $(find . -type f | sort)) > %s && cat %s >> %s",
                           home, h1, file, h1), 0);
    const char *cmds[] = {"pack %s %s " PACK_ARGS " --force", "unpack %s %s -q --force", "compress %s %s -q --force"};
    for (size_t i = 0; i < 3; i++) {
        const char *from = i == 1 ? ref : src;
        assert_int_equal(run("", path(cmds[i], from, home)), 1);
        assert_true(err_has("not a checkpoint"));
        assert_true(err_has(home)); /* names the destination */
        assert_true(err_has("left as it is"));
        assert_int_equal(run("", path(cmds[i], from, file)), 1);
        assert_true(err_has("not a directory"));
    }
    /* the API says which rule: its own status */
    mpk_error err = {0};
    assert_int_equal(mpk_force_check(home, &err), MPK_E_DST_FOREIGN);
    assert_string_equal(mpk_status_str(err.code), "destination-not-checkpoint");
    assert_int_equal(mpk_force_check(file, &err), MPK_E_DST_FOREIGN);
    assert_int_equal(mpk_force_check(path("%s/none", root), &err), MPK_OK);
    /* a folder it cannot list is not replaced either: no descriptor left for opendir (EMFILE) */
    struct rlimit was;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &was), 0);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &(struct rlimit){64, was.rlim_max}), 0);
    int fds[64], nf = 0;
    while (nf < 64 && (fds[nf] = dup(0)) >= 0)
        nf++;
    mpk_status cs = mpk_force_check(home, &err);
    while (nf > 0)
        close(fds[--nf]);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &was), 0);
    assert_int_equal(cs, MPK_E_IO);
    assert_int_equal(err.sys_errno, EMFILE);
    assert_non_null(strstr(err.msg, "cannot list it"));
    /* nothing changed, nothing written beside them */
    assert_int_equal(tu_sh("(cd %s && find . | sort && cat $(find . -type f | sort)) > %s && cat %s >> %s && cmp -s %s %s",
                           home, h2, file, h2, h1, h2), 0);
    assert_false(litter(root));
    /* what it does replace: an empty folder, a checkpoint (one with a shard, one with only an
     * index, a compressed one), and a symlink, whose target stays as it was */
    char *d = path("%s/fe", root);
    const char *olds[] = {"", "echo x > model-00001-of-00002.safetensors && echo y > README.md",
                          "echo {} > model.safetensors.index.json", "echo x > model.safetensors.mpkz"};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(tu_sh("mkdir %s && cd %s && true %s %s", d, d, *olds[i] ? "&&" : "", olds[i]), 0);
        assert_int_equal(run("", path("pack %s %s " PACK_ARGS " --force", src, d)), 0);
        assert_true(same_tree(d, ref));
        tu_rmrf(d);
    }
    assert_int_equal(tu_sh("ln -s %s %s", home, d), 0);
    assert_int_equal(run("", path("pack %s %s " PACK_ARGS " --force", src, d)), 0);
    assert_true(same_tree(d, ref));
    assert_int_equal(tu_sh("(cd %s && find . | sort && cat $(find . -type f | sort)) > %s && cat %s >> %s && cmp -s %s %s",
                           home, h2, file, h2, h1, h2), 0);
    assert_false(litter(root));
    tu_rmrf(d);
    tu_rmrf(home);
    unlink(file);
}

/* ---------------------------------------------------------------- 3. permissions */

static void test_output_follows_umask(void **state)
{
    (void)state;
    /* reproducer: `stat -c %a DST` gave 700 whatever the umask */
    const struct { const char *umask, *dir, *file, *script; } cases[] = {
        {"022", "755", "644", "755"}, {"027", "750", "640", "750"}, {"077", "700", "600", "700"}};
    char *s = path("%s/um-src", root);
    assert_int_equal(tu_sh("cp -r %s %s && printf '#!/bin/sh\\n' > %s/run.sh && chmod 755 %s/run.sh", src, s, s, s), 0);
    for (size_t i = 0; i < 3; i++) {
        char *d = path("%s/um-%s", root, cases[i].umask);
        char env[64];
        snprintf(env, sizeof env, "umask %s;", cases[i].umask);
        assert_int_equal(run(env, path("pack %s %s -q", s, d)), 0);
        assert_int_equal(tu_sh("test $(stat -c %%a %s) = %s", d, cases[i].dir), 0);
        assert_int_equal(tu_sh("test $(stat -c %%a %s/original) = %s", d, cases[i].dir), 0);
        assert_int_equal(tu_sh("test $(stat -c %%a %s/model.safetensors) = %s", d, cases[i].file), 0);
        assert_int_equal(tu_sh("test $(stat -c %%a %s/config.json) = %s", d, cases[i].file), 0);
        assert_int_equal(tu_sh("test $(stat -c %%a %s/moepack.manifest.json) = %s", d, cases[i].file), 0);
        assert_int_equal(tu_sh("test $(stat -c %%a %s/tokenizer.json) = %s", d, cases[i].file), 0);
        assert_int_equal(tu_sh("test $(stat -c %%a %s/run.sh) = %s", d, cases[i].script), 0);
        tu_rmrf(d);
    }
    tu_rmrf(s);
}

/* ---------------------------------------------------------------- 4. side files */

static void test_side_files_recursive_no_escape(void **state)
{
    (void)state;
    /* reproducers: original/ and metal/ silently not copied; `ln -s /etc/shadow SRC/s` put
     * that file's content into DST; a FIFO beside the shards would hang the copy */
    char *s = path("%s/side-src", root), *d = path("%s/side-dst", root), *secret = path("%s/secret", root);
    assert_int_equal(tu_sh("cp -a %s %s && echo TOPSECRET > %s && chmod 600 %s && ln -s %s %s/s && "
                           "ln -s ../../secret %s/original/up && ln -s /etc/passwd %s/original/abs && "
                           "mkfifo %s/fifo && mkdir -p %s/.git/lfs && echo x > %s/.git/HEAD && "
                           "test -d %s && python3 -c \"import json, struct, sys; h = json.dumps({'layers.0.attention.wq.weight': "
                           "{'dtype': 'F32', 'shape': [1], 'data_offsets': [0, 4]}}).encode(); "
                           "open(sys.argv[1], 'wb').write(struct.pack('<Q', len(h)) + h + bytes(4))\" "
                           "%s/consolidated.safetensors && " /* Mistral's own format beside the shards */
                           "ln -s original/metal %s/metal-link && "
                           "dd if=/dev/urandom of=%s/original/big.pth bs=1M count=48 status=none",
                           src, s, secret, secret, secret, s, s, s, s, s, s, s, s, s, s),
                     0);
    /* the FIFO is never opened: a blocked open would hang here (the test's timeout) */
    assert_int_equal(run("", path("pack %s %s --json --threads 1", s, d)), 0);
    assert_true(err_has("skipped"));
    assert_true(err_has("fifo: a FIFO"));
    assert_true(err_has("points outside the source"));
    assert_true(err_has(".git"));
    assert_true(err_has("consolidated.safetensors"));
    /* copied: files in subfolders (same bytes), links inside SRC reproduced as links */
    assert_int_equal(tu_sh("cmp -s %s/original/metal/model.bin %s/original/metal/model.bin", s, d), 0);
    assert_int_equal(tu_sh("cmp -s %s/original/big.pth %s/original/big.pth", s, d), 0);
    assert_int_equal(tu_sh("test \"$(readlink %s/original/tok.json)\" = ../tokenizer.json", d), 0);
    assert_int_equal(tu_sh("test \"$(readlink %s/metal-link)\" = original/metal", d), 0);
    /* not copied: links out of SRC, the FIFO, .git, a stray .safetensors */
    assert_false(exists(path("%s/s", d)));
    assert_false(exists(path("%s/original/up", d)));
    assert_false(exists(path("%s/original/abs", d)));
    assert_false(exists(path("%s/fifo", d)));
    assert_false(exists(path("%s/.git", d)));
    assert_false(exists(path("%s/consolidated.safetensors", d)));
    assert_int_equal(tu_sh("grep -rq TOPSECRET %s", d), 1);
    /* the summary says what was copied; a 48 MiB file is streamed, not held in memory */
    char *j = slurp(path("%s/out", root));
    assert_non_null(j);
    assert_non_null(strstr(j, "\"symlinks\": 2"));
    assert_non_null(strstr(j, "\"skipped\": 6"));
    char *rss = strstr(j, "\"peak_rss_bytes\":");
    assert_non_null(rss);
    double peak = strtod(rss + strlen("\"peak_rss_bytes\":"), NULL);
    const char *san = getenv("MPK_SANITIZED");
    if (!san || !*san) /* a sanitizer's shadow memory and quarantine are not moepack's */
        assert_true(peak < 40.0 * 1024 * 1024);
    free(j);
    /* --copy-links copies what a link out of SRC points at (a Hugging Face cache snapshot) */
    tu_rmrf(d);
    assert_int_equal(run("", path("pack %s %s -q --copy-links", s, d)), 0);
    assert_int_equal(tu_sh("cmp -s %s %s/s", secret, d), 0);
    assert_int_equal(tu_sh("test ! -L %s/s", d), 0);
    tu_rmrf(d);
    tu_rmrf(s);
}

/* ---------------------------------------------------------------- 6. the landing */

static mpk_status plan_for(const char *dir, mpk_ckpt **c, mpk_spec **sp, mpk_plan **p, mpk_error *err)
{
    mpk_model_config cfg = {0};
    MPK_TRY(mpk_ckpt_open(dir, c, err));
    MPK_TRY(mpk_config_load(dir, &cfg, err));
    MPK_TRY(mpk_preset_load("auto", &cfg, sp, err));
    mpk_plan_opts po = {.max_shard_size = 200000, .cfg = &cfg};
    mpk_status s = mpk_plan_build(*c, *sp, &po, p, err);
    mpk_config_free(&cfg);
    return s;
}

static const char *race_dst;

/* Called on the complete temporary directory just before it lands: someone creates DST. */
static mpk_status someone_creates_dst(void *ctx, const char *tmp, mpk_tensor_hash *h, size_t n, mpk_error *err)
{
    (void)tmp, (void)h, (void)n, (void)err;
    mkdir(race_dst, 0755);
    tu_write(path("%s/precious.txt", race_dst), "x");
    return MPK_OK;
}

static void test_landing_never_replaces_unless_forced(void **state)
{
    (void)state;
    /* reproducer: `pack SRC dst & sleep 0.05; mkdir dst; echo x > dst/precious.txt; wait`
     * exited 0 and precious.txt was gone */
    mpk_ckpt *c = NULL;
    mpk_spec *sp = NULL;
    mpk_plan *p = NULL;
    mpk_error err = {0};
    assert_int_equal(plan_for(src, &c, &sp, &p, &err), MPK_OK);
    race_dst = path("%s/race", root);
    mpk_exec_opts eo = {.threads = 1, .mem = 64u << 20, .finish = someone_creates_dst};
    mpk_exec_stats st;
    assert_int_equal(mpk_exec(p, race_dst, &eo, &st, &err), MPK_E_DST_EXISTS);
    assert_non_null(strstr(err.msg, "appeared while this run was writing"));
    char *t = slurp(path("%s/precious.txt", race_dst));
    assert_string_equal(t, "x");
    free(t);
    assert_false(exists(path("%s/model-00001-of-00003.safetensors", race_dst)));
    assert_false(litter(root));
    /* with force, a folder that is no checkpoint is refused: before the run, and when it
     * appears while the run writes (at landing) */
    eo.force = true;
    eo.finish = NULL;
    assert_int_equal(mpk_exec(p, race_dst, &eo, &st, &err), MPK_E_DST_FOREIGN);
    tu_rmrf(race_dst);
    eo.finish = someone_creates_dst;
    assert_int_equal(mpk_exec(p, race_dst, &eo, &st, &err), MPK_E_DST_FOREIGN);
    assert_non_null(strstr(err.msg, "not a checkpoint"));
    t = slurp(path("%s/precious.txt", race_dst));
    assert_string_equal(t, "x");
    free(t);
    assert_false(litter(root));
    /* a checkpoint there: the new output replaces it, exchanged, then the old one removed */
    tu_write(path("%s/model.safetensors", race_dst), "old");
    eo.finish = NULL;
    assert_int_equal(mpk_exec(p, race_dst, &eo, &st, &err), MPK_OK);
    assert_false(exists(path("%s/precious.txt", race_dst)));
    assert_int_equal(tu_sh("ls %s/*.safetensors >/dev/null", race_dst), 0);
    assert_false(litter(root));
    tu_rmrf(race_dst);
    mpk_plan_free(p);
    mpk_spec_free(sp);
    mpk_ckpt_close(c);

    /* two runs into one DST at once: one wins, the other exits 1 saying so */
    char *d = path("%s/two", root);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "cd %s; (%s pack %s %s " PACK_ARGS " 2>e1; echo $? > r1) & (%s pack %s %s " PACK_ARGS " 2>e2; echo $? > r2) & wait;"
             " test \"$(cat %s/r1 %s/r2 | sort | tr '\\n' ' ')\" = '0 1 '",
             root, moepack(), src, d, moepack(), src, d, root, root);
    assert_int_equal(tu_sh("%s", cmd), 0);
    assert_int_equal(tu_sh("cat %s/e1 %s/e2 | grep -Eq 'appeared while this run|destination exists'", root, root), 0);
    assert_true(same_tree(d, ref));
    assert_false(litter(root));
    tu_rmrf(d);
}

/* hash --write replaces the manifest atomically; a lone file has nowhere to put one */
static void test_hash_write_atomic(void **state)
{
    (void)state;
    /* reproducers: killed or out of space midway, `hash --write` left a cut manifest;
     * `hash FILE.safetensors --write` exited 0 and wrote nothing */
    char *m = path("%s/moepack.manifest.json", ref), *keep = path("%s/manifest.keep", root);
    assert_int_equal(tu_sh("cp %s %s", m, keep), 0);
    for (int k = 1; k <= 4; k++) { /* create, write, fsync, rename of the new manifest */
        assert_int_equal(run(path("MOEPACK_FAULT=%d:ENOSPC", k), path("hash %s --write", ref)), 1);
        assert_int_equal(tu_sh("cmp -s %s %s", m, keep), 0);
        assert_false(tu_sh("ls -A %s | grep -q tmp-", ref) == 0);
        assert_int_equal(run(path("MOEPACK_FAULT=%d:kill", k), path("hash %s --write", ref)), 137);
        assert_int_equal(tu_sh("cmp -s %s %s", m, keep), 0);
        assert_int_equal(tu_sh("rm -f %s/.moepack.manifest.json.tmp-*", ref), 0); /* a kill's litter */
    }
    assert_int_equal(run("", path("hash %s --write", ref)), 0);
    assert_int_equal(tu_sh("cmp -s %s %s", m, keep), 0); /* same content, written again */
    assert_int_equal(run("", path("verify %s", ref)), 0);
    assert_int_equal(run("", path("hash %s/model-00001-of-00003.safetensors --write", src)), 2);
    assert_true(err_has("lone file"));
}

/* ---------------------------------------------------------------- 7. failures mid-write */

static long fault_points(const char *args)
{
    assert_int_equal(run("MOEPACK_FAULT=count", args), 0);
    char *t = slurp(path("%s/err", root));
    assert_non_null(t);
    char *p = strstr(t, "fault points passed: ");
    long n = p ? strtol(p + 21, NULL, 10) : 0;
    free(t);
    return n;
}

static void test_every_write_failure_reported_and_cleaned(void **state)
{
    (void)state;
    char *d = path("%s/fail", root), args[800];
    snprintf(args, sizeof args, "pack %s %s " PACK_ARGS, src, d);
    long n = fault_points(args);
    tu_rmrf(d);
    assert_true(n > 20);
    print_message("pack: %ld write-path calls, each made to fail in turn\n", n);
    static const char *errs[] = {"ENOSPC", "EIO", "EFBIG"};
    static const char *texts[] = {"No space left on device", "Input/output error", "File too large"};
    for (long k = 1; k <= n; k++) {
        int e = (int)(k % 3);
        assert_int_equal(run(path("MOEPACK_FAULT=%ld:%s", k, errs[e]), args), 1);
        if (!err_has(texts[e]) || !err_has(root))
            fail_msg("failure at call %ld of %ld: message does not say what and where", k, n);
        if (litter(root))
            fail_msg("failure at call %ld of %ld left its temporary directory", k, n);
        /* only the last call, the fsync of DST's parent after the rename, fails with DST complete */
        if (exists(d) && (k != n || !err_has("fsync") || !same_tree(d, ref)))
            fail_msg("failure at call %ld of %ld left output behind", k, n);
        tu_rmrf(d);
    }
    /* with --resume the partial output is kept for a later run, which finishes it */
    char rargs[900];
    snprintf(rargs, sizeof rargs, "%s --resume", args);
    assert_int_equal(run(path("MOEPACK_FAULT=%ld:ENOSPC", n * 2 / 3), rargs), 1);
    assert_true(err_has("--resume again"));
    assert_false(exists(d));
    assert_true(litter(root));
    assert_int_equal(run("", rargs), 0);
    assert_true(err_has("resuming the run"));
    assert_true(same_tree(d, ref));
    assert_false(litter(root));
    tu_rmrf(d);
}

/* A real file-size limit (EFBIG from the kernel: SIGXFSZ is ignored) and, where we may
 * mount, a real full file system. */
static void test_real_efbig_and_enospc(void **state)
{
    (void)state;
    char *d = path("%s/big", root);
    assert_int_equal(run("ulimit -f 64;", path("pack %s %s " PACK_ARGS, src, d)), 1);
    assert_true(err_has("File too large"));
    assert_false(exists(d));
    assert_false(litter(root));
    char *small = path("%s/small", root);
    mkdir(small, 0755);
    if (mount("tmpfs", small, "tmpfs", 0, "size=256k") != 0) {
        print_message("cannot mount a small tmpfs here (%s): the ENOSPC case runs through the hook only\n",
                      strerror(errno));
        return;
    }
    assert_int_equal(run("", path("pack %s %s/out " PACK_ARGS, src, small)), 1);
    assert_true(err_has("No space left on device"));
    assert_int_equal(tu_sh("test -z \"$(ls -A %s)\"", small), 0);
    umount(small);
}

/* ---------------------------------------------------------------- 2 + 5. kills */

static void test_kill_anywhere_then_rerun_or_resume(void **state)
{
    (void)state;
    /* reproducer: kill -9 during a pack left .DST.moepack-tmp-* beside DST; nothing removed
     * or resumed it */
    char *d = path("%s/kill", root), args[800], rargs[900];
    snprintf(args, sizeof args, "pack %s %s " PACK_ARGS, src, d);
    snprintf(rargs, sizeof rargs, "%s --resume --json", args);
    long n = fault_points(args);
    tu_rmrf(d);
    uint64_t seed = 12;
    int kept_total = 0;
    for (long k = 1; k <= n; k += 1 + (long)(mpk_rand(&seed) % 3)) {
        assert_int_equal(run(path("MOEPACK_FAULT=%ld:kill", k), args), 137);
        if (exists(d)) /* a kill after the rename: then it is complete */
            assert_true(same_tree(d, ref));
        else if (k > 1) /* (the first call creates the temporary directory) */
            assert_true(litter(root));
        tu_rmrf(d);
        bool resume = mpk_rand(&seed) & 1, had_litter = litter(root);
        assert_int_equal(run("", resume ? rargs : args), 0);
        assert_true(same_tree(d, ref)); /* the same bytes as an uninterrupted run */
        assert_false(litter(root));
        if (!resume && had_litter && !err_has("left by a run that is gone"))
            fail_msg("kill at %ld: the rerun did not say it removed the dead run's directory", k);
        if (resume) {
            char *o = slurp(path("%s/out", root)), *r = o ? strstr(o, "\"shards_kept\":") : NULL;
            if (r)
                kept_total += atoi(r + strlen("\"shards_kept\":"));
            free(o);
        }
        tu_rmrf(d);
    }
    assert_true(kept_total > 0); /* some resumes kept shards rather than redoing everything */
    /* and real SIGKILLs at random moments (timeout -s KILL after 1..60 ms, fixed seed) */
    for (int i = 0; i < 8; i++) {
        int ms = 1 + (int)(mpk_rand(&seed) % 60);
        int rc = run(path("timeout -s KILL 0.%03d", ms), args);
        assert_true(rc == 0 || rc == 137);
        if (exists(d))
            assert_true(same_tree(d, ref));
        tu_rmrf(d);
        assert_int_equal(run("", rargs), 0);
        assert_true(same_tree(d, ref));
        assert_false(litter(root));
        tu_rmrf(d);
    }
}

static void test_force_replacement_crash_safe(void **state)
{
    (void)state;
    /* --force: at every moment DST is the old directory or the complete new one */
    char *d = path("%s/forced", root), args[800];
    snprintf(args, sizeof args, "pack %s %s " PACK_ARGS " --force", src, d);
    const char *mk_old = "mkdir -p %s && echo old > %s/old.txt && echo old > %s/model.safetensors"; /* a checkpoint */
    assert_int_equal(tu_sh(mk_old, d, d, d), 0);
    long n = fault_points(args);
    assert_true(n > 20);
    for (long k = 1; k <= n; k++) {
        tu_rmrf(d);
        assert_int_equal(tu_sh(mk_old, d, d, d), 0);
        assert_int_equal(run(path("MOEPACK_FAULT=%ld:kill", k), args), 137);
        bool old = exists(path("%s/old.txt", d)) && tu_sh("test $(ls -A %s | wc -l) = 2", d) == 0;
        if (!old && !same_tree(d, ref))
            fail_msg("kill at call %ld of %ld: DST is neither the old nor the new output", k, n);
        assert_int_equal(run("", args), 0); /* the rerun cleans up and lands */
        assert_true(same_tree(d, ref));
        assert_false(litter(root));
    }
    tu_rmrf(d);
}

/* This host's name as a staging directory's name records it. */
static void owner_host(char host[64])
{
    char h[256] = "";
    gethostname(h, sizeof h - 1);
    for (char *c = h; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '-' || *c == '_'))
            *c = '-';
    h[47] = 0;
    snprintf(host, 64, "%s", h);
}

/* pid 1's start time (clock ticks since boot): with pid 1, the owner of a live run. */
static unsigned long long pid1_start(void)
{
    char stat_line[1024] = "";
    FILE *f = fopen("/proc/1/stat", "r");
    assert_non_null(f);
    assert_non_null(fgets(stat_line, sizeof stat_line, f));
    fclose(f);
    char *p = strrchr(stat_line, ')');
    for (int i = 3; i <= 22; i++)
        p = strchr(p + 1, ' ');
    return strtoull(p + 1, NULL, 10);
}

/* Stale directories: a dead owner's removed (and said), a live one's and an unknown
 * older moepack's left alone; --resume with different options does not adopt. */
static void test_stale_temporaries(void **state)
{
    (void)state;
    char *d = path("%s/stale", root), host[64];
    owner_host(host);
    char *dead = path("%s/.stale.moepack-tmp.%s.999999999.1.abcdef", root, host);
    char *alive = path("%s/.stale.moepack-tmp.%s.1.%llu.ghijkl", root, host, pid1_start());
    char *legacy = path("%s/.stale.moepack-tmp-mnopqr", root);
    assert_int_equal(tu_sh("mkdir -p %s %s %s && echo x > %s/f", dead, alive, legacy, dead), 0);
    assert_int_equal(run("", path("pack %s %s " PACK_ARGS, src, d)), 0);
    assert_true(err_has("left by a run that is gone"));
    assert_true(err_has("may still be going"));
    assert_true(err_has("older moepack"));
    assert_false(exists(dead));
    assert_true(exists(alive));
    assert_true(exists(legacy));
    tu_rmrf(alive);
    tu_rmrf(legacy);
    tu_rmrf(d);
    /* a dead run with other options is not resumed: removed, and the output is right */
    assert_int_equal(run("MOEPACK_FAULT=40:kill", path("pack %s %s -q --threads 1 --max-shard-size 300KB", src, d)), 137);
    assert_int_equal(run("", path("pack %s %s " PACK_ARGS " --resume", src, d)), 0);
    assert_true(err_has("a different plan"));
    assert_true(same_tree(d, ref));
    assert_false(litter(root));
    tu_rmrf(d);
}

/* The safety-bounce run (--bounce always, tests/meson.build) moves the pure bytes of these
 * packs through a worker's buffer, so the write failures, kills and resumes above go through
 * that path: a pack here says so in its report. Skipped in the other runs. */
static void test_bounce_run_bounces(void **state)
{
    (void)state;
    if (!tu_moepack_has("--bounce always"))
        skip();
    char *d = path("%s/bounce", root);
    assert_int_equal(run("", path("pack %s %s " PACK_ARGS " --json", src, d)), 0);
    char *t = slurp(path("%s/out", root)), *b = t ? strstr(t, "\"bounced_bytes\": ") : NULL;
    assert_non_null(b);
    assert_true(strtoull(b + 17, NULL, 10) > 0);
    free(t);
    assert_true(same_tree(d, ref));
    tu_rmrf(d);
}

/* --no-fsync syncs nothing, the manifest and the source record included (one fsync of the
 * record took 1.04 s of a 2.7 s pack on ext4: its journal commit waited on the output); a
 * durable pack syncs its shards and what finish writes. */
static void test_no_fsync_syncs_nothing(void **state)
{
    (void)state;
    char *d = path("%s/nofsync", root), *u = path("%s/nofsync-unpacked", root);
    assert_int_equal(run("MOEPACK_FAULT=count", path("pack %s %s -q --no-fsync", src, d)), 0);
    assert_true(err_has("moepack: fsyncs: 0\n"));
    assert_int_equal(run("MOEPACK_FAULT=count", path("unpack %s %s -q --no-fsync", d, u)), 0);
    assert_true(err_has("moepack: fsyncs: 0\n"));
    tu_rmrf(d);
    tu_rmrf(u);
    /* durable: the 3 shards, the index, the manifest, the record, config.json, the run file,
     * the journal lines, the directories: many more than 3 */
    assert_int_equal(run("MOEPACK_FAULT=count", path("pack %s %s -q --max-shard-size 300KB", src, d)), 0);
    char *t = slurp(path("%s/err", root));
    assert_non_null(t);
    char *at = strstr(t, "moepack: fsyncs: ");
    assert_non_null(at);
    assert_true(strtol(at + 17, NULL, 10) > 3);
    free(t);
    tu_rmrf(d);
}

/* A kept shard whose bytes changed after the crash is written again. */
static void test_resume_rechecks_kept_shards(void **state)
{
    (void)state;
    char *d = path("%s/recheck", root), args[800];
    snprintf(args, sizeof args, "pack %s %s " PACK_ARGS, src, d);
    long n = fault_points(args);
    tu_rmrf(d);
    assert_int_equal(run(path("MOEPACK_FAULT=%ld:kill", n - 5), args), 137);
    /* flip a byte near the end of the first journaled shard */
    assert_int_equal(tu_sh("cd %s/.recheck.moepack-tmp.* && f=$(ls moepack.shard.* | head -1 | cut -d. -f4-) && test -n \"$f\" && "
                           "printf '\\377\\377\\377\\377' | dd of=$f bs=1 seek=$(($(stat -c %%s $f) - 8)) conv=notrunc status=none",
                           root),
                     0);
    assert_int_equal(run("", path("%s --resume --json", args)), 0);
    assert_true(same_tree(d, ref));
    char *o = slurp(path("%s/out", root));
    assert_non_null(o);
    assert_non_null(strstr(o, "\"resumed\": true"));
    char *k = strstr(o, "\"shards_kept\":");
    assert_non_null(k);
    int kept = atoi(k + strlen("\"shards_kept\":"));
    int journaled = tu_sh("exit $(ls %s/*.safetensors | wc -l)", d); /* (all shards, to bound it) */
    assert_true(kept >= 0 && kept < journaled);
    free(o);
    tu_rmrf(d);
}

/* The staging directory's markers are empty files named with what they record (the plan digest
 * and boot id; each complete shard and its digest), so removing them before the landing frees
 * no blocks and never waits on the device. A run marker with another boot id marks its owner
 * gone although a process with its pid and start time lives; an older build's text files
 * (moepack.run, moepack.journal) are still read by --resume. */
static void test_markers_hold_no_data(void **state)
{
    (void)state;
    char *d = path("%s/marks", root), args[800], host[64];
    snprintf(args, sizeof args, "pack %s %s " PACK_ARGS, src, d);
    long n = fault_points(args);
    tu_rmrf(d);
    assert_int_equal(run(path("MOEPACK_FAULT=%ld:kill", n - 5), args), 137);
    assert_int_equal(tu_sh("cd %s/.marks.moepack-tmp.* && b=$(cat /proc/sys/kernel/random/boot_id) && "
                           "test $(ls | grep -c '^moepack\\.run\\.') = 1 && "
                           "ls | grep -qE \"^moepack\\.run\\.[0-9a-f]{16}\\.$b\\$\" && "
                           "test $(ls | grep -cE '^moepack\\.shard\\.[0-9a-f]{16}\\.model-') -ge 1 && "
                           "test -z \"$(find . -maxdepth 1 '(' -name 'moepack.run*' -o -name 'moepack.shard.*' ')' -size +0c)\" && "
                           "test ! -e moepack.run && test ! -e moepack.journal",
                           root),
                     0);
    /* an older build's files in place of the markers: resumed, shards kept */
    assert_int_equal(tu_sh("cd %s/.marks.moepack-tmp.* && r=$(ls moepack.run.*) && "
                           "printf 'moepack-run 1\\nboot %%s\\ndigest %%s\\n' $(echo $r | cut -d. -f4-) "
                           "$(echo $r | cut -d. -f3) > moepack.run && rm $r && for m in moepack.shard.*; do "
                           "printf 'shard %%s %%s\\n' $(echo $m | cut -d. -f4-) $(echo $m | cut -d. -f3) >> moepack.journal; "
                           "rm $m; done",
                           root),
                     0);
    assert_int_equal(run("", path("%s --resume --json", args)), 0);
    char *o = slurp(path("%s/out", root)), *k = o ? strstr(o, "\"shards_kept\":") : NULL;
    assert_non_null(k);
    assert_non_null(strstr(o, "\"resumed\": true"));
    assert_true(atoi(k + strlen("\"shards_kept\":")) > 0);
    free(o);
    assert_true(same_tree(d, ref));
    assert_false(litter(root));
    tu_rmrf(d);
    /* a live pid and start time, but another boot's run marker: gone, removed */
    assert_int_equal(run(path("MOEPACK_FAULT=%ld:kill", n - 5), args), 137);
    owner_host(host);
    char *alive = path("%s/.marks.moepack-tmp.%s.1.%llu.ghijkl", root, host, pid1_start());
    assert_int_equal(tu_sh("mv %s/.marks.moepack-tmp.* %s && cd %s && r=$(ls moepack.run.*) && "
                           "mv $r moepack.run.$(echo $r | cut -d. -f3).00000000-0000-0000-0000-000000000000",
                           root, alive, alive),
                     0);
    assert_int_equal(run("", args), 0);
    assert_true(err_has("left by a run that is gone (pid 1 on"));
    assert_false(exists(alive));
    assert_true(same_tree(d, ref));
    assert_false(litter(root));
    tu_rmrf(d);
}

/* Hostile side input: a FIFO or a directory where a file is read is refused at once. */
static void test_read_file_refuses_special_files(void **state)
{
    (void)state;
    char *fifo = path("%s/spec.fifo", root);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    char *t = NULL;
    size_t n;
    mpk_error err = {0};
    assert_int_equal(mpk_read_file(fifo, &t, &n, &err), MPK_E_IO);
    assert_non_null(strstr(err.msg, "FIFO"));
    assert_int_equal(mpk_read_file(root, &t, &n, &err), MPK_E_IO);
    assert_non_null(strstr(err.msg, "directory"));
    assert_int_equal(run("", path("convert %s %s/never --spec %s", src, root, fifo)), 1);
    assert_true(err_has("FIFO"));
    unlink(fifo);
}

int main(int argc, char **argv)
{
    tu_tuning_args(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_overlap_refused),
        cmocka_unit_test(test_force_replaces_only_checkpoints),
        cmocka_unit_test(test_output_follows_umask),
        cmocka_unit_test(test_side_files_recursive_no_escape),
        cmocka_unit_test(test_landing_never_replaces_unless_forced),
        cmocka_unit_test(test_hash_write_atomic),
        cmocka_unit_test(test_every_write_failure_reported_and_cleaned),
        cmocka_unit_test(test_bounce_run_bounces),
        cmocka_unit_test(test_real_efbig_and_enospc),
        cmocka_unit_test(test_kill_anywhere_then_rerun_or_resume),
        cmocka_unit_test(test_force_replacement_crash_safe),
        cmocka_unit_test(test_stale_temporaries),
        cmocka_unit_test(test_no_fsync_syncs_nothing),
        cmocka_unit_test(test_resume_rechecks_kept_shards),
        cmocka_unit_test(test_markers_hold_no_data),
        cmocka_unit_test(test_read_file_refuses_special_files),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
