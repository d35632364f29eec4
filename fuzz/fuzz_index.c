/* fuzz_index.c — model.safetensors.index.json text through the index parser. Accepted: every
 * shard name is a plain file name, every tensor listed once. */
#include "fuzz.h"
#include "mpk_formats.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mpk_arena *a = NULL;
    const char **names, **files;
    size_t n;
    uint64_t total;
    mpk_error err = {0};
    if (mpk_index_parse((const char *)data, size, "fuzz", &a, &names, &files, &n, &total, &err) == MPK_OK) {
        for (size_t i = 0; i < n; i++)
            FUZZ_CHECK(files[i][0] && !strchr(files[i], '/') && !strstr(files[i], ".."));
        mpk_arena_free(a);
    } else {
        FUZZ_CHECK(err.code != MPK_OK && err.msg[0]);
    }
    return 0;
}
