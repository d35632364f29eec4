/* test_guard.c — what a run may delete (exec/guard.c), issue 45 items 1 and 4: removal that
 * never follows a link swapped in, never leaves the file system, touches only the running
 * user's staging directories; what --force calls a checkpoint. The mount cases, which need a
 * private mount namespace, are in guard.sh. */
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
#include <sys/stat.h>
#include <unistd.h>

static char root[] = "/tmp/mpk_guard_XXXXXX";

#define path tu_fmt

static int count_files(const char *dir)
{
    char *out = path("%s/.count", root);
    tu_sh("ls -A '%s' 2>/dev/null | wc -l > %s", dir, out);
    char *t = tu_slurp(out);
    int n = t ? atoi(t) : -1;
    free(t);
    return n;
}

static const char *victim;
static int swaps;

/* What the attacker of item 1 does, at the worst moment: between moepack's look at "d" (a
 * directory) and its descent, d becomes a link to the victim's folder. */
static void swap_in_link(int dirfd, const char *name)
{
    if (strcmp(name, "d") != 0 || swaps)
        return;
    swaps++;
    assert_int_equal(renameat(dirfd, "d", dirfd, "d2"), 0);
    assert_int_equal(symlinkat(victim, dirfd, "d"), 0);
}

static void test_rmrf_never_follows_a_link_swapped_in(void **state)
{
    (void)state;
    /* reproducer: in a shared sticky directory another user prepares
     * .out.moepack-tmp.HOST.DEADPID.START.XXXXXX/d/ with files and loops rename(d,d2);
     * symlink(VICTIM,d); ...: root's `moepack pack tiny S/out` deleted 25-48 of VICTIM's 50
     * files (nftw + remove() by full path). Here the swap is made at the worst moment. */
    victim = path("%s/victim", root);
    char *stale = path("%s/stale", root);
    assert_int_equal(tu_sh("mkdir -p %s %s/d && for i in $(seq 50); do echo v > %s/f$i; echo a > %s/d/f$i; done",
                           victim, stale, victim, stale), 0);
    mpk_rmrf_between = swap_in_link;
    mpk_rmrf(stale);
    mpk_rmrf_between = NULL;
    assert_int_equal(swaps, 1);
    assert_int_equal(count_files(victim), 50); /* not one of the victim's files */
    /* what was left is the attacker's: the link (or the renamed directory); removed on a
     * second call, the victim still intact */
    mpk_rmrf(stale);
    assert_int_equal(count_files(victim), 50);
    struct stat sb;
    assert_int_equal(lstat(stale, &sb), -1);
    /* a link given as the path itself: the link goes, not its target */
    char *link = path("%s/link", root);
    assert_int_equal(symlink(victim, link), 0);
    mpk_rmrf(link);
    assert_int_equal(lstat(link, &sb), -1);
    assert_int_equal(count_files(victim), 50);
    /* a plain tree, deep and wide, goes entirely */
    char *tree = path("%s/tree", root);
    assert_int_equal(tu_sh("mkdir -p %s/a/b/c/d/e && touch %s/x %s/a/y %s/a/b/c/d/e/z && ln -s %s %s/a/v",
                           tree, tree, tree, tree, victim, tree), 0);
    mpk_rmrf(tree);
    assert_int_equal(lstat(tree, &sb), -1);
    assert_int_equal(count_files(victim), 50);
    tu_rmrf(victim);
}

static void test_stale_cleanup_touches_only_our_directories(void **state)
{
    (void)state;
    /* a dead run's staging directory that is another user's, or a link named like one, is
     * left alone (and said); ours is removed. (Making another user's directory takes root.) */
    if (geteuid() != 0) {
        print_message("not root: another user's directory cannot be made here; skipped\n");
        skip();
    }
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    for (char *c = host; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '-' || *c == '_'))
            *c = '-';
    char *src = path("%s/src", root), *out = path("%s/pk", root), *v = path("%s/victim2", root);
    char *theirs = path("%s/.pk.moepack-tmp.%s.999999991.1.aaaaaa", root, host);
    char *link = path("%s/.pk.moepack-tmp.%s.999999992.1.bbbbbb", root, host);
    char *mine = path("%s/.pk.moepack-tmp.%s.999999993.1.cccccc", root, host);
    assert_int_equal(tu_sh("%s synth --layers 1 %s >/dev/null", tu_moepack(), src), 0);
    assert_int_equal(tu_sh("mkdir -p %s/d %s %s && echo t > %s/d/f && echo v > %s/f && ln -s %s %s && "
                           "echo m > %s/f && chown -R 65534:65534 %s",
                           theirs, v, mine, theirs, v, v, link, mine, theirs), 0);
    assert_int_equal(tu_run(root, "", path("pack %s %s -q", src, out)), 0);
    assert_true(tu_err_has(root, "not a directory of this user's; left alone"));
    struct stat sb;
    assert_int_equal(stat(path("%s/d/f", theirs), &sb), 0); /* another user's: intact */
    assert_int_equal(lstat(link, &sb), 0);                  /* the link: left */
    assert_int_equal(stat(path("%s/f", v), &sb), 0);        /* its target: intact */
    assert_int_equal(lstat(mine, &sb), -1);                 /* ours, of a dead run: removed */
    tu_rmrf(theirs);
    unlink(link);
    tu_rmrf(v);
    tu_rmrf(out);
    tu_rmrf(src);
}

static void test_force_refuses_what_is_not_only_a_checkpoint(void **state)
{
    (void)state;
    /* reproducer: `--force` wiped a folder of models holding one loose
     * adapter_model.safetensors, two model folders and a README */
    char *d = path("%s/models", root);
    mpk_error err = {0};
    assert_int_equal(tu_sh("mkdir -p %s/llama %s/mixtral && echo a > %s/adapter_model.safetensors && "
                           "echo r > %s/README.md && echo w > %s/llama/model.safetensors && echo {} > %s/mixtral/config.json",
                           d, d, d, d, d, d), 0);
    assert_int_equal(mpk_force_check(d, &err), MPK_E_DST_FOREIGN);
    assert_non_null(strstr(err.msg, "another checkpoint below its top level"));
    tu_rmrf(d);
    /* a .git, anywhere */
    assert_int_equal(tu_sh("mkdir -p %s/.git && echo w > %s/model.safetensors", d, d), 0);
    assert_int_equal(mpk_force_check(d, &err), MPK_E_DST_FOREIGN);
    assert_non_null(strstr(err.msg, ".git"));
    tu_rmrf(d);
    /* a file no checkpoint has */
    assert_int_equal(tu_sh("mkdir -p %s && echo w > %s/model.safetensors && echo p > %s/holiday.jpg", d, d, d), 0);
    assert_int_equal(mpk_force_check(d, &err), MPK_E_DST_FOREIGN);
    assert_non_null(strstr(err.msg, "holiday.jpg"));
    assert_non_null(strstr(err.msg, "a file of a kind no checkpoint has"));
    tu_rmrf(d);
    /* what a published checkpoint holds is replaced: shards, index, configs, tokenizer, card,
     * licence, custom code, a figures/ folder */
    assert_int_equal(tu_sh("mkdir -p %s/figures && cd %s && touch model-00001-of-00002.safetensors "
                           "model.safetensors.index.json config.json generation_config.json tokenizer.json "
                           "tokenizer.model merges.txt README.md LICENSE modeling_x.py chat_template.jinja "
                           ".gitattributes figures/arch.png", d, d), 0);
    assert_int_equal(mpk_force_check(d, &err), MPK_OK);
    tu_rmrf(d);
    /* moepack's own output (a moepack.* record on top) may hold whatever SRC held */
    assert_int_equal(tu_sh("mkdir -p %s/original && cd %s && touch model.safetensors moepack.manifest.json "
                           "photo.jpg original/config.json", d, d), 0);
    assert_int_equal(mpk_force_check(d, &err), MPK_OK);
    tu_rmrf(d);
}

static void test_private_weights_stay_private(void **state)
{
    (void)state;
    /* reproducer: 0600 shards and a 0700 folder gave 0644 / 0755 output, and the 0644
     * moepack.source.zst embedded the 0600 config.json's text */
    char *s = path("%s/priv", root), *d = path("%s/priv-pk", root), *u = path("%s/priv-up", root),
         *z = path("%s/priv-z", root), *x = path("%s/priv-x", root);
    assert_int_equal(tu_sh("%s synth --layers 1 %s >/dev/null && echo hi > %s/README.md && chmod 600 %s/*.safetensors "
                           "%s/config.json && chmod 700 %s", tu_moepack(), s, s, s, s, s), 0);
    const char *runs[][2] = {{"pack %s %s -q", NULL}, {"unpack %s %s -q", NULL}, {"compress %s %s -q", NULL},
                             {"decompress %s %s", NULL}};
    const char *from[] = {s, d, s, z}, *to[] = {d, u, z, x};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(tu_run(root, "umask 022;", path(runs[i][0], from[i], to[i])), 0);
        /* every weight file, index, config and record 0600; the folder 0700; README stays 0644 */
        assert_int_equal(tu_sh("cd %s && test $(stat -c %%a .) = 700 && for f in *.safetensors* *.json moepack.*; do "
                               "[ -e \"$f\" ] || continue; test $(stat -c %%a \"$f\") = 600 || { echo \"$f\" "
                               "$(stat -c %%a \"$f\") >&2; exit 1; }; done && test $(stat -c %%a README.md) = 644",
                               to[i]), 0);
    }
    /* a mixed source: the records take the most private file's bits, a container its own file's */
    assert_int_equal(tu_sh("chmod 644 %s/*.safetensors && chmod 640 %s/config.json && chmod 755 %s", s, s, s), 0);
    tu_rmrf(d);
    tu_rmrf(z);
    assert_int_equal(tu_run(root, "umask 022;", path("pack %s %s -q", s, d)), 0);
    assert_int_equal(tu_sh("cd %s && test $(stat -c %%a .) = 755 && test $(stat -c %%a config.json) = 640 && "
                           "test $(stat -c %%a moepack.source.zst) = 640 && test $(stat -c %%a model.safetensors) = 644",
                           d), 0);
    assert_int_equal(tu_run(root, "umask 022;", path("compress %s %s -q", s, z)), 0);
    assert_int_equal(tu_sh("cd %s && test $(stat -c %%a config.json.mpkz 2>/dev/null || stat -c %%a config.json) = 640 && "
                           "for f in *.safetensors.mpkz; do test $(stat -c %%a $f) = 644 || exit 1; done", z), 0);
    tu_rmrf(s);
    tu_rmrf(d);
    tu_rmrf(u);
    tu_rmrf(z);
    tu_rmrf(x);
}

static void test_links_resolved_not_read(void **state)
{
    (void)state;
    /* reproducer: `ln -s . SRC/b; ln -s b/../secret SRC/tok.json` was copied as a link that
     * resolves outside DST (its text looks inside: b/.. read as SRC) */
    char *s = path("%s/lk", root), *d = path("%s/lk-pk", root), *secret = path("%s/secret", root);
    assert_int_equal(tu_sh("%s synth --layers 1 %s >/dev/null && echo TOPSECRET > %s && cd %s && ln -s . b && "
                           "ln -s b/../secret tok.json && ln -s b/config.json cfg-link && ln -s b/../nothing dangling",
                           tu_moepack(), s, secret, s), 0);
    assert_int_equal(tu_run(root, "", path("pack %s %s -q", s, d)), 0);
    assert_true(tu_err_has(root, "tok.json -> b/../secret: the link points outside the source"));
    assert_true(tu_err_has(root, "dangling -> b/../nothing: the link points outside the source"));
    struct stat sb;
    assert_int_equal(lstat(path("%s/tok.json", d), &sb), -1); /* not copied */
    assert_int_equal(lstat(path("%s/b", d), &sb), 0);         /* the links inside are */
    assert_true(S_ISLNK(sb.st_mode));
    assert_int_equal(lstat(path("%s/cfg-link", d), &sb), 0);
    assert_true(S_ISLNK(sb.st_mode));
    assert_int_equal(tu_sh("cmp -s %s/cfg-link %s/config.json", d, d), 0);
    /* with --copy-links the user asked for what it points at: a regular file */
    tu_rmrf(d);
    assert_int_equal(tu_run(root, "", path("pack %s %s -q --copy-links", s, d)), 0);
    assert_int_equal(lstat(path("%s/tok.json", d), &sb), 0);
    assert_true(S_ISREG(sb.st_mode));
    tu_rmrf(d);
    tu_rmrf(s);
    unlink(secret);
}

static void test_cancel_after_the_last_unit_lands_nothing(void **state)
{
    (void)state;
    /* reproducer: SIGTERM (the cancel flag) after the last unit was written, while the run
     * wrote its manifest and side files: the library landed a complete DST anyway (the flag
     * was read only while units remained). Stopped at each of the last write-path points
     * before the landing's own (MOEPACK_FAULT=N:stop), signalled, continued. */
    char *s = path("%s/cs", root), *d = path("%s/cs-out", root);
    assert_int_equal(tu_sh("%s synth --layers 1 %s >/dev/null", tu_moepack(), s), 0);
    assert_int_equal(tu_sh("M=%s; P=$(MOEPACK_FAULT=count $M pack -q --threads 1 %s %s 2>&1 | sed -n "
                           "'s/.*fault points passed: //p'); rm -rf %s; test -n \"$P\" || exit 9; "
                           "for k in 3 4 5 6; do MOEPACK_FAULT=$((P - k)):stop $M pack -q --threads 1 %s %s 2>/dev/null & "
                           "pid=$!; n=0; until grep -q '^State:.*T' /proc/$pid/status 2>/dev/null; do "
                           "n=$((n + 1)); [ $n -lt 600 ] || exit 8; sleep 0.05; done; kill -TERM $pid; kill -CONT $pid; "
                           "wait $pid; rc=$?; [ $rc = 143 ] || exit 7; [ ! -e %s ] || exit $k; done",
                           tu_moepack(), s, d, d, s, d, d), 0);
    assert_int_equal(tu_sh("ls -A %s | grep -q moepack-tmp", root), 1);
    tu_rmrf(s);
}

static int setup(void **state)
{
    (void)state;
    return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    tu_rmrf(root);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmrf_never_follows_a_link_swapped_in),
        cmocka_unit_test(test_stale_cleanup_touches_only_our_directories),
        cmocka_unit_test(test_force_refuses_what_is_not_only_a_checkpoint),
        cmocka_unit_test(test_private_weights_stay_private),
        cmocka_unit_test(test_links_resolved_not_read),
        cmocka_unit_test(test_cancel_after_the_last_unit_lands_nothing),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
