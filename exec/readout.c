/* readout.c — a plan's outputs read without writing them (lib/view.c: moepack.open(..., layout=)):
 * the node graph mpk_exec builds (graph.c), each output read through it (nodes.c) into the
 * caller's buffer: byte-permutation ops as ranged reads of the sources, computed nodes through
 * their kernels. Nothing is staged, nothing is written. */
#include "engine_internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct mpk_exec_reader {
    const mpk_plan *p;
    builder b;
    mpk_arena *arena;
    reader r;
    mpk_error rerr;         /* the reader's own (copied into the caller's on failure) */
    pthread_mutex_t lock;   /* one read at a time: the reader's queue is shared */
};

mpk_status mpk_exec_reader_open(const mpk_plan *p, mpk_io_backend io, mpk_exec_reader **out, mpk_error *err)
{
    *out = NULL;
    mpk_exec_reader *v = mpk_calloc(1, sizeof *v);
    if (!v)
        MPK_FAIL(err, MPK_E_NOMEM, "exec", "out of memory");
    v->p = p;
    v->b.err = err;
    v->r.cap = 64;
    v->r.err = &v->rerr;
    v->arena = mpk_arena_new();
    v->b.out = mpk_calloc(p->n_outs + 1, sizeof *v->b.out);
    v->r.reqs = mpk_calloc(v->r.cap, sizeof *v->r.reqs);
    mpk_status s = MPK_OK;
    if (!v->arena || !v->b.out || !v->r.reqs)
        s = mpk_error_set(err, MPK_E_NOMEM, 0, "exec", "out of memory");
    if (s == MPK_OK)
        s = ex_build_nodes(p, &v->b, v->arena);
    if (s == MPK_OK)
        s = mpk_io_create(io, 32, 4u << 20, &v->r.io, err);
    if (s != MPK_OK || pthread_mutex_init(&v->lock, NULL) != 0) {
        s = s != MPK_OK ? s : mpk_error_set(err, MPK_E_NOMEM, 0, "exec", "cannot create a lock");
        mpk_io_free(v->r.io);
        v->r.io = NULL;
        mpk_exec_reader_close(v);
        return s;
    }
    *out = v;
    return MPK_OK;
}

/* Bytes [off, off + len) of node n, read in pieces that start and end on its granule (the
 * kernels compute whole rows, slabs, matrices): into buf when the range is aligned, else
 * through one aligned block of at most the range plus a granule on each side. */
static mpk_status read_aligned(mpk_exec_reader *v, mpk_node *n, uint64_t nbytes, uint64_t off, uint64_t len, char *buf)
{
    uint64_t g = ex_node_granule(n);
    if (!g)
        g = 1;
    uint64_t a = off / g * g, e = (off + len + g - 1) / g * g;
    if (e > nbytes)
        e = nbytes;
    char *tmp = NULL, *dst = buf;
    if (a != off || e != off + len) {
        if (!(tmp = mpk_alloc(e - a)))
            MPK_FAIL(v->r.err, MPK_E_NOMEM, "exec", "out of memory (%llu bytes)", (unsigned long long)(e - a));
        dst = tmp;
    }
    mpk_status s = ex_node_read(n, a, e - a, dst, &v->r);
    if (s == MPK_OK)
        s = ex_rd_flush(&v->r);
    if (s == MPK_OK && tmp)
        memcpy(buf, tmp + (off - a), len);
    v->r.n = 0;
    free(tmp);
    return s;
}

mpk_status mpk_exec_reader_read(mpk_exec_reader *v, size_t i, uint64_t off, uint64_t len, void *buf, mpk_error *err)
{
    if (i >= v->p->n_outs)
        MPK_FAIL(err, MPK_E_USAGE, "exec", "internal: output %zu of %zu", i, v->p->n_outs);
    const mpk_plan_out *o = &v->p->outs[i];
    if (off > o->nbytes || len > o->nbytes - off)
        MPK_FAIL(err, MPK_E_USAGE, o->name, "bytes [%llu, +%llu) past its %llu bytes", (unsigned long long)off,
                 (unsigned long long)len, (unsigned long long)o->nbytes);
    if (!len)
        return MPK_OK;
    pthread_mutex_lock(&v->lock);
    memset(&v->rerr, 0, sizeof v->rerr);
    mpk_status s = read_aligned(v, v->b.out[i], o->nbytes, off, len, buf);
    if (s != MPK_OK && err) {
        *err = v->rerr;
        ex_err_locate(err, NULL, o->name);
    }
    pthread_mutex_unlock(&v->lock);
    return s;
}

void mpk_exec_reader_close(mpk_exec_reader *v)
{
    if (!v)
        return;
    if (v->r.io) {
        mpk_io_free(v->r.io);
        pthread_mutex_destroy(&v->lock);
    }
    ex_nodes_free(&v->b);
    free(v->b.out);
    free(v->r.reqs);
    mpk_arena_free(v->arena);
    free(v);
}
