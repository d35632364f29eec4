/* test_io.c — the I/O engine under each back end, and the process-wide choice (mpk_tune). */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mpk_formats.h"
#include "testutil.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- I/O engine */

static void run_io_engine(mpk_io_backend be)
{
    char dir[] = "/tmp/mpk_test_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *path = tu_join(dir, "blob");
    size_t n = 3 * 1024 * 1024 + 17;
    unsigned char *src = malloc(n);
    for (size_t i = 0; i < n; i++)
        src[i] = (unsigned char)(i * 131 + (i >> 11));
    mpk_error err = {0};
    assert_int_equal(mpk_write_file(path, src, n, false, &err), MPK_OK);
    mpk_io *io;
    mpk_status s = mpk_io_create(be, 8, 65536, &io, &err);
    if (s != MPK_OK && be == MPK_IO_URING) {
        print_message("io_uring unavailable here (%s); pread covered\n", err.msg);
        free(src);
        free(path);
        tu_rmrf(dir);
        return;
    }
    assert_int_equal(s, MPK_OK);
    assert_int_equal(mpk_io_backend_of(io), be);
    int fd = open(path, O_RDWR);
    /* 100 ranged reads of odd sizes and offsets, larger than max_req and queue depth */
    enum { NR = 100 };
    mpk_io_req reqs[NR];
    unsigned char *dst = malloc(n);
    uint64_t seed = 7, used = 0;
    for (int i = 0; i < NR; i++) {
        size_t len = 1 + (size_t)(mpk_rand(&seed) % 200000);
        uint64_t off = mpk_rand(&seed) % (n - len);
        if (used + len > n)
            len = 1;
        reqs[i] = (mpk_io_req){.fd = fd, .offset = off, .buf = dst + used, .len = len};
        used += len;
    }
    assert_int_equal(mpk_io_submit(io, reqs, NR, &err), MPK_OK);
    for (int i = 0; i < NR; i++)
        assert_memory_equal(reqs[i].buf, src + reqs[i].offset, reqs[i].len);
    /* writes, then read back */
    memset(dst, 0xAB, 300000);
    mpk_io_req w[2] = {{.fd = fd, .write = true, .offset = 10, .buf = dst, .len = 200000},
                       {.fd = fd, .write = true, .offset = n - 5, .buf = dst, .len = 5}};
    assert_int_equal(mpk_io_submit(io, w, 2, &err), MPK_OK);
    unsigned char back[16];
    assert_int_equal(pread(fd, back, 16, 100), 16);
    for (int i = 0; i < 16; i++)
        assert_int_equal(back[i], 0xAB);
    /* a read past the end of file is an error naming the offset */
    mpk_io_req past = {.fd = fd, .offset = n - 4, .buf = dst, .len = 64};
    assert_int_equal(mpk_io_submit(io, &past, 1, &err), MPK_E_IO);
    assert_non_null(strstr(err.msg, "end of file"));
    /* ... naming the file when the request carries its name (it has no "fd N" then), and the
     * offset where the bytes ran out: the file's end */
    char want[96];
    snprintf(want, sizeof want, "shard-x: read at offset %llu failed: unexpected end of file",
             (unsigned long long)n);
    past.path = "shard-x";
    assert_int_equal(mpk_io_submit(io, &past, 1, &err), MPK_E_IO);
    assert_string_equal(err.msg, want);
    assert_string_equal(err.where, "shard-x");
    /* a bad fd */
    mpk_io_req badfd = {.fd = 1000000, .offset = 0, .buf = dst, .len = 4};
    assert_int_equal(mpk_io_submit(io, &badfd, 1, &err), MPK_E_IO);
    assert_int_equal(err.sys_errno, 9 /* EBADF */);
    close(fd);
    mpk_io_free(io);
    free(dst);
    free(src);
    free(path);
    tu_rmrf(dir);
}

static void test_io_pread(void **state)
{
    (void)state;
    run_io_engine(MPK_IO_PREAD);
}

static void test_io_uring(void **state)
{
    (void)state;
    run_io_engine(MPK_IO_URING);
}

static void test_io_tuned_backend(void **state)
{
    (void)state;
    mpk_error err = {0};
    mpk_io *io;
    mpk_tuning t;
    mpk_tuning_init(&t);
    t.io = MPK_IO_PREAD; /* the process's choice (moepack --io-engine pread) */
    mpk_tune(&t);
    assert_int_equal(mpk_io_create(MPK_IO_AUTO, 4, 4096, &io, &err), MPK_OK);
    assert_int_equal(mpk_io_backend_of(io), MPK_IO_PREAD);
    mpk_io_free(io);
    mpk_tune(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_io_pread),
        cmocka_unit_test(test_io_uring),
        cmocka_unit_test(test_io_tuned_backend),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
