/* ckptutil.c — see ckptutil.h. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ckptutil.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *cu_read_tensor(const mpk_ckpt *c, const char *name, const mpk_ckpt_tensor **out)
{
    const mpk_ckpt_tensor *t = mpk_ckpt_find(c, name);
    if (!t)
        fail_msg("tensor '%s' not found", name);
    char *b = malloc(t->nbytes + 1);
    assert_int_equal(pread(c->shards[t->shard].fd, b, t->nbytes, (off_t)t->file_offset), (ssize_t)t->nbytes);
    if (out)
        *out = t;
    return b;
}

bool cu_exists(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0;
}

void cu_assert_same_ckpt(const char *pa, const char *pb)
{
    mpk_ckpt *a, *b;
    mpk_error err = {0};
    assert_int_equal(mpk_ckpt_open(pa, &a, &err), MPK_OK);
    assert_int_equal(mpk_ckpt_open(pb, &b, &err), MPK_OK);
    assert_int_equal(a->n_tensors, b->n_tensors);
    for (size_t i = 0; i < a->n_tensors; i++) {
        const mpk_ckpt_tensor *ta = &a->tensors[i], *tb;
        char *x = cu_read_tensor(a, ta->info->name, NULL), *y = cu_read_tensor(b, ta->info->name, &tb);
        assert_int_equal(ta->info->dtype, tb->info->dtype);
        assert_int_equal(ta->info->ndim, tb->info->ndim);
        assert_memory_equal(ta->info->shape, tb->info->shape, sizeof(int64_t) * (size_t)ta->info->ndim);
        assert_int_equal(ta->nbytes, tb->nbytes);
        if (memcmp(x, y, ta->nbytes) != 0)
            fail_msg("tensor '%s' differs between %s and %s", ta->info->name, pa, pb);
        free(x);
        free(y);
    }
    mpk_ckpt_close(a);
    mpk_ckpt_close(b);
}
