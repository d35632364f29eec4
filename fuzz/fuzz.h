/* fuzz.h — the libFuzzer entry point every target defines. Built with -Dlibfuzzer=true (clang)
 * the whole project is instrumented (-fsanitize=fuzzer-no-link) and libFuzzer drives it;
 * otherwise driver.c's main runs each file named on the command line, and every prefix of it,
 * as a regression test (the corpora under fuzz/corpus, run by `meson test`). */
#ifndef MPK_FUZZ_H
#define MPK_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A failed invariant: abort (libFuzzer saves the input; the driver's test fails). */
#define FUZZ_CHECK(cond)  \
    do {                  \
        if (!(cond))      \
            abort();      \
    } while (0)

#endif
