/* guard.c — what a run may delete, and how it deletes it.
 *
 * Three rules keep a conversion from destroying what it was not asked to replace:
 *  - Overlap: a destination that is, holds or lies inside the source is refused before anything
 *    is written. Compared by device and inode, along the destination's real path (its
 *    ancestors) and through the whole destination tree, so that a symlink, a bind mount of a
 *    folder inside DST or a different spelling does not hide the source.
 *  - Force replaces only a checkpoint: an empty directory, or one whose top level holds a
 *    checkpoint's file, that holds no mount point, no .git, no other checkpoint below its top
 *    level and no top-level file of a kind no checkpoint has (mpk_force_check).
 *  - Removal (mpk_rmrf) goes relative to directory descriptors, never follows a symlink, never
 *    enters another file system or mount, and skips a directory swapped for another between
 *    the look and the descent: whoever can rename entries under the removed tree (a shared
 *    sticky directory) cannot point the removal elsewhere.
 */
#define _GNU_SOURCE
#include "exec_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

enum { GUARD_MAX_DEPTH = 256 };

void (*mpk_rmrf_between)(int dirfd, const char *name);

/* ---------------------------------------------------------------- looking without following */

/* lstat of name in dirfd, with whether it is the root of a mount (statx's attribute where the
 * kernel reports it; else a device other than the parent's). */
static bool look_at(int dirfd, const char *name, dev_t parent_dev, struct stat *sb, bool *mount)
{
    struct statx sx;
    if (statx(dirfd, name, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_TYPE | STATX_MODE | STATX_INO | STATX_UID,
              &sx) != 0)
        return false;
    memset(sb, 0, sizeof *sb);
    sb->st_mode = sx.stx_mode;
    sb->st_ino = sx.stx_ino;
    sb->st_uid = sx.stx_uid;
    sb->st_dev = makedev(sx.stx_dev_major, sx.stx_dev_minor);
    *mount = sb->st_dev != parent_dev ||
             ((sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) && (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT));
    return true;
}

/* Opens directory name in dirfd without following a link, and only if it is still the
 * directory sb describes (not swapped since the look). -1 otherwise. */
static int open_same_dir(int dirfd, const char *name, const struct stat *sb)
{
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    struct stat now;
    if (fd >= 0 && (fstat(fd, &now) != 0 || now.st_dev != sb->st_dev || now.st_ino != sb->st_ino)) {
        close(fd);
        fd = -1;
    }
    return fd;
}

static bool dot_or_dotdot(const char *n)
{
    return n[0] == '.' && (!n[1] || (n[1] == '.' && !n[2]));
}

/* ---------------------------------------------------------------- removal */

/* Empties the directory open at fd (on device dev), depth first. Entries that are mount points,
 * on another device or swapped while we looked are left; so is their directory then. */
static void rm_inside(int fd, dev_t dev, int depth)
{
    if (depth > GUARD_MAX_DEPTH)
        return;
    for (int pass = 0; pass < 8; pass++) { /* again while a pass removed something: readdir
                                              may skip entries of a directory being changed */
        int dfd = dup(fd);
        DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
        if (!d) {
            if (dfd >= 0)
                close(dfd);
            return;
        }
        size_t removed = 0;
        for (struct dirent *e; (e = readdir(d));) {
            if (dot_or_dotdot(e->d_name))
                continue;
            struct stat sb;
            bool mount;
            if (!look_at(fd, e->d_name, dev, &sb, &mount))
                continue;
            if (S_ISDIR(sb.st_mode)) {
                if (mount)
                    continue; /* another file system, or a bind mount: never entered */
                if (mpk_rmrf_between)
                    mpk_rmrf_between(fd, e->d_name);
                int sub = open_same_dir(fd, e->d_name, &sb);
                if (sub < 0)
                    continue; /* a link or another directory now: left */
                rm_inside(sub, dev, depth + 1);
                close(sub);
                removed += unlinkat(fd, e->d_name, AT_REMOVEDIR) == 0;
            } else {
                removed += unlinkat(fd, e->d_name, 0) == 0; /* a link is removed, not followed */
            }
        }
        closedir(d);
        if (!removed)
            return;
    }
}

/* Splits path into its parent directory (opened) and last component; -1 when it cannot. */
static int open_parent(const char *path, char *base, size_t cap)
{
    size_t l = strlen(path);
    while (l > 1 && path[l - 1] == '/')
        l--;
    size_t b = l;
    while (b > 0 && path[b - 1] != '/')
        b--;
    if (l - b == 0 || l - b >= cap)
        return -1;
    memcpy(base, path + b, l - b);
    base[l - b] = 0;
    if (dot_or_dotdot(base))
        return -1;
    char *parent = b == 0 ? mpk_strndup(".", 1) : mpk_strndup(path, b > 1 ? b - 1 : 1);
    int fd = parent ? open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    free(parent);
    return fd;
}

void mpk_rmrf(const char *path)
{
    char base[NAME_MAX + 1];
    int pfd = open_parent(path, base, sizeof base);
    struct stat parent, sb;
    bool mount;
    if (pfd < 0)
        return;
    if (fstat(pfd, &parent) == 0 && look_at(pfd, base, parent.st_dev, &sb, &mount)) {
        if (!S_ISDIR(sb.st_mode)) {
            unlinkat(pfd, base, 0);
        } else if (!mount) {
            int fd = open_same_dir(pfd, base, &sb);
            if (fd >= 0) {
                rm_inside(fd, sb.st_dev, 0);
                close(fd);
                unlinkat(pfd, base, AT_REMOVEDIR);
            }
        }
    }
    close(pfd);
}

bool mpk_stage_dir_ours(const char *path)
{
    struct stat sb;
    return lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode) && sb.st_uid == geteuid();
}

/* ---------------------------------------------------------------- walking a destination */

typedef struct {
    char rel[PATH_MAX];           /* the entry's path below the root */
    struct stat sb;
    bool mount;
    int depth;                    /* 0: the root's own entries */
} walk_ent;

/* Calls fn for each entry under the directory open at fd, depth first, without following links
 * or entering a mount; stops at the first nonzero fn result, which it returns. */
static int walk_in(int fd, dev_t dev, walk_ent *w, size_t rl, int (*fn)(void *, const walk_ent *), void *ctx)
{
    int dfd = dup(fd);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) {
        if (dfd >= 0)
            close(dfd);
        return 0;
    }
    int r = 0, depth = w->depth;
    for (struct dirent *e; !r && (e = readdir(d));) {
        if (dot_or_dotdot(e->d_name))
            continue;
        size_t n = strlen(e->d_name);
        if (rl + n + 2 > sizeof w->rel || !look_at(fd, e->d_name, dev, &w->sb, &w->mount))
            continue;
        if (rl)
            w->rel[rl] = '/';
        memcpy(w->rel + rl + (rl ? 1 : 0), e->d_name, n + 1);
        w->depth = depth;
        r = fn(ctx, w);
        if (!r && S_ISDIR(w->sb.st_mode) && !w->mount && depth < GUARD_MAX_DEPTH) {
            struct stat sb = w->sb;
            int sub = open_same_dir(fd, e->d_name, &sb);
            if (sub >= 0) {
                w->depth = depth + 1;
                r = walk_in(sub, dev, w, strlen(w->rel), fn, ctx);
                close(sub);
            }
        }
        w->rel[rl] = 0;
    }
    closedir(d);
    return r;
}

static int walk(const char *root, int (*fn)(void *, const walk_ent *), void *ctx)
{
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0)
        return 0;
    walk_ent *w = mpk_alloc(sizeof *w);
    int r = !w ? -1 /* out of memory: the caller may not take that for "nothing found" */
               : fstat(fd, &sb) == 0 ? (w->rel[0] = 0, w->depth = 0, walk_in(fd, sb.st_dev, w, 0, fn, ctx)) : 0;
    free(w);
    close(fd);
    return r;
}

/* ---------------------------------------------------------------- overlap */

typedef struct {
    dev_t dev;
    ino_t ino;
} file_id;

static bool id_of(const char *path, file_id *id)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return false;
    *id = (file_id){st.st_dev, st.st_ino};
    return true;
}

/* Cuts the last component off an absolute path in place; false at "/". */
static bool up(char *p)
{
    char *s = strrchr(p, '/');
    if (!s || (s == p && !p[1]))
        return false;
    if (s == p)
        p[1] = 0;
    else
        *s = 0;
    return true;
}

/* The real path of the longest existing prefix of path (malloc'd), NULL if none. */
static char *real_prefix(const char *path)
{
    char *cur = mpk_strndup(path, strlen(path));
    while (cur) {
        char *r = realpath(cur, NULL);
        if (r) {
            free(cur);
            return r;
        }
        char *s = strrchr(cur, '/');
        if (!s) { /* a relative name with no directory part: its parent is "." */
            free(cur);
            return realpath(".", NULL);
        }
        if (s == cur) {
            free(cur);
            return realpath("/", NULL);
        }
        *s = 0;
    }
    return NULL;
}

/* 0 when no directory on the absolute path real (itself included) is id; 1 when real itself
 * is; 2 when an ancestor is. */
static int on_path(const char *real, file_id id)
{
    char *c = mpk_strndup(real, strlen(real));
    int level = 0, hit = 0;
    while (c && !hit) {
        file_id g;
        if (id_of(c, &g) && g.dev == id.dev && g.ino == id.ino)
            hit = level ? 2 : 1;
        if (!up(c))
            break;
        level++;
    }
    free(c);
    return hit;
}

typedef struct {
    file_id dir;                 /* the source directory (or file) */
    file_id *files;              /* its files: the shards read and its top-level entries */
    size_t n, cap;
    char hit[PATH_MAX];
    bool hit_dir;
} src_ids;

/* false when out of memory */
static bool add_id(src_ids *s, const char *path)
{
    file_id id;
    if (!path)
        return false;
    if (!id_of(path, &id))
        return true;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        file_id *f = realloc(s->files, cap * sizeof *f);
        if (!f)
            return false;
        s->files = f;
        s->cap = cap;
    }
    s->files[s->n++] = id;
    return true;
}

static int find_src(void *ctx, const walk_ent *w)
{
    src_ids *s = ctx;
    bool hit = w->sb.st_dev == s->dir.dev && w->sb.st_ino == s->dir.ino;
    s->hit_dir = hit;
    for (size_t i = 0; !hit && S_ISREG(w->sb.st_mode) && i < s->n; i++)
        hit = w->sb.st_dev == s->files[i].dev && w->sb.st_ino == s->files[i].ino;
    if (hit)
        snprintf(s->hit, sizeof s->hit, "%s", w->rel);
    return hit;
}

/* Whether the tree at dst holds the source (its directory, or one of its files) somewhere:
 * a bind mount of a folder inside dst as SRC is found by its device and inode. */
static mpk_status find_src_under(const char *src_path, const mpk_ckpt *src, const char *dst, file_id sid,
                                 mpk_error *err)
{
    src_ids s = {.dir = sid};
    size_t n = src && src->is_dir ? src->n_shards : 0;
    bool ok = true;
    for (size_t i = 0; ok && i < n; i++)
        ok = add_id(&s, src->shards[i].path);
    DIR *d = opendir(src_path);
    for (struct dirent *e; ok && d && (e = readdir(d));) {
        if (dot_or_dotdot(e->d_name))
            continue;
        char *p = mpk_path_join(src_path, e->d_name);
        ok = add_id(&s, p);
        free(p);
    }
    if (d)
        closedir(d);
    int found = ok ? walk(dst, find_src, &s) : -1;
    free(s.files);
    if (found < 0)
        MPK_FAIL(err, MPK_E_NOMEM, dst, "out of memory");
    if (found)
        MPK_FAIL_ABOUT(err, MPK_FIELD_DST, MPK_E_OVERLAP, NULL, "the destination '%s' holds the source '%s' (%s '%s/%s', the same %s "
                 "by device and inode: a bind mount or hard link); a forced run would delete it", dst, src_path,
                 s.hit_dir ? "as" : "its file as", dst, s.hit, s.hit_dir ? "directory" : "file");
    return MPK_OK;
}

mpk_status mpk_overlap_check(const char *src_path, const mpk_ckpt *src, const char *dst, mpk_error *err)
{
    file_id sid, did;
    if (!id_of(src_path, &sid))
        return MPK_OK; /* the source is gone: opening it reported that already */
    bool dst_exists = id_of(dst, &did);
    char *dreal = real_prefix(dst);
    if (!dreal)
        MPK_FAIL(err, MPK_E_NOMEM, dst, "out of memory");
    int h = on_path(dreal, sid);
    free(dreal);
    if (h)
        MPK_FAIL_ABOUT(err, MPK_FIELD_DST, MPK_E_OVERLAP, NULL, "the destination '%s' %s the source '%s'; write elsewhere", dst,
                 h == 1 && dst_exists ? "is" : "lies inside", src_path);
    if (!dst_exists)
        return MPK_OK; /* nothing at dst: it holds nothing */
    size_t n = src && src->is_dir ? src->n_shards : 0;
    for (size_t i = 0; i <= n; i++) { /* the source itself, then each file it is read from */
        const char *p = i == 0 ? src_path : src->shards[i - 1].path;
        char *r = realpath(p, NULL);
        int k = r ? on_path(r, did) : 0;
        free(r);
        if (k)
            MPK_FAIL_ABOUT(err, MPK_FIELD_DST, MPK_E_OVERLAP, NULL, "the destination '%s' holds the source '%s'%s%s; a forced run would delete it",
                     dst, src_path, i == 0 ? "" : ": its file ", i == 0 ? "" : p);
    }
    struct stat db;
    if (lstat(dst, &db) == 0 && S_ISDIR(db.st_mode))
        return find_src_under(src_path, src, dst, sid, err);
    return MPK_OK;
}

/* ---------------------------------------------------------------- what force replaces */

/* dst is a directory with nothing in it (what mpk_force_check lets a forced run replace besides
 * a checkpoint) */
static bool empty_dir(const char *dst)
{
    DIR *d = opendir(dst);
    if (!d)
        return false;
    bool empty = true;
    for (struct dirent *e; empty && (e = readdir(d));)
        empty = dot_or_dotdot(e->d_name);
    closedir(d);
    return empty;
}

mpk_status mpk_dst_exists(const char *dst, mpk_error *err)
{
    mpk_error why = {0};
    mpk_status fc = mpk_force_check(dst, &why);
    if (fc == MPK_E_NOMEM) {
        *err = why;
        return fc;
    }
    if (fc == MPK_OK)
        MPK_FAIL_ABOUT(err, MPK_FIELD_FORCE, MPK_E_DST_EXISTS, dst, "destination exists; it is %s, which a forced run replaces",
                       empty_dir(dst) ? "an empty directory" : "a checkpoint");
    /* the reason alone: "not a directory", "not a checkpoint: ... ('a.jpg')", "not only ..." */
    char r[sizeof why.msg];
    snprintf(r, sizeof r, "%s", strstr(why.msg, "not ") ? strstr(why.msg, "not ") : why.msg);
    r[strcspn(r, ";")] = 0;
    char *cut = strstr(r, ", and a forced run");
    if (cut)
        *cut = 0;
    MPK_FAIL_ABOUT(err, MPK_FIELD_DST, MPK_E_DST_EXISTS, dst, "destination exists and a forced run would not replace it either (%s); "
             "write elsewhere", r);
}

static bool ckpt_file_name(const char *name)
{
    return mpk_str_ends(name, ".safetensors") || mpk_str_ends(name, ".safetensors.mpkz") ||
           mpk_str_ends(name, ".safetensors.index.json") || strcmp(name, "moepack.manifest.json") == 0;
}

/* A top-level file a published checkpoint (or moepack's output) may hold: weights, configs and
 * indexes, tokenizer files, model cards and licences, custom modeling code. */
static bool checkpoint_kind(const char *name)
{
    static const char *const ends[] = {".safetensors", ".mpkz", ".json", ".md", ".txt", ".model", ".tiktoken",
                                       ".jinja", ".py", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".zst"};
    static const char *const starts[] = {"LICENSE", "LICENCE", "NOTICE", "COPYING", "USE_POLICY", "README",
                                         "moepack.", ".gitattributes"};
    for (size_t i = 0; i < sizeof ends / sizeof *ends; i++)
        if (mpk_str_ends(name, ends[i]))
            return true;
    for (size_t i = 0; i < sizeof starts / sizeof *starts; i++)
        if (strncmp(name, starts[i], strlen(starts[i])) == 0)
            return true;
    return false;
}

typedef struct {
    bool moepack;                /* moepack wrote it (its manifest or source record on top) */
    const char *why;
    char what[PATH_MAX];
} foreign;

static int find_foreign(void *ctx, const walk_ent *w)
{
    foreign *f = ctx;
    const char *base = strrchr(w->rel, '/') ? strrchr(w->rel, '/') + 1 : w->rel;
    if (w->mount)
        f->why = "holds a mount point (another file system, or a bind mount), which a forced run never deletes";
    else if (strcmp(base, ".git") == 0)
        f->why = "holds a git repository (.git)";
    else if (w->depth > 0 && !f->moepack && (ckpt_file_name(base) || strcmp(base, "config.json") == 0))
        f->why = "holds another checkpoint below its top level (a folder of models?)";
    else if (w->depth == 0 && !f->moepack && !S_ISDIR(w->sb.st_mode) && !checkpoint_kind(base))
        f->why = "holds a file of a kind no checkpoint has";
    if (f->why)
        snprintf(f->what, sizeof f->what, "%s", w->rel);
    return f->why != NULL;
}

mpk_status mpk_force_check(const char *dst, mpk_error *err)
{
    struct stat sb;
    if (lstat(dst, &sb) != 0 || S_ISLNK(sb.st_mode))
        return MPK_OK;
    if (!S_ISDIR(sb.st_mode))
        MPK_FAIL_ABOUT(err, MPK_FIELD_DST, MPK_E_DST_FOREIGN, dst,
                 "not a directory; a forced run replaces a checkpoint directory, not a file: it was left as it "
                 "is (remove it yourself, or write elsewhere)");
    DIR *d = opendir(dst);
    if (!d)
        return mpk_error_set(err, MPK_E_IO, errno, dst, "cannot list it to see what a forced run would replace: %s",
                             strerror(errno));
    char first[256] = "";
    size_t n = 0;
    bool ckpt = false;
    foreign f = {0};
    for (struct dirent *e; (e = readdir(d));) {
        if (dot_or_dotdot(e->d_name))
            continue;
        if (!n++)
            snprintf(first, sizeof first, "%s", e->d_name);
        ckpt = ckpt || ckpt_file_name(e->d_name);
        f.moepack = f.moepack || strncmp(e->d_name, "moepack.", 8) == 0;
    }
    closedir(d);
    if (n == 0)
        return MPK_OK;
    if (!ckpt)
        MPK_FAIL_ABOUT(err, MPK_FIELD_DST, MPK_E_DST_FOREIGN, dst,
                 "not a checkpoint: its top level holds no *.safetensors file, index or moepack.manifest.json "
                 "('%s'%s), and a forced run replaces only a checkpoint directory or an empty one: it was left as it "
                 "is (remove it yourself, or write elsewhere)", first, n > 1 ? " and more" : "");
    struct stat parent;
    char *pp = mpk_path_join(dst, "..");
    bool mount_root = pp && stat(pp, &parent) == 0 && parent.st_dev != sb.st_dev;
    free(pp);
    if (mount_root)
        MPK_FAIL_ABOUT(err, MPK_FIELD_DST, MPK_E_DST_FOREIGN, dst, "the root of a mounted file system: a forced run does not replace a "
                 "mount point; it was left as it is (write elsewhere)");
    int foreign_found = walk(dst, find_foreign, &f);
    if (foreign_found < 0)
        MPK_FAIL(err, MPK_E_NOMEM, dst, "out of memory");
    if (foreign_found)
        MPK_FAIL_ABOUT(err, MPK_FIELD_DST, MPK_E_DST_FOREIGN, dst,
                 "not only a checkpoint: it %s ('%s'), and a forced run replaces only a checkpoint directory or an "
                 "empty one: it was left as it is (remove it yourself, or write elsewhere)", f.why, f.what);
    return MPK_OK;
}
