/* ckptutil.h — checkpoint helpers shared by the converter-level test programs. */
#ifndef MPK_CKPTUTIL_H
#define MPK_CKPTUTIL_H

#include "mpk_formats.h"

/* malloc'd bytes of tensor name (fails the test when absent); *out gets the tensor. */
char *cu_read_tensor(const mpk_ckpt *c, const char *name, const mpk_ckpt_tensor **out);
/* Every tensor of a is in b with the same dtype, shape and bytes, and the counts agree. */
void cu_assert_same_ckpt(const char *pa, const char *pb);
bool cu_exists(const char *path);

#endif
