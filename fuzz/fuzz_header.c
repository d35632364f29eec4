/* fuzz_header.c — a whole .safetensors file through the strict parser. An accepted file's
 * tensors tile the data section from 0; a refused one carries a code and a message. */
#include "fuzz.h"
#include "mpk_formats.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mpk_st_header *h = NULL;
    mpk_error err = {0};
    if (mpk_st_parse(data, size, "fuzz", &h, &err) == MPK_OK) {
        uint64_t pos = 0;
        for (size_t i = 0; i < h->n_tensors; i++) {
            uint64_t nb;
            FUZZ_CHECK(h->tensors[i].begin == pos && h->tensors[i].end >= pos);
            FUZZ_CHECK(mpk_tensor_nbytes(h->tensors[i].dtype, h->tensors[i].shape, h->tensors[i].ndim,
                                         &nb) == MPK_OK && nb == h->tensors[i].end - pos);
            pos = h->tensors[i].end;
        }
        FUZZ_CHECK(pos == h->data_size && h->data_start + h->data_size == size);
        mpk_st_header_free(h);
    } else {
        FUZZ_CHECK(err.code != MPK_OK && err.msg[0]);
    }
    return 0;
}
