/* fuzz_st.c — fuzz target over mpk_st_parse and mpk_index_parse.
 * Built with -fsanitize=fuzzer when -Dlibfuzzer=true (clang); otherwise a standalone main
 * runs every file given on the command line (the seed corpus) as a regression test. */
#include "mpk_formats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mpk_st_header *h = NULL;
    mpk_error err;
    if (mpk_st_parse(data, size, "fuzz", &h, &err) == MPK_OK) {
        /* invariants of an accepted file */
        uint64_t pos = 0;
        for (size_t i = 0; i < h->n_tensors; i++) {
            if (h->tensors[i].begin != pos || h->tensors[i].end < pos)
                abort();
            pos = h->tensors[i].end;
        }
        if (pos != h->data_size || h->data_start + h->data_size != size)
            abort();
        mpk_st_header_free(h);
    } else if (err.code == MPK_OK || !err.msg[0]) {
        abort(); /* every failure carries a code and a message */
    }
    mpk_arena *a = NULL;
    const char **n, **f;
    size_t cnt;
    uint64_t total;
    if (mpk_index_parse((const char *)data, size, "fuzz", &a, &n, &f, &cnt, &total, &err) == MPK_OK)
        mpk_arena_free(a);
    return 0;
}

#ifndef MPK_LIBFUZZER
int main(int argc, char **argv)
{
    int ran = 0;
    for (int i = 1; i < argc; i++) {
        FILE *fp = fopen(argv[i], "rb");
        if (!fp) {
            perror(argv[i]);
            return 1;
        }
        fseek(fp, 0, SEEK_END);
        long n = ftell(fp);
        fseek(fp, 0, SEEK_SET);
        unsigned char *buf = malloc((size_t)n + 1);
        if (fread(buf, 1, (size_t)n, fp) != (size_t)n) {
            fclose(fp);
            return 1;
        }
        fclose(fp);
        LLVMFuzzerTestOneInput(buf, (size_t)n);
        /* every truncation of the input too: the parser must never read past the end */
        for (long k = 0; k < n && k < 4096; k += 1 + k / 64)
            LLVMFuzzerTestOneInput(buf, (size_t)k);
        free(buf);
        ran++;
    }
    printf("fuzz corpus: %d inputs ran clean\n", ran);
    return ran > 0 ? 0 : 1;
}
#endif
