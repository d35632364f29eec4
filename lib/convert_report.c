/* convert_report.c — the public API's front: a conversion's report (the JSON document and the
 * text summary), written by mpk_convert (convert.c) from the plan and the executor's figures. */
#include "lib_internal.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* "passed_unknown": what MPK_CONVERT_PASS_UNKNOWN let through unconverted, [{name, why}]. */
void mpk_lib_unknown_json(cJSON *o, const mpk_plan *p)
{
    cJSON *a = cJSON_AddArrayToObject(o, "passed_unknown");
    for (size_t i = 0; a && i < p->n_unknown; i++) {
        cJSON *e = cJSON_CreateObject();
        if (!e || !cJSON_AddItemToArray(a, e)) {
            cJSON_Delete(e);
            return;
        }
        cJSON_AddStringToObject(e, "name", p->unknown[i].name);
        cJSON_AddStringToObject(e, "why", p->unknown[i].why);
    }
}

mpk_status mpk_lib_convert_report(const mpk_convert_req *r, const mpk_plan *p, const mpk_exec_stats *st,
                                  mpk_report **out, mpk_error *err)
{
    if (!out)
        return MPK_OK;
    mpk_report *rep = mpk_report_new();
    if (!rep)
        MPK_FAIL(err, MPK_E_NOMEM, r->dst, "out of memory");
    double gbs = st->seconds > 0 ? (double)st->bytes_out / st->seconds / 1e9 : 0;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "source", r->src);
    cJSON_AddStringToObject(o, "destination", r->dst);
    struct stat sst; /* a single-file checkpoint converted as its directory (open_src) */
    const char *src_dir = p->src->is_dir && stat(r->src, &sst) == 0 && S_ISREG(sst.st_mode) ? p->src->dir : NULL;
    if (src_dir)
        cJSON_AddStringToObject(o, "source_directory", src_dir);
    cJSON_AddStringToObject(o, "preset", p->spec->name);
    cJSON_AddStringToObject(o, "direction", p->spec->reversed ? "unpack" : "pack");
    cJSON_AddBoolToObject(o, "reversed", p->spec->reversed);
    cJSON_AddNumberToObject(o, "tensors_in", (double)st->tensors_in);
    cJSON_AddNumberToObject(o, "tensors_out", (double)st->tensors_out);
    cJSON_AddNumberToObject(o, "targets_built", (double)(p->n_outs - p->n_pass));
    cJSON_AddNumberToObject(o, "passed_through", (double)p->n_pass);
    mpk_lib_unknown_json(o, p);
    cJSON_AddNumberToObject(o, "bytes", (double)st->bytes_out);
    cJSON_AddNumberToObject(o, "shards", (double)p->n_shards);
    cJSON_AddNumberToObject(o, "seconds", st->seconds);
    cJSON_AddNumberToObject(o, "gb_per_s", gbs);
    cJSON_AddNumberToObject(o, "peak_rss_bytes", (double)st->peak_rss_kib * 1024);
    cJSON_AddNumberToObject(o, "threads", st->threads);
    cJSON_AddBoolToObject(o, "copy_file_range", st->used_copy_range);
    cJSON_AddNumberToObject(o, "spliced_bytes", (double)st->spliced_bytes);
    cJSON_AddNumberToObject(o, "bounced_bytes", (double)st->bounced_bytes);
    cJSON_AddNumberToObject(o, "direct_bytes", (double)st->direct_bytes);
    cJSON *side = cJSON_AddObjectToObject(o, "other_files");
    cJSON_AddNumberToObject(side, "files", (double)st->side.files);
    cJSON_AddNumberToObject(side, "directories", (double)st->side.dirs);
    cJSON_AddNumberToObject(side, "symlinks", (double)st->side.links);
    cJSON_AddNumberToObject(side, "bytes", (double)st->side.bytes);
    cJSON_AddNumberToObject(side, "skipped", (double)st->side.skipped);
    cJSON_AddBoolToObject(o, "resumed", st->resumed);
    cJSON_AddNumberToObject(o, "shards_kept", (double)st->shards_kept);
    cJSON_AddNumberToObject(o, "stale_removed", (double)st->stale_removed);
    mpk_lib_ranks_json(o, st->ranks, st->n_ranks);
    mpk_status s = mpk_report_set_json(rep, "moepack.convert/1", o, err);
    char *buf, hb[32], hr[32];
    size_t len;
    FILE *f = s == MPK_OK ? mpk_report_begin_text(rep, &buf, &len) : NULL;
    if (f) {
        fprintf(f, "%s -> %s (preset %s%s): %zu tensors in, %zu out (%zu built, %zu passed "
                "through), %s in %zu shard(s), %.2f s, %.2f GB/s, peak RSS %s\n",
                r->src, r->dst, p->spec->name, p->spec->reversed ? ", reversed" : "", st->tensors_in,
                st->tensors_out, p->n_outs - p->n_pass, p->n_pass, mpk_human_bytes(st->bytes_out, hb, sizeof hb),
                p->n_shards, st->seconds, gbs, mpk_human_bytes((uint64_t)st->peak_rss_kib * 1024, hr, sizeof hr));
        if (src_dir)
            fprintf(f, "SRC is a file: converted its directory %s\n", src_dir);
        fprintf(f, "other files of SRC: %zu file(s) (%s), %zu director%s, %zu symlink(s) copied, %zu skipped\n",
                st->side.files, mpk_human_bytes(st->side.bytes, hb, sizeof hb), st->side.dirs,
                st->side.dirs == 1 ? "y" : "ies", st->side.links, st->side.skipped);
        if (p->n_unknown)
            fprintf(f, "passed through unconverted (as asked: pass unknown), not understood by the spec: %zu tensor(s)\n",
                    p->n_unknown);
        for (size_t i = 0; i < p->n_unknown && i < 20; i++)
            fprintf(f, "  %s: %s\n", p->unknown[i].name, p->unknown[i].why);
        if (p->n_unknown > 20)
            fprintf(f, "  ... %zu more (the JSON report lists them all)\n", p->n_unknown - 20);
        if (st->resumed)
            fprintf(f, "resumed an interrupted run: %zu of %zu shard(s) kept after their hashes checked out\n",
                    st->shards_kept, p->n_shards);
        mpk_lib_ranks_text(f, st->ranks, st->n_ranks);
    }
    if (s == MPK_OK)
        s = mpk_report_end_text(rep, f, &buf, err);
    if (s != MPK_OK) {
        mpk_report_free(rep);
        return s;
    }
    return mpk_report_give(rep, out);
}
