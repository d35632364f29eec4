/* fuzz_mpkz.c — a compressed shard container (formats/MPKZ.md) through the reader: written to a
 * temporary file and decompressed. An accepted container gives a file whose header parses and
 * whose size is the header plus the data section; a refused one carries a code and a message. */
#define _GNU_SOURCE
#include "fuzz.h"
#include "mpk_formats.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char in[] = "/tmp/mpk-fuzz-mpkz-XXXXXX", out[64];
    int fd = mkstemp(in);
    if (fd < 0)
        return 0;
    FUZZ_CHECK(write(fd, data, size) == (ssize_t)size);
    close(fd);
    snprintf(out, sizeof out, "%s.out", in);
    mpk_error err = {0};
    if (mpk_mpkz_decompress(in, out, 2, NULL, &err) == MPK_OK) {
        mpk_st_header *h = NULL;
        struct stat st;
        FUZZ_CHECK(mpk_st_read_header(out, &h, &err) == MPK_OK && stat(out, &st) == 0);
        FUZZ_CHECK((uint64_t)st.st_size == h->data_start + h->data_size);
        mpk_st_header_free(h);
        unlink(out);
    } else {
        FUZZ_CHECK(err.code != MPK_OK && err.msg[0] && access(out, F_OK) != 0);
    }
    unlink(in);
    return 0;
}
