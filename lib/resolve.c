/* resolve.c — the public API's front: the public face of the Hugging Face cache lookup
 * (formats/hub.c). */
#include "lib_internal.h"

#include <stdlib.h>

mpk_status mpk_resolve_source(const char *src, const char *revision, char **out, mpk_error *err)
{
    if (!out)
        MPK_FAIL(err, MPK_E_USAGE, "request", "no place for the result (out is NULL)");
    *out = NULL;
    if (!src || !src[0])
        MPK_FAIL(err, MPK_E_USAGE, "request", "no source (NULL or an empty path)");
    if (revision && !revision[0])
        MPK_FAIL_ABOUT(err, MPK_FIELD_REVISION, MPK_E_USAGE, "request", "an empty revision");
    return mpk_hub_resolve(src, revision, out, err);
}
