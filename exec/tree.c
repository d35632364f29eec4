/* tree.c — SRC's other files (config, tokenizer, original/, ...) copied into the output,
 * recursively and streamed, reproducing symlinks inside SRC, never following one out of it
 * (unless asked) nor opening special files. */
#define _GNU_SOURCE
#include "exec_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- side files */

typedef struct {
    const mpk_exec_opts *o;
    mpk_side_stats *st;
    bool (*skip)(const char *name, void *ctx);
    void *skip_ctx;
    unsigned umask;
    char *buf;                   /* read/write fallback buffer */
    int root;                    /* SRC's directory, open */
    const char *root_path;       /* as given */
    char *blobs;                 /* SRC a Hugging Face cache snapshot: its repo's blobs/ */
} tree;

enum { TREE_MAX_DEPTH = 64, COPY_BUF = 1 << 20 };

/* Copies the open regular file in to out, streaming. */
static mpk_status copy_fd(tree *t, int in, int out, const char *from, const char *to, uint64_t *bytes,
                          mpk_error *err)
{
    bool cfr = true;
    for (;;) {
        ssize_t n;
        if (cfr) {
            n = mpk_fault_point("copy_file_range") ? -1 : copy_file_range(in, NULL, out, NULL, 1u << 30, 0);
            if (n < 0 && *bytes == 0 &&
                (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
                cfr = false;
                continue;
            }
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                return mpk_error_set(err, MPK_E_IO, errno, to, "copying from %s: %s", from, strerror(errno));
        } else {
            if (!t->buf && !(t->buf = mpk_alloc(COPY_BUF)))
                MPK_FAIL(err, MPK_E_NOMEM, to, "out of memory");
            n = read(in, t->buf, COPY_BUF);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                return mpk_error_set(err, MPK_E_IO, errno, from, "read failed: %s", strerror(errno));
            for (ssize_t w, done = 0; done < n; done += w) {
                w = mpk_fault_point("write") ? -1 : write(out, t->buf + done, (size_t)(n - done));
                if (w < 0 && errno == EINTR)
                    w = 0;
                else if (w <= 0)
                    return mpk_error_set(err, MPK_E_IO, errno, to, "write failed: %s", strerror(errno));
            }
        }
        if (n == 0)
            return MPK_OK;
        *bytes += (uint64_t)n;
    }
}

static mpk_status copy_reg(tree *t, int sdir, int ddir, const char *name, bool follow, const char *from,
                           const char *to, mpk_error *err)
{
    int in = openat(sdir, name, O_RDONLY | O_CLOEXEC | O_NONBLOCK | (follow ? 0 : O_NOFOLLOW));
    if (in < 0)
        return mpk_error_set(err, MPK_E_IO, errno, from, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(in, &sb) != 0 || !S_ISREG(sb.st_mode)) { /* replaced since it was listed */
        close(in);
        mpk_exec_warn(t->o, "skipped %s: not a regular file", from);
        t->st->skipped++;
        return MPK_OK;
    }
    int out = mpk_fault_point("create") ? -1 : openat(ddir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (out < 0) {
        int e = errno;
        close(in);
        return mpk_error_set(err, MPK_E_IO, e, to, "cannot create: %s", strerror(e));
    }
    uint64_t bytes = 0;
    mpk_status s = copy_fd(t, in, out, from, to, &bytes, err);
    if (s == MPK_OK && fchmod(out, sb.st_mode & 0777 & ~t->umask) != 0)
        s = mpk_error_set(err, MPK_E_IO, errno, to, "cannot set the mode: %s", strerror(errno));
    if (s == MPK_OK && !t->o->no_fsync)
        s = mpk_fsync_fd(out, to, err);
    if (close(out) != 0 && s == MPK_OK)
        s = mpk_error_set(err, MPK_E_IO, errno, to, "close failed: %s", strerror(errno));
    close(in);
    t->st->files++;
    t->st->bytes += bytes;
    return s;
}

/* Whether a relative symlink target, read in directory rel (depth components below SRC),
 * stays inside SRC when resolved component by component. */
static bool link_inside(const char *target, int depth)
{
    if (target[0] == '/')
        return false;
    int d = depth;
    for (const char *p = target; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.') {
            if (--d < 0)
                return false;
        } else if (n && !(n == 1 && p[0] == '.')) {
            d++;
        }
        p += n;
        while (*p == '/')
            p++;
    }
    return true;
}

/* Whether the link at path rel (below SRC) resolves beneath SRC when every link on the way is
 * followed as the kernel does (a link to "." makes "b/../x" leave SRC, which the text alone
 * does not show). A dangling link counts as beneath as far as it resolves; link_inside judges
 * the text. */
static bool link_resolves_inside(const tree *t, const char *rel)
{
    struct open_how how = {.flags = O_PATH | O_CLOEXEC, .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS};
    long fd = syscall(SYS_openat2, t->root, rel, &how, sizeof how);
    if (fd >= 0) {
        close((int)fd);
        return true;
    }
    if (errno == ENOENT || errno == ENOTDIR)
        return true; /* resolved beneath SRC up to a name that does not exist */
    if (errno != ENOSYS && errno != EPERM)
        return false; /* EXDEV: it leaves SRC; ELOOP: a loop */
    /* no openat2 (before Linux 5.6, or filtered): the real path of what it points at */
    char *full = mpk_path_join(t->root_path, rel), *r = full ? realpath(full, NULL) : NULL,
         *top = realpath(t->root_path, NULL);
    bool inside = full && (!r ? errno == ENOENT || errno == ENOTDIR
                              : top && strncmp(r, top, strlen(top)) == 0 && (r[strlen(top)] == '/' || !r[strlen(top)]));
    free(full);
    free(r);
    free(top);
    return inside;
}

/* Whether the link at from resolves into SRC's cache repo's blobs/. */
static bool into_blobs(const tree *t, const char *from)
{
    char *r = realpath(from, NULL);
    bool in = r && mpk_path_under(r, t->blobs);
    free(r);
    return in;
}

static mpk_status copy_dir(tree *t, int sdir, int ddir, const char *from_dir, const char *to_dir, int depth,
                           mpk_error *err)
{
    int fd = dup(sdir);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return mpk_error_set(err, MPK_E_IO, errno, from_dir, "cannot list: %s", strerror(errno));
    }
    mpk_status s = MPK_OK;
    struct dirent *e;
    while (s == MPK_OK && (e = readdir(d))) {
        const char *name = e->d_name;
        if (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2])))
            continue;
        if (depth == 0 && t->skip && t->skip(name, t->skip_ctx))
            continue;
        char *from = mpk_path_join(from_dir, name), *to = mpk_path_join(to_dir, name);
        struct stat sb;
        if (!from || !to) {
            s = mpk_error_set(err, MPK_E_NOMEM, 0, from_dir, "out of memory");
        } else if (fstatat(sdir, name, &sb, AT_SYMLINK_NOFOLLOW) != 0) {
            s = mpk_error_set(err, MPK_E_IO, errno, from, "cannot stat: %s", strerror(errno));
        } else if (S_ISREG(sb.st_mode)) {
            s = copy_reg(t, sdir, ddir, name, false, from, to, err);
        } else if (S_ISDIR(sb.st_mode)) {
            if (depth + 1 >= TREE_MAX_DEPTH) {
                mpk_exec_warn(t->o, "skipped %s: deeper than %d directories", from, TREE_MAX_DEPTH);
                t->st->skipped++;
            } else if (mpk_fault_point("mkdir") || mkdirat(ddir, name, 0700) != 0) {
                s = mpk_error_set(err, MPK_E_IO, errno, to, "cannot create: %s", strerror(errno));
            } else {
                int sd = openat(sdir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                int dd = openat(ddir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (sd < 0 || dd < 0)
                    s = mpk_error_set(err, MPK_E_IO, errno, sd < 0 ? from : to, "cannot open: %s", strerror(errno));
                else
                    s = copy_dir(t, sd, dd, from, to, depth + 1, err);
                if (s == MPK_OK && fchmod(dd, sb.st_mode & 0777 & ~t->umask) != 0)
                    s = mpk_error_set(err, MPK_E_IO, errno, to, "cannot set the mode: %s", strerror(errno));
                if (s == MPK_OK && !t->o->no_fsync)
                    s = mpk_fsync_fd(dd, to, err);
                if (sd >= 0)
                    close(sd);
                if (dd >= 0)
                    close(dd);
                t->st->dirs++;
            }
        } else if (S_ISLNK(sb.st_mode)) {
            char target[4096];
            ssize_t n = readlinkat(sdir, name, target, sizeof target - 1);
            struct stat tb;
            if (n < 0) {
                s = mpk_error_set(err, MPK_E_IO, errno, from, "cannot read the link: %s", strerror(errno));
            } else if ((target[n] = 0, t->blobs) && into_blobs(t, from) && fstatat(sdir, name, &tb, 0) == 0 &&
                       S_ISREG(tb.st_mode)) {
                s = copy_reg(t, sdir, ddir, name, true, from, to, err); /* the file, not a link into a cache */
            } else if (link_inside(target, depth) &&
                       link_resolves_inside(t, from + strlen(t->root_path) + !mpk_str_ends(t->root_path, "/"))) {
                if (mpk_fault_point("symlink") || symlinkat(target, ddir, name) != 0)
                    s = mpk_error_set(err, MPK_E_IO, errno, to, "cannot create the link: %s", strerror(errno));
                t->st->links++;
            } else if (t->o->copy_links && fstatat(sdir, name, &tb, 0) == 0 && S_ISREG(tb.st_mode)) {
                s = copy_reg(t, sdir, ddir, name, true, from, to, err);
            } else {
                mpk_exec_warn(t->o, "skipped %s -> %s: the link points outside the source%s", from, target,
                              t->o->copy_links ? " and not at a regular file" : " (copying links' targets copies what it points at)");
                t->st->skipped++;
            }
        } else {
            mpk_exec_warn(t->o, "skipped %s: a %s, not copied", from,
                          S_ISFIFO(sb.st_mode) ? "FIFO" : S_ISSOCK(sb.st_mode) ? "socket" : "device file");
            t->st->skipped++;
        }
        free(from);
        free(to);
    }
    closedir(d);
    return s;
}

mpk_status mpk_copy_tree(const char *src_dir, const char *dst_dir, bool (*skip)(const char *name, void *ctx),
                         void *skip_ctx, const mpk_exec_opts *o, mpk_side_stats *stats, mpk_error *err)
{
    tree t = {o, stats, skip, skip_ctx, mpk_umask(), NULL, -1, src_dir, NULL};
    int sd = open(src_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    t.root = sd;
    if (sd < 0)
        return mpk_error_set(err, MPK_E_IO, errno, src_dir, "cannot open: %s", strerror(errno));
    int dd = open(dst_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dd < 0) {
        close(sd);
        return mpk_error_set(err, MPK_E_IO, errno, dst_dir, "cannot open: %s", strerror(errno));
    }
    t.blobs = mpk_hub_blobs_of(src_dir);
    mpk_status s = copy_dir(&t, sd, dd, src_dir, dst_dir, 0, err);
    close(sd);
    close(dd);
    free(t.buf);
    free(t.blobs);
    return s;
}
