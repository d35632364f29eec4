/* fuzz_record.c — a packed checkpoint's source record (moepack.source.zst, lib/source.c) through
 * the loader unpack uses. The first byte picks the form: 'Z', the rest is the file as it is (a
 * zstd frame, or not); anything else, the rest is the JSON document, compressed here first, so
 * that the fuzzer works on the record's fields rather than on zstd's checks. Accepted: every file
 * parsed, no two of one name, none of a name that would replace another file of the output, and
 * every tensor mapped to a file that holds it; refused: a code and a message. */
#define _GNU_SOURCE
#include "fuzz.h"
#include "lib_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

static void check_layout(const mpk_layout *l)
{
    size_t recorded = 0, mapped = 0;
    for (size_t f = 0; f < l->n_files; f++) {
        FUZZ_CHECK(l->files[f] && l->parsed[f] && !mpk_layout_name_taken(l->files[f], l->index_name));
        for (size_t g = 0; g < f; g++)
            FUZZ_CHECK(strcmp(l->files[f], l->files[g]) != 0);
        for (size_t k = 0; k < l->parsed[f]->n_tensors; k++) {
            const char *t = l->parsed[f]->tensors[k].name;
            size_t at;
            FUZZ_CHECK(mpk_strmap_get(&l->file_of, t, strlen(t), &at) && at == f);
            recorded++;
        }
    }
    for (size_t i = 0; i < l->file_of.cap; i++)
        mapped += l->file_of.keys[i] != NULL;
    FUZZ_CHECK(mapped == recorded);
    FUZZ_CHECK(!l->index_name || !mpk_layout_name_taken(l->index_name, NULL));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char dir[] = "/tmp/mpk-fuzz-record-XXXXXX";
    if (!mkdtemp(dir))
        return 0;
    char path[64];
    snprintf(path, sizeof path, "%s/%s", dir, MPK_SOURCE_NAME);
    const void *body = data + 1;
    size_t blen = size - 1;
    void *z = NULL;
    if (data[0] != 'Z') {
        size_t cap = ZSTD_compressBound(blen);
        z = malloc(cap ? cap : 1);
        FUZZ_CHECK(z);
        blen = ZSTD_compress(z, cap, body, blen, 1);
        FUZZ_CHECK(!ZSTD_isError(blen));
        body = z;
    }
    FILE *f = fopen(path, "wb");
    FUZZ_CHECK(f && fwrite(body, 1, blen, f) == blen && fclose(f) == 0);
    free(z);
    mpk_layout *l = NULL;
    mpk_error err = {0};
    if (mpk_source_load(dir, &l, &err) == MPK_OK) {
        check_layout(l);
        mpk_layout_free(l);
    } else {
        FUZZ_CHECK(!l && err.code != MPK_OK && err.msg[0]);
    }
    unlink(path);
    rmdir(dir);
    return 0;
}
