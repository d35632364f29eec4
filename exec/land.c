/* land.c — the output side of a run: what identifies it (the plan digest its staging directory
 * carries), the output shard files in the staging directory and their layout, resuming a dead
 * run's shards, and landing: the shards closed, the index, config and SRC's other files written,
 * the caller's finish hook, the commit into place (stage.c).
 */
#define _GNU_SOURCE
#include "engine_internal.h"
#include "mpk_config.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <linux/magic.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

/* Top-level names of SRC that are not copied beside the output: the checkpoint's own shards,
 * index and manifest (the output has its own), config.json when rewritten, other
 * .safetensors files (not part of the checkpoint: a consolidated copy would double the
 * output), and a git repository's metadata. */
typedef struct {
    const mpk_plan *p;
    const mpk_exec_opts *o;
    mpk_side_stats *st;
} side_ctx;

static bool side_skip(const char *n, void *ctx)
{
    side_ctx *sc = ctx;
    size_t l = strlen(n);
    if (strcmp(n, "model.safetensors.index.json") == 0 || strcmp(n, "moepack.manifest.json") == 0 ||
        (sc->o->config_json && strcmp(n, "config.json") == 0))
        return true;
    for (size_t i = 0; i < sc->p->src->n_shards; i++) {
        const char *file = strrchr(sc->p->src->shards[i].path, '/'); /* NAME.mpkz of a compressed one */
        if (strcmp(n, sc->p->src->shards[i].name) == 0 || (file && strcmp(n, file + 1) == 0))
            return true;
    }
    for (const char *const *k = sc->o->skip_names; k && *k; k++)
        if (strcmp(n, *k) == 0)
            return true;
    if (mpk_stage_skip_marker(sc->p->src->dir, n, sc->o, sc->st))
        return true;
    if ((l > 12 && strcmp(n + l - 12, ".safetensors") == 0) || strcmp(n, ".git") == 0) {
        mpk_exec_warn(sc->o, "skipped %s/%s: %s", sc->p->src->dir, n,
                      n[0] == '.' ? "a git repository's metadata (the output is not a clone)"
                                  : "a .safetensors file that is not part of the checkpoint");
        sc->st->skipped++;
        return true;
    }
    return false;
}

static mpk_status copy_side_files(const mpk_plan *p, const char *tmp, const mpk_exec_opts *o,
                                  mpk_side_stats *st, mpk_error *err)
{
    if (o->config_json) {
        char *to = mpk_path_join(tmp, "config.json");
        mpk_status s = to ? mpk_write_file(to, o->config_json, strlen(o->config_json), !o->no_fsync, err)
                          : mpk_error_set(err, MPK_E_NOMEM, 0, "exec", "out of memory");
        free(to);
        MPK_TRY(s);
        st->files++; /* counted as the copy it replaces is: the same count for pack, unpack, --dequantize */
        st->bytes += strlen(o->config_json);
    }
    if (!p->src->is_dir)
        return MPK_OK;
    side_ctx sc = {p, o, st};
    return mpk_copy_tree(p->src->dir, tmp, side_skip, &sc, o, st, err);
}

/* What identifies a run (the staging directory's digest): a resumed run continues only a run
 * with the same. moepack, the spec, the source files (with ids: device, inode, mtime and ctime
 * too, which differ between the hosts of an MPI job), the outputs and their layout, the
 * metadata and config written. The ctime is there for an edit in place that puts the size and
 * mtime back (rsync --inplace -t, a restore with utimensat): no call can set it, so a source
 * written since the dead run makes another plan, whose staging directory is removed as not
 * resumable and the run starts afresh. */
uint64_t ex_plan_digest(const mpk_plan *p, const mpk_exec_opts *o, bool ids)
{
    XXH3_state_t *x = XXH3_createState();
    if (!x)
        return 0;
    XXH3_64bits_reset(x);
#define ADD(ptr, len) XXH3_64bits_update(x, (ptr), (len))
#define ADDS(str) ADD((str) ? (str) : "", (str) ? strlen(str) + 1 : 1)
    ADDS(MPK_VERSION);
    ADDS(p->spec->name);
    ADD(&p->spec->reversed, sizeof p->spec->reversed);
    char *js = p->spec->json ? cJSON_PrintUnformatted(p->spec->json) : NULL;
    ADDS(js);
    free(js);
    for (size_t i = 0; i < p->src->n_shards; i++) {
        struct stat st = {0};
        fstat(p->src->shards[i].fd, &st);
        uint64_t v[7] = {ids ? (uint64_t)st.st_dev : 0,           ids ? (uint64_t)st.st_ino : 0,
                         (uint64_t)st.st_size,                     ids ? (uint64_t)st.st_mtim.tv_sec : 0,
                         ids ? (uint64_t)st.st_mtim.tv_nsec : 0,   ids ? (uint64_t)st.st_ctim.tv_sec : 0,
                         ids ? (uint64_t)st.st_ctim.tv_nsec : 0};
        ADDS(p->src->shards[i].path);
        ADD(v, sizeof v);
    }
    for (size_t i = 0; i < p->n_outs; i++) {
        const mpk_plan_out *po = &p->outs[i];
        int64_t v[4 + MPK_MAX_DIMS] = {po->meta.dtype, po->meta.ndim, po->shard, po->quant};
        memcpy(v + 4, po->meta.shape, sizeof po->meta.shape);
        ADDS(po->name);
        ADD(v, sizeof v);
        ADD(&po->nbytes, sizeof po->nbytes);
    }
    uint64_t v[3] = {p->n_shards, (uint64_t)p->fp8_block, p->n_views};
    ADD(v, sizeof v);
    for (size_t i = 0; i < o->n_metadata; i++) {
        ADDS(o->metadata[i].key);
        ADDS(o->metadata[i].value);
    }
    ADDS(o->config_json);
#undef ADD
#undef ADDS
    uint64_t d = XXH3_64bits_digest(x);
    XXH3_freeState(x);
    return d;
}

/* An adopted directory keeps only what its journal says is complete (checked later). */
void ex_clean_adopted(const mpk_stage *stage)
{
    DIR *d = opendir(stage->tmp);
    struct dirent *e;
    uint64_t dg;
    while (d && (e = readdir(d))) {
        const char *n = e->d_name;
        if ((n[0] == '.' && (!n[1] || (n[1] == '.' && !n[2]))) || mpk_stage_is_marker(n) ||
            mpk_stage_journal_find(stage, n, &dg))
            continue;
        char *path = mpk_path_join(stage->tmp, n);
        if (path)
            mpk_rmrf(path);
        free(path);
    }
    if (d)
        closedir(d);
}

/* A shard an interrupted run recorded as complete is kept when its outputs hash to the
 * digest it recorded (c->hashes filled for them); else it is redone. */
static bool shard_checks_out(run_ctx *c, size_t sh, uint64_t want)
{
    if (!c->hashes)
        return false;
    char *buf = mpk_alloc(HASH_CHUNK);
    mpk_error ig;
    bool ok = buf != NULL;
    for (size_t i = 0; ok && i < c->p->n_outs; i++)
        if (c->p->outs[i].shard == (int)sh)
            ok = ex_hash_output(c, i, buf, &ig) == MPK_OK;
    free(buf);
    return ok && ex_shard_digest(c->p, sh, c->hashes) == want;
}

/* The data start (modulo a page) that puts the most copied bytes at the same offset within a
 * page as their source (whatever the copy mode: the output is the same); -1 for none. */
static int best_phase(job *j, size_t sh)
{
    uint64_t votes[4096 / 8] = {0}, best = 0;
    int phase = -1;
    for (size_t i = 0; i < j->p->n_outs; i++)
        if (j->p->outs[i].shard == (int)sh && j->c.nodes[i]->pure)
            ex_each_source_range(j->c.nodes[i], 0, j->p->outs[i].nbytes, j->infos[sh][j->c.slot[i]].begin,
                                 ex_phase_vote, votes);
    for (int k = 0; k < 4096 / 8; k++)
        if (votes[k] > best) {
            best = votes[k];
            phase = k * 8;
        }
    return phase;
}

/* Output shard sh: its tensors laid out (plan outputs mapped to their place in it), its file
 * created in the staging directory, or a dead run's file taken over when resuming. */
/* Output shard sh of a recorded layout with its exact header: created with those bytes, plan
 * outputs mapped to the recorded tensors. */
static mpk_status open_exact_shard(job *j, size_t sh)
{
    const mpk_plan *p = j->p;
    const mpk_layout *l = p->layout;
    const mpk_st_header *h = l->parsed[sh];
    if (!(j->infos[sh] = mpk_calloc(h->n_tensors + 1, sizeof **j->infos)))
        return ex_nomem(j);
    memcpy(j->infos[sh], h->tensors, h->n_tensors * sizeof *h->tensors);
    for (size_t i = 0; i < p->n_outs; i++)
        if (p->outs[i].shard == (int)sh)
            j->c.slot[i] = (size_t)mpk_st_header_find(h, p->outs[i].name);
    char *path = mpk_path_join(j->stage.tmp, l->files[sh]);
    if (path && j->stage.adopted) /* a resumed run writes exact files again from scratch */
        unlink(path);
    mpk_status s = !path              ? ex_nomem(j)
                   : j->stage.attached ? mpk_st_out_reopen_exact(path, l->headers[sh], l->header_len[sh], j->infos[sh],
                                                                 h->n_tensors, h->data_size, &j->c.shards[sh], j->err)
                                       : mpk_st_out_create_exact(path, l->headers[sh], l->header_len[sh], j->infos[sh],
                                                                 h->n_tensors, h->data_size, &j->c.shards[sh], j->err);
    free(path);
    return s;
}

mpk_status ex_open_shard(job *j, size_t sh)
{
    const mpk_plan *p = j->p;
    const mpk_exec_opts *o = j->o;
    if (p->layout && p->layout->parsed && p->layout->parsed[sh])
        return open_exact_shard(j, sh);
    size_t n = 0;
    for (size_t i = 0; i < p->n_outs; i++)
        n += p->outs[i].shard == (int)sh;
    if (!(j->infos[sh] = mpk_calloc(n + 1, sizeof **j->infos)))
        return ex_nomem(j);
    n = 0;
    for (size_t i = 0; i < p->n_outs; i++)
        if (p->outs[i].shard == (int)sh) {
            mpk_tensor_info *t = &j->infos[sh][n++];
            t->name = p->outs[i].name;
            t->dtype = p->outs[i].meta.dtype;
            t->ndim = p->outs[i].meta.ndim;
            memcpy(t->shape, p->outs[i].meta.shape, sizeof t->shape);
        }
    char *hdr;
    size_t hlen;
    MPK_TRY(mpk_st_layout(j->infos[sh], n, o->metadata, o->n_metadata, &hdr, &hlen, NULL, j->err));
    free(hdr);
    mpk_strmap m;
    if (mpk_strmap_init(&m, n) != MPK_OK)
        return ex_nomem(j);
    for (size_t k = 0; k < n; k++)
        mpk_strmap_put(&m, j->infos[sh][k].name, strlen(j->infos[sh][k].name), k, NULL);
    for (size_t i = 0; i < p->n_outs; i++)
        if (p->outs[i].shard == (int)sh)
            mpk_strmap_get(&m, p->outs[i].name, strlen(p->outs[i].name), &j->c.slot[i]);
    mpk_strmap_free(&m);
    int phase = best_phase(j, sh);
    char name[64];
    mpk_plan_shard_name(p, sh, name, sizeof name);
    char *path = mpk_path_join(j->stage.tmp, name);
    uint64_t dg;
    mpk_error ig;
    if (path && j->stage.adopted && mpk_stage_journal_find(&j->stage, name, &dg)) {
        j->reopened[sh] = mpk_st_out_reopen(path, j->infos[sh], n, o->metadata, o->n_metadata, phase,
                                            &j->c.shards[sh], &ig) == MPK_OK;
        if (!j->reopened[sh])
            unlink(path);
    }
    mpk_status s = !path ? ex_nomem(j)
                   : j->reopened[sh] ? MPK_OK
                   : j->stage.attached ? mpk_st_out_reopen(path, j->infos[sh], n, o->metadata, o->n_metadata, phase,
                                                           &j->c.shards[sh], j->err)
                                       : mpk_st_out_create(path, j->infos[sh], n, o->metadata, o->n_metadata, phase,
                                                           &j->c.shards[sh], j->err);
    free(path);
    return s;
}

/* Resuming: shards the dead run completed are kept once they check out, their units counted
 * as done; the others are written again from scratch. Then what is left to complete. */
mpk_status ex_resume_shards(job *j, mpk_exec_stats *stats)
{
    const mpk_plan *p = j->p;
    run_ctx *c = &j->c;
    for (size_t sh = 0; sh < p->n_shards; sh++) {
        if (!j->reopened[sh])
            continue;
        uint64_t want = 0;
        char name[64];
        mpk_plan_shard_name(p, sh, name, sizeof name);
        mpk_stage_journal_find(&j->stage, name, &want);
        if (shard_checks_out(c, sh, want)) {
            stats->shards_kept++;
            for (size_t u = c->q[sh].lo; u < c->q[sh].hi; u++) {
                atomic_fetch_add(&c->units_done, 1);
                atomic_fetch_add(&c->done_bytes, c->units[u].len);
            }
            atomic_store(&c->q[sh].next, c->q[sh].hi);
            atomic_store(&c->q[sh].turn, c->q[sh].hi);
            continue;
        }
        mpk_tensor_info *ti = c->shards[sh]->tensors;
        size_t nt = c->shards[sh]->n_tensors;
        uint64_t ds = c->shards[sh]->data_start;
        char *path = mpk_strndup(c->shards[sh]->path, strlen(c->shards[sh]->path));
        mpk_st_out_close(c->shards[sh], false, NULL);
        c->shards[sh] = NULL;
        j->reopened[sh] = false;
        if (path)
            unlink(path);
        /* the same layout again (the phase is the one that gave data_start) */
        mpk_status s = !path ? ex_nomem(j)
                             : mpk_st_out_create(path, ti, nt, j->o->metadata, j->o->n_metadata, (int)(ds % 4096),
                                                 &c->shards[sh], j->err);
        free(path);
        MPK_TRY(s);
    }
    for (size_t i = 0; c->left && i < p->n_outs; i++) {
        const mpk_plan_out *po = &p->outs[i];
        if (j->reopened[po->shard]) {
            atomic_store(&c->left[i], 0);
            continue;
        }
        if (c->sh_left)
            atomic_fetch_add(&c->sh_left[po->shard], 1);
        if (!po->nbytes) /* no unit will complete it: complete from the start */
            c->hq[c->hq_tail++] = i;
    }
    return MPK_OK;
}

/* model.safetensors.index.json of a sharded output. */
static mpk_status write_index(job *j)
{
    const mpk_plan *p = j->p;
    const char **names = mpk_calloc(p->n_outs + 1, sizeof *names);
    const char **files = mpk_calloc(p->n_outs + 1, sizeof *files);
    char(*fn)[64] = mpk_calloc(p->n_shards, 64);
    mpk_status s;
    if (names && files && fn) {
        for (size_t sh = 0; sh < p->n_shards; sh++)
            mpk_plan_shard_name(p, sh, fn[sh], 64);
        for (size_t i = 0; i < p->n_outs; i++) {
            names[i] = p->outs[i].name;
            files[i] = fn[p->outs[i].shard];
        }
        s = mpk_index_write(j->stage.tmp, names, files, p->n_outs, p->total_bytes, !j->o->no_fsync, j->err);
    } else {
        s = ex_nomem(j);
    }
    free(names);
    free(files);
    free(fn);
    return s;
}

/* Closes the shards, writes the index, SRC's other files and the caller's (the manifest), and
 * lands the staging directory once the source has been checked again (written in place or
 * renamed while we read it). */
/* Closes the shard files, fsyncing those this process wrote into (all of them unless an MPI
 * rank other than 0: rank 0 wrote every header). */
mpk_status ex_close_shards(job *j)
{
    mpk_status s = MPK_OK;
    for (size_t sh = 0; sh < j->p->n_shards; sh++) {
        mpk_st_out *so = j->c.shards[sh];
        if (j->c.dio) { /* every block in (its carry empty), then the page cache's part fsynced */
            mpk_status d = ex_direct_close(&j->c.dio[sh], so->path, s == MPK_OK ? j->err : NULL);
            s = s == MPK_OK ? d : s;
        }
        j->c.shards[sh] = NULL;
        bool wrote = !j->c.touched || j->c.touched[sh] || !j->stage.attached;
        mpk_status c = mpk_st_out_close(so, !j->o->no_fsync && wrote, s == MPK_OK ? j->err : NULL);
        s = s == MPK_OK ? c : s;
    }
    return s;
}

mpk_status ex_land(job *j, const char *src_path, mpk_exec_stats *stats)
{
    const mpk_plan *p = j->p;
    MPK_TRY(ex_close_shards(j));
    const mpk_layout *l = p->layout;
    if (l && l->index_text) {
        char *text = mpk_strndup(l->index_text, l->index_len);
        MPK_TRY(mpk_write_text_in(j->stage.tmp, l->index_name, text, !j->o->no_fsync, j->err));
    } else if (l ? l->index_name != NULL : p->n_shards > 1) {
        MPK_TRY(write_index(j));
    }
    MPK_TRY(copy_side_files(p, j->stage.tmp, j->o, &stats->side, j->err));
    if (j->o->finish)
        MPK_TRY(j->o->finish(j->o->finish_ctx, j->stage.tmp, j->c.hashes, j->c.hashes ? p->n_outs : 0, j->err));
    MPK_TRY(mpk_ckpt_check_unchanged(p->src, j->err));
    MPK_TRY(mpk_overlap_check(src_path, p->src, j->dst, j->err));
    /* a cancel (Ctrl-C, a signal) that came after the last unit is still one: DST stays as it was */
    if (j->o->cancel && *j->o->cancel)
        MPK_FAIL(j->err, MPK_E_CANCELLED, j->dst, "cancelled before the output was moved into place; nothing was "
                 "written there");
    return mpk_stage_commit(&j->stage, src_path, j->o->force, j->err);
}
