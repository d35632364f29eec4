/* verify_internal.h — helpers shared by verify.c and verify_manifest.c. */
#ifndef MPK_VERIFY_INTERNAL_H
#define MPK_VERIFY_INTERNAL_H

#include "mpk_verify.h"

#include <errno.h>

/* Appends a record (differs = kind < MPK_DIFF_COUNT); NULL on allocation failure. */
mpk_tensor_cmp *vfy_add(mpk_cmp_report *r, const char *name, mpk_diff_kind kind, const char *detail);

#endif
