/* verify_internal.h — helpers shared by hash.c and verify.c. */
#ifndef MPK_VERIFY_INTERNAL_H
#define MPK_VERIFY_INTERNAL_H

#include "mpk_verify.h"

#include <errno.h>

/* XXH3-128 of a tensor's bytes, read through buf (16 MiB). */
mpk_status vfy_hash_tensor(const mpk_ckpt *c, const mpk_ckpt_tensor *t, char *buf, mpk_hash128 *out,
                           mpk_error *err);
mpk_hash128 vfy_digest(const mpk_tensor_hash *t, size_t n);
/* Appends a record (differs = kind < MPK_DIFF_COUNT); NULL on allocation failure. */
mpk_tensor_cmp *vfy_add(mpk_cmp_report *r, const char *name, mpk_diff_kind kind, const char *detail);

#endif
