/* ckpt.c — checkpoints: a lone file or a directory with an optional shard index. */
#define _GNU_SOURCE
#include "formats_internal.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define INDEX_NAME MPK_INDEX_NAME
#define SINGLE_NAME "model.safetensors"

/* ---------------------------------------------------------------- checkpoint */

static int cmp_ckpt_tensor(const void *a, const void *b)
{
    return mpk_natural_cmp(((const mpk_ckpt_tensor *)a)->info->name,
                           ((const mpk_ckpt_tensor *)b)->info->name);
}

/* The next shard entry, named, nothing opened. */
static mpk_status shard_entry(mpk_ckpt *c, const char *name, mpk_error *err)
{
    mpk_shard *sh = &c->shards[c->n_shards];
    memset(sh, 0, sizeof *sh);
    sh->fd = -1;
    sh->name = mpk_strndup(name, strlen(name));
    sh->path = mpk_path_join(c->dir, name);
    if (!sh->name || !sh->path) {
        free(sh->name);
        free(sh->path);
        MPK_FAIL(err, MPK_E_NOMEM, name, "out of memory");
    }
    c->n_shards++;
    return MPK_OK;
}

/* A file whose header could not be read (status s): when it does not begin as a safetensors
 * file does (an 8-byte length, then the header's '{'), the error says so, and what the file
 * seems to be, instead of complaining about a header length that was never one; s is kept. */
static mpk_status not_safetensors(int fd, const char *path, mpk_status s, mpk_error *err)
{
    unsigned char b[16] = {0};
    ssize_t n = pread(fd, b, sizeof b, 0);
    if (s == MPK_E_IO || s == MPK_E_NOMEM || n < 0 || (n >= 9 && b[8] == '{'))
        return s;
    const char *what = NULL;
    if (n == 0)
        what = "it is empty";
    else if (n >= 4 && memcmp(b, "PK\x03\x04", 4) == 0)
        what = "a zip archive: a PyTorch .bin/.pt checkpoint (pickle) is one; convert it to safetensors first";
    else if (b[0] == 0x80 && n >= 2 && b[1] >= 2 && b[1] <= 5)
        what = "a Python pickle (a PyTorch .bin checkpoint?); convert it to safetensors first";
    else if (n >= 4 && memcmp(b, "GGUF", 4) == 0)
        what = "a GGUF file";
    else if (n >= 4 && memcmp(b, "\x28\xb5\x2f\xfd", 4) == 0)
        what = "zstd-compressed data";
    else if (n >= 7 && memcmp(b, "version", 7) == 0)
        what = "a Git LFS pointer: the file itself was not downloaded (git lfs pull)";
    else {
        bool text = true;
        for (ssize_t i = 0; i < n && text; i++)
            text = b[i] >= 0x20 || b[i] == '\n' || b[i] == '\r' || b[i] == '\t';
        what = text ? "it begins as text" : "it does not begin with an 8-byte header length and '{'";
    }
    return mpk_error_set(err, s, 0, path, "not a safetensors file (%s)", what);
}

static mpk_status add_shard(mpk_ckpt *c, const char *name, mpk_error *err)
{
    MPK_TRY(shard_entry(c, name, err));
    mpk_shard *sh = &c->shards[c->n_shards - 1];
    /* the shard must resolve inside the directory (no symlink escapes) */
    char rdir[PATH_MAX], rfile[PATH_MAX];
    if (c->is_dir && realpath(c->dir, rdir) && realpath(sh->path, rfile) && !mpk_path_under(rfile, rdir)) {
        /* a Hugging Face cache snapshot's links into its own repo's blobs/ are part of it */
        char *blobs = mpk_hub_blobs_of(rdir);
        bool ok = blobs && mpk_path_under(rfile, blobs);
        free(blobs);
        if (!ok)
            MPK_FAIL(err, MPK_E_INDEX_PATH, sh->path, "shard resolves outside the checkpoint directory (to %s)%s",
                     rfile, strstr(rdir, "/snapshots/") ? ", and not into its Hugging Face cache repo's blobs/" : "");
    }
    /* NAME.safetensors missing, NAME.safetensors.mpkz there: read the compressed shard in place */
    struct stat st;
    char *zpath = access(sh->path, F_OK) != 0 ? mpk_strcat_ext(sh->path, ".mpkz") : NULL;
    if (zpath && access(zpath, F_OK) == 0) {
        free(sh->path);
        sh->path = zpath;
    } else {
        free(zpath);
        zpath = NULL;
    }
    MPK_TRY(mpk_open_regular(sh->path, &sh->fd, &st, err));
    mpk_file_id_of(&st, &sh->id);
    if (!zpath) {
        mpk_status s = mpk_st_read_header_fd(sh->fd, sh->path, &sh->header, &sh->file_size, err);
        return s == MPK_OK ? s : not_safetensors(sh->fd, sh->path, s, err);
    }
    MPK_TRY(mpk_mpkz_open(sh->fd, sh->path, (uint64_t)st.st_size, &sh->z, &sh->header, err));
    sh->file_size = sh->header->data_start + sh->header->data_size; /* the original file's */
    return MPK_OK;
}

char *mpk_strcat_ext(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *p = mpk_alloc(la + lb + 1);
    if (p) {
        memcpy(p, a, la);
        memcpy(p + la, b, lb + 1);
    }
    return p;
}

static mpk_status collect_tensors(mpk_ckpt *c, mpk_error *err)
{
    size_t total = 0;
    for (size_t s = 0; s < c->n_shards; s++)
        total += c->shards[s].header->n_tensors;
    c->tensors = mpk_calloc(total ? total : 1, sizeof *c->tensors);
    if (!c->tensors)
        MPK_FAIL(err, MPK_E_NOMEM, c->dir, "out of memory");
    if (mpk_strmap_init(&c->by_name, total) != MPK_OK)
        MPK_FAIL(err, MPK_E_NOMEM, c->dir, "out of memory");
    for (size_t s = 0; s < c->n_shards; s++) {
        const mpk_st_header *h = c->shards[s].header;
        for (size_t i = 0; i < h->n_tensors; i++) {
            const mpk_tensor_info *t = &h->tensors[i];
            size_t prev;
            if (mpk_strmap_put(&c->by_name, t->name, strlen(t->name), c->n_tensors, &prev))
                MPK_FAIL(err, MPK_E_DUPLICATE_TENSOR, c->shards[s].path,
                         "tensor '%s' is also in %s", t->name,
                         c->shards[c->tensors[prev].shard].name);
            mpk_ckpt_tensor *ct = &c->tensors[c->n_tensors++];
            ct->info = t;
            ct->shard = (uint32_t)s;
            ct->file_offset = h->data_start + t->begin;
            ct->nbytes = t->end - t->begin;
            c->total_bytes += ct->nbytes;
        }
    }
    qsort(c->tensors, c->n_tensors, sizeof *c->tensors, cmp_ckpt_tensor);
    mpk_strmap_free(&c->by_name);
    if (mpk_strmap_init(&c->by_name, c->n_tensors) != MPK_OK)
        MPK_FAIL(err, MPK_E_NOMEM, c->dir, "out of memory");
    for (size_t i = 0; i < c->n_tensors; i++)
        mpk_strmap_put(&c->by_name, c->tensors[i].info->name, strlen(c->tensors[i].info->name), i,
                       NULL);
    return MPK_OK;
}

/* The series of a shard name PREFIX-NNNNN-of-MMMMM.safetensors: PREFIX-*-of-MMMMM in buf
 * (false for a name of another form). */
static bool shard_series(const char *name, char *buf, size_t cap)
{
    const char *of = strstr(name, "-of-"), *d = of;
    if (!of || strcmp(of + 4 + strspn(of + 4, "0123456789"), ".safetensors") != 0 || !isdigit((unsigned char)of[4]))
        return false;
    while (d > name && isdigit((unsigned char)d[-1]))
        d--;
    if (d == of || d == name || d[-1] != '-')
        return false;
    snprintf(buf, cap, "%.*s*%s", (int)(d - name), name, of);
    return true;
}

/* The first dotted component of a tensor name ("model" of "model.layers.0..."), its length. */
static size_t name_root(const char *t)
{
    const char *dot = strchr(t, '.');
    return dot ? (size_t)(dot - t) : strlen(t);
}

/* A NAME.safetensors (or NAME.safetensors.mpkz) at the top of the folder that the index does
 * not name, but that is a shard of this checkpoint: of a listed shard's series
 * (model-00003-of-00003 beside model-00001/2-of-00003), or holding tensors named under the listed
 * tensors' first components ("model.", "lm_head."). Before, such a file's tensors were left out
 * of every conversion (exit 0, the file "skipped"). Other files (a consolidated copy in another
 * naming: Mistral's consolidated.safetensors; moepack.* staging records) stay beside the
 * checkpoint. MPK_E_INDEX_EXTRA naming the index and the file. */
static mpk_status omitted_shards(const mpk_ckpt *c, const char *index_path, const mpk_strmap *listed, mpk_error *err)
{
    DIR *d = opendir(c->dir);
    if (!d)
        return MPK_OK; /* nothing more to see than the index showed */
    mpk_strmap roots = {0}; /* (a put that cannot grow the map under OOM leaves a root out) */
    mpk_status s = MPK_OK;
    if (mpk_strmap_init(&roots, 16) != MPK_OK)
        s = mpk_error_set(err, MPK_E_NOMEM, 0, index_path, "out of memory");
    for (size_t i = 0; i < c->n_tensors && s == MPK_OK; i++)
        mpk_strmap_put(&roots, c->tensors[i].info->name, name_root(c->tensors[i].info->name), i, NULL);
    char buf[600], other[600];
    for (struct dirent *e; s == MPK_OK && (e = readdir(d));) {
        size_t l = strlen(e->d_name), li = l > 5 && strcmp(e->d_name + l - 5, ".mpkz") == 0 ? l - 5 : l;
        size_t at;
        if (li <= 12 || strncmp(e->d_name + li - 12, ".safetensors", 12) != 0 || li >= sizeof buf ||
            strncmp(e->d_name, "moepack.", 8) == 0) /* moepack's staging records: their own rules */
            continue;
        char logical[600];
        snprintf(logical, sizeof logical, "%.*s", (int)li, e->d_name);
        if (mpk_strmap_get(listed, logical, li, &at))
            continue;
        const char *why = NULL, *tensor = NULL;
        size_t n_tensors = 0;
        if (shard_series(logical, buf, sizeof buf))
            for (size_t i = 0; i < c->n_shards && !why; i++)
                if (shard_series(c->shards[i].name, other, sizeof other) && strcmp(buf, other) == 0)
                    why = "a shard of the same series";
        /* else its tensors' names: a file that cannot be read as safetensors is none of ours */
        char *path = mpk_path_join(c->dir, e->d_name);
        int fd = -1;
        struct stat st;
        mpk_st_header *h = NULL;
        mpk_mpkz *z = NULL;
        mpk_error ig;
        if (path && mpk_open_regular(path, &fd, &st, &ig) == MPK_OK &&
            (li == l ? mpk_st_read_header_fd(fd, path, &h, &(uint64_t){0}, &ig)
                     : mpk_mpkz_open(fd, path, (uint64_t)st.st_size, &z, &h, &ig)) == MPK_OK) {
            n_tensors = h->n_tensors;
            for (size_t k = 0; k < h->n_tensors && !tensor; k++)
                if (mpk_strmap_get(&roots, h->tensors[k].name, name_root(h->tensors[k].name), &at) || why)
                    tensor = h->tensors[k].name;
            if (tensor && !why)
                why = "its tensors are named like the listed ones";
        }
        if (why)
            s = mpk_error_set(err, MPK_E_INDEX_EXTRA, 0, index_path, "does not name %s, which is in the checkpoint's "
                              "folder and is one of its shards (%s): its %zu tensor(s)%s%s%s would be left out of "
                              "every conversion; list them in \"weight_map\", or move the file out of the folder",
                              e->d_name, why, n_tensors, tensor ? " ('" : "", tensor ? tensor : "", tensor ? "', ...)" : "");
        mpk_mpkz_close(z);
        mpk_st_header_free(h);
        if (fd >= 0)
            close(fd);
        free(path);
    }
    closedir(d);
    mpk_strmap_free(&roots);
    return s;
}

static mpk_status open_indexed(mpk_ckpt *c, const char *index_path, mpk_error *err)
{
    char *text;
    size_t len;
    MPK_TRY(mpk_read_file(index_path, &text, &len, err));
    mpk_arena *a;
    const char **names, **files;
    size_t n;
    mpk_status s = mpk_index_parse(text, len, index_path, &a, &names, &files, &n,
                                   &c->index_total_size, err);
    free(text);
    if (s != MPK_OK)
        return s;
    c->has_index = true;
    /* unique shard names in order of first appearance */
    mpk_strmap shard_ix = {0};
    c->shards = mpk_calloc(n ? n : 1, sizeof *c->shards);
    if (!c->shards || mpk_strmap_init(&shard_ix, 64) != MPK_OK) {
        s = mpk_error_set(err, MPK_E_NOMEM, 0, index_path, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n && s == MPK_OK; i++) {
        if (!mpk_strmap_put(&shard_ix, files[i], strlen(files[i]), c->n_shards, NULL))
            s = add_shard(c, files[i], err);
    }
    if (s != MPK_OK)
        goto done;
    if ((s = collect_tensors(c, err)) != MPK_OK)
        goto done;
    /* every listed tensor is in the shard the index names */
    for (size_t i = 0; i < n; i++) {
        size_t ti, si;
        mpk_strmap_get(&shard_ix, files[i], strlen(files[i]), &si);
        if (!mpk_strmap_get(&c->by_name, names[i], strlen(names[i]), &ti) ||
            c->tensors[ti].shard != si) {
            s = mpk_error_set(err, MPK_E_INDEX_MISSING, 0, index_path,
                              "tensor '%s' is listed in %s but that shard does not hold it",
                              names[i], files[i]);
            goto done;
        }
    }
    /* and every tensor of every shard is listed */
    if (c->n_tensors != n) {
        mpk_strmap listed = {0};
        if (mpk_strmap_init(&listed, n) != MPK_OK) {
            s = mpk_error_set(err, MPK_E_NOMEM, 0, index_path, "out of memory");
            goto done;
        }
        for (size_t i = 0; i < n; i++)
            mpk_strmap_put(&listed, names[i], strlen(names[i]), i, NULL);
        for (size_t i = 0; i < c->n_tensors; i++) {
            size_t dummy;
            const char *tn = c->tensors[i].info->name;
            if (!mpk_strmap_get(&listed, tn, strlen(tn), &dummy)) {
                s = mpk_error_set(err, MPK_E_INDEX_EXTRA, 0, c->shards[c->tensors[i].shard].path,
                                  "tensor '%s' is not listed in %s", tn, INDEX_NAME);
                break;
            }
        }
        mpk_strmap_free(&listed);
    }
    /* and no shard of it is left out of the index */
    if (s == MPK_OK)
        s = omitted_shards(c, index_path, &shard_ix, err);
done:
    mpk_strmap_free(&shard_ix);
    mpk_arena_free(a);
    return s;
}

static bool has_compressed(const char *path)
{
    char *z = mpk_strcat_ext(path, ".mpkz");
    bool yes = z && access(z, F_OK) == 0;
    free(z);
    return yes;
}

static mpk_status ckpt_open_at(const char *path, mpk_ckpt **out, mpk_error *err);

/* A Hugging Face cache repo folder, or a repo id that is no local path: its snapshot of main. */
static mpk_status via_hub(const char *path, char **real, mpk_error *err)
{
    *real = NULL;
    struct stat st;
    size_t l = strlen(path);
    while (l > 1 && path[l - 1] == '/')
        l--;
    const char *base = path + l;
    while (base > path && base[-1] != '/')
        base--;
    if (stat(path, &st) == 0 && !(S_ISDIR(st.st_mode) && strncmp(base, "models--", 8) == 0))
        return MPK_OK;
    return mpk_hub_resolve(path, NULL, real, err);
}

/* open(path), path first resolved through the cache where it names a repo folder or id. */
static mpk_status open_via_hub(const char *path, mpk_status (*open)(const char *, mpk_ckpt **, mpk_error *),
                               mpk_ckpt **out, mpk_error *err)
{
    char *real;
    *out = NULL;
    MPK_TRY(via_hub(path, &real, err));
    mpk_status s = open(real ? real : path, out, err);
    free(real);
    return s;
}

mpk_status mpk_ckpt_open(const char *path, mpk_ckpt **out, mpk_error *err)
{
    return open_via_hub(path, ckpt_open_at, out, err);
}

static mpk_status ckpt_open_at(const char *path, mpk_ckpt **out, mpk_error *err)
{
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0)
        return mpk_error_set(err, errno == ENOENT ? MPK_E_NOT_FOUND : MPK_E_IO, errno, path,
                             "cannot open: %s", strerror(errno));
    mpk_ckpt *c = mpk_calloc(1, sizeof *c);
    if (!c)
        MPK_FAIL(err, MPK_E_NOMEM, path, "out of memory");
    mpk_status s = MPK_OK;
    if (S_ISDIR(st.st_mode)) {
        c->is_dir = true;
        c->dir = mpk_strndup(path, strlen(path));
        char *ix = mpk_path_join(path, INDEX_NAME);
        char *single = mpk_path_join(path, SINGLE_NAME);
        if (!c->dir || !ix || !single) {
            s = mpk_error_set(err, MPK_E_NOMEM, 0, path, "out of memory");
        } else if (access(ix, F_OK) == 0) {
            s = open_indexed(c, ix, err);
        } else if (access(single, F_OK) == 0 || has_compressed(single)) {
            c->shards = mpk_calloc(1, sizeof *c->shards);
            s = c->shards ? add_shard(c, SINGLE_NAME, err)
                          : mpk_error_set(err, MPK_E_NOMEM, 0, path, "out of memory");
            if (s == MPK_OK)
                s = collect_tensors(c, err);
        } else {
            s = mpk_error_set(err, MPK_E_NOT_FOUND, 0, path,
                              "no " SINGLE_NAME " or " INDEX_NAME " in this directory");
        }
        free(ix);
        free(single);
    } else {
        const char *slash = strrchr(path, '/');
        c->dir = slash ? mpk_strndup(path, (size_t)(slash - path + (slash == path))) : mpk_strndup(".", 1);
        c->shards = mpk_calloc(1, sizeof *c->shards);
        if (!c->dir || !c->shards) {
            s = mpk_error_set(err, MPK_E_NOMEM, 0, path, "out of memory");
        } else {
            /* a lone NAME.safetensors.mpkz is opened as NAME.safetensors (add_shard finds it) */
            const char *base = slash ? slash + 1 : path;
            size_t bl = strlen(base);
            char *logical = mpk_strndup(base, bl > 5 && strcmp(base + bl - 5, ".mpkz") == 0 ? bl - 5 : bl);
            s = logical ? add_shard(c, logical, err) : mpk_error_set(err, MPK_E_NOMEM, 0, path, "out of memory");
            free(logical);
            if (s == MPK_OK)
                s = collect_tensors(c, err);
        }
    }
    if (s != MPK_OK) {
        mpk_ckpt_close(c);
        return s;
    }
    *out = c;
    return MPK_OK;
}

static mpk_status ckpt_open_names_at(const char *dir, mpk_ckpt **out, mpk_error *err);

mpk_status mpk_ckpt_open_names(const char *dir, mpk_ckpt **out, mpk_error *err)
{
    return open_via_hub(dir, ckpt_open_names_at, out, err);
}

static mpk_status ckpt_open_names_at(const char *dir, mpk_ckpt **out, mpk_error *err)
{
    *out = NULL;
    char *ix = mpk_path_join(dir, INDEX_NAME), *text = NULL;
    size_t len, n = 0;
    mpk_arena *a = NULL;
    const char **names, **files;
    mpk_ckpt *c = mpk_calloc(1, sizeof *c);
    mpk_strmap shard_ix = {0};
    mpk_status s;
    if (!ix || !c || !(c->dir = mpk_strndup(dir, strlen(dir)))) {
        s = mpk_error_set(err, MPK_E_NOMEM, 0, dir, "out of memory");
        goto done;
    }
    c->is_dir = c->has_index = c->names_only = true;
    if (access(ix, F_OK) != 0) {
        s = mpk_error_set(err, MPK_E_NOT_FOUND, errno, dir, "no " INDEX_NAME " in this directory");
        goto done;
    }
    if ((s = mpk_read_file(ix, &text, &len, err)) != MPK_OK ||
        (s = mpk_index_parse(text, len, ix, &a, &names, &files, &n, &c->index_total_size, err)) != MPK_OK)
        goto done;
    c->shards = mpk_calloc(n ? n : 1, sizeof *c->shards);
    if (!c->shards || mpk_strmap_init(&shard_ix, 64) != MPK_OK) {
        s = mpk_error_set(err, MPK_E_NOMEM, 0, ix, "out of memory");
        goto done;
    }
    /* one header per shard file, holding the names the index gives it */
    for (size_t i = 0; i < n && s == MPK_OK; i++) {
        size_t si;
        if (!mpk_strmap_get(&shard_ix, files[i], strlen(files[i]), &si)) {
            si = c->n_shards;
            mpk_strmap_put(&shard_ix, files[i], strlen(files[i]), si, NULL);
            if ((s = shard_entry(c, files[i], err)) != MPK_OK)
                break;
            mpk_st_header *h = mpk_calloc(1, sizeof *h);
            if (!h || !(h->arena = mpk_arena_new()) ||
                !(h->tensors = mpk_arena_alloc(h->arena, sizeof *h->tensors * n))) {
                mpk_st_header_free(h);
                s = mpk_error_set(err, MPK_E_NOMEM, 0, ix, "out of memory");
                break;
            }
            c->shards[si].header = h;
        }
        mpk_st_header *h = c->shards[si].header;
        mpk_tensor_info *t = &h->tensors[h->n_tensors];
        memset(t, 0, sizeof *t);
        t->dtype = MPK_DTYPE_BF16;
        if (!(t->name = mpk_arena_strndup(h->arena, names[i], strlen(names[i]))))
            s = mpk_error_set(err, MPK_E_NOMEM, 0, ix, "out of memory");
        h->n_tensors++;
    }
    if (s == MPK_OK)
        s = collect_tensors(c, err);
done:
    mpk_strmap_free(&shard_ix);
    mpk_arena_free(a);
    free(text);
    free(ix);
    if (s != MPK_OK) {
        mpk_ckpt_close(c);
        return s;
    }
    *out = c;
    return MPK_OK;
}

const mpk_ckpt_tensor *mpk_ckpt_find(const mpk_ckpt *c, const char *name)
{
    size_t i;
    if (!mpk_strmap_get(&c->by_name, name, strlen(name), &i))
        return NULL;
    return &c->tensors[i];
}

mpk_status mpk_ckpt_read(const mpk_ckpt *c, const mpk_ckpt_tensor *t, uint64_t off, uint64_t len, void *buf,
                         mpk_error *err)
{
    const mpk_shard *sh = &c->shards[t->shard];
    if (sh->z)
        return mpk_mpkz_read(sh->z, t->file_offset - sh->header->data_start + off, len, buf, err);
    return mpk_pread_all(sh->fd, buf, len, t->file_offset + off, sh->path, t->info->name, err);
}

mpk_status mpk_hash_file_range(int fd, uint64_t off, uint64_t len, char *buf, size_t cap, bool mapped, const char *path,
                               const char *tensor, mpk_hash128 *out, mpk_error *err)
{
    mpk_xxh *st = mpk_xxh_new();
    if (!st)
        MPK_FAIL(err, MPK_E_NOMEM, path, "out of memory");
    const uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE);
    mpk_status s = MPK_OK;
    for (uint64_t at = 0; at < len && s == MPK_OK;) {
        if (mapped) {
            uint64_t n = len - at < MPK_HASH_MAP_WINDOW ? len - at : MPK_HASH_MAP_WINDOW;
            uint64_t start = (off + at) & ~(pg - 1), lead = off + at - start;
            void *m = mmap(NULL, (size_t)(lead + n), PROT_READ, MAP_SHARED | MAP_POPULATE, fd, (off_t)start);
            if (m != MAP_FAILED) {
                mpk_xxh_update(st, (const char *)m + lead, (size_t)n);
                munmap(m, (size_t)(lead + n));
                at += n;
                continue;
            }
            mapped = false; /* read the rest */
        }
        size_t n = len - at < cap ? (size_t)(len - at) : cap;
        if ((s = mpk_pread_all(fd, buf, n, off + at, path, tensor, err)) == MPK_OK)
            mpk_xxh_update(st, buf, n);
        at += n;
    }
    *out = mpk_xxh_digest(st);
    mpk_xxh_free(st);
    return s;
}

void mpk_ckpt_close(mpk_ckpt *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_shards; i++) {
        mpk_mpkz_close(c->shards[i].z);
        if (c->shards[i].fd >= 0)
            close(c->shards[i].fd);
        mpk_st_header_free(c->shards[i].header);
        free(c->shards[i].name);
        free(c->shards[i].path);
    }
    free(c->shards);
    free(c->tensors);
    mpk_strmap_free(&c->by_name);
    free(c->dir);
    free(c);
}
