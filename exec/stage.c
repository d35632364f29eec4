/* stage.c — where a conversion's output is staged and how it lands, without ever losing data.
 *
 * (Overlap, what force replaces and how trees are removed: guard.c.)
 * Staging: output goes to a temporary directory beside dst whose name records its owner
 * (host, pid, process start time); its run marker records the plan digest, its shard markers
 * the output shards already complete and fsynced (empty files whose names carry the record:
 * exec_internal.h). A later run removes the directories of dead owners, or, with resume,
 * continues one with the same plan digest.
 * Landing: renameat2(RENAME_NOREPLACE), or RENAME_EXCHANGE under force, so that at every
 * moment dst is the old directory (or none) or the complete new one. Force replaces only a
 * checkpoint directory or an empty one (mpk_force_check, at the start and again at landing).
 * (SRC's other files: tree.c.)
 */
#define _GNU_SOURCE
#include "exec_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

void mpk_exec_warn(const mpk_exec_opts *o, const char *fmt, ...)
{
    if (!o || !o->warn)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    o->warn(o->warn_ctx, msg);
}

/* ---------------------------------------------------------------- owners */

typedef struct {
    char host[48];
    long pid;
    unsigned long long start;
} owner;

/* Start time of process pid in clock ticks since boot, 0 when it does not exist or is dead
 * (a zombie, not reaped yet: a process killed a moment ago). */
static unsigned long long proc_start(long pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    if (!p || p[1] != ' ' || p[2] == 'Z' || p[2] == 'X')
        return 0;
    /* after ") " come fields 3 (state) .. 22 (starttime) */
    for (int field = 3; field <= 22 && p; field++)
        p = strchr(p + 1, ' ');
    return p ? strtoull(p + 1, NULL, 10) : 0;
}

static void self_owner(owner *o)
{
    char h[256] = "localhost";
    gethostname(h, sizeof h - 1);
    h[sizeof h - 1] = 0;
    size_t i = 0;
    for (; h[i] && i < sizeof o->host - 1; i++) {
        char c = h[i];
        o->host[i] = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                             c == '_' ? c : '-';
    }
    o->host[i] = 0;
    o->pid = (long)getpid();
    o->start = proc_start(o->pid);
}

static void boot_id(char *out, size_t cap)
{
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
    out[0] = 0;
    if (f) {
        if (!fgets(out, (int)cap, f))
            out[0] = 0;
        fclose(f);
    }
    out[strcspn(out, "\n")] = 0;
}

/* Parses "HOST.PID.START.XXXXXX" (what follows the prefix). */
static bool parse_owner(const char *s, owner *o)
{
    const char *d1 = strchr(s, '.');
    if (!d1 || (size_t)(d1 - s) >= sizeof o->host)
        return false;
    memcpy(o->host, s, (size_t)(d1 - s));
    o->host[d1 - s] = 0;
    char *end;
    o->pid = strtol(d1 + 1, &end, 10);
    if (*end != '.' || o->pid <= 0)
        return false;
    o->start = strtoull(end + 1, &end, 10);
    return *end == '.' && strlen(end + 1) == 6;
}

/* ---------------------------------------------------------------- staging */

/* ".BASE.moepack-tmp." (a long BASE is replaced by its hash, to stay within NAME_MAX). */
static char *tmp_prefix(const char *base)
{
    char *p = mpk_alloc(strlen(base) + 32);
    if (!p)
        return NULL;
    if (strlen(base) > 150)
        sprintf(p, ".%016llx.moepack-tmp.", (unsigned long long)XXH3_64bits(base, strlen(base)));
    else
        sprintf(p, ".%s.moepack-tmp.", base);
    return p;
}

static char *run_field(const char *text, const char *key)
{
    size_t k = strlen(key);
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (strncmp(l, key, k) == 0 && l[k] == ' ')
            return mpk_strndup(l + k + 1, strcspn(l + k + 1, "\n"));
    return NULL;
}

static bool has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* A run marker, or an older build's run file. */
static bool is_run_entry(const char *name)
{
    return has_prefix(name, MPK_RUN_MARK) || strcmp(name, MPK_RUN_FILE) == 0;
}

bool mpk_stage_is_marker(const char *name)
{
    return is_run_entry(name) || has_prefix(name, MPK_SHARD_MARK) || strcmp(name, MPK_JOURNAL_FILE) == 0;
}

bool mpk_stage_skip_marker(const char *dir, const char *name, const mpk_exec_opts *o, mpk_side_stats *st)
{
    if (!mpk_stage_is_marker(name))
        return false;
    mpk_exec_warn(o, "skipped %s/%s: moepack's staging directory uses this name for its own records", dir, name);
    st->skipped++;
    return true;
}

/* Marker name PREFIX.DIGEST.REST into buf (NAME_MAX + 1 bytes); false when it would not fit. */
static bool format_mark(char *buf, const char *prefix, uint64_t digest, const char *rest)
{
    return snprintf(buf, NAME_MAX + 1, "%s%016llx.%s", prefix, (unsigned long long)digest, rest) <= NAME_MAX;
}

/* Whether name is PREFIX.DIGEST.REST: the digest, and *rest the text after its dot. */
static bool parse_mark(const char *name, const char *prefix, uint64_t *digest, const char **rest)
{
    if (!has_prefix(name, prefix))
        return false;
    const char *s = name + strlen(prefix);
    if (strspn(s, "0123456789abcdef") != 16 || s[16] != '.')
        return false;
    *digest = strtoull(s, NULL, 16);
    *rest = s + 17;
    return true;
}

/* The plan digest and boot id a run directory records: its run marker, else an older build's
 * run file. False when it records neither. */
static bool run_record(const char *path, uint64_t *digest, char *boot, size_t cap)
{
    bool found = false;
    DIR *d = opendir(path);
    struct dirent *e;
    const char *rest;
    while (d && !found && (e = readdir(d)))
        if (parse_mark(e->d_name, MPK_RUN_MARK, digest, &rest)) {
            snprintf(boot, cap, "%s", rest);
            found = true;
        }
    if (d)
        closedir(d);
    char *rp = found ? NULL : mpk_path_join(path, MPK_RUN_FILE), *text = NULL;
    mpk_error ig;
    if (rp && mpk_read_file(rp, &text, NULL, &ig) == MPK_OK) {
        char *dg = run_field(text, "digest"), *b = run_field(text, "boot");
        if ((found = dg != NULL)) {
            *digest = strtoull(dg, NULL, 16);
            snprintf(boot, cap, "%s", b ? b : "");
        }
        free(dg);
        free(b);
    }
    free(rp);
    free(text);
    return found;
}

/* An empty file name in dir, the directory fsynced after when sync. */
static mpk_status create_mark(const char *dir, const char *name, bool sync, mpk_error *err)
{
    char *path = mpk_path_join(dir, name);
    if (!path)
        MPK_FAIL(err, MPK_E_NOMEM, dir, "out of memory");
    int fd = mpk_fault_point("create") ? -1 : open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    mpk_status s = fd < 0 ? mpk_error_set(err, MPK_E_IO, errno, path, "cannot create: %s", strerror(errno)) : MPK_OK;
    if (fd >= 0)
        close(fd);
    free(path);
    return s == MPK_OK && sync ? mpk_fsync_dir(dir, err) : s;
}

/* Removes dir's markers (and an older build's run file and journal); with only_runs, its run
 * markers alone. */
static void remove_marks(const char *dir, bool only_runs)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (only_runs ? !is_run_entry(e->d_name) : !mpk_stage_is_marker(e->d_name))
            continue;
        char *p = mpk_path_join(dir, e->d_name);
        if (p)
            unlink(p);
        free(p);
    }
    if (d)
        closedir(d);
}

/* The shards an adopted directory records as complete, as "shard NAME DIGEST" lines: an older
 * build's journal first, then the markers (the last line for a name counts). */
static mpk_status load_journal(mpk_stage *st, mpk_error *err)
{
    char *jp = mpk_path_join(st->tmp, MPK_JOURNAL_FILE), *old = NULL;
    mpk_error ig;
    if (!jp || mpk_read_file(jp, &old, NULL, &ig) != MPK_OK)
        old = NULL;
    free(jp);
    size_t len = old ? strlen(old) : 0, cap = len + 256;
    char *text = mpk_alloc(cap);
    DIR *d = text ? opendir(st->tmp) : NULL;
    if (text)
        memcpy(text, old ? old : "", len + 1);
    free(old);
    if (len && text[len - 1] != '\n') /* a line cut by the crash */
        text[len = (size_t)(strrchr(text, '\n') ? strrchr(text, '\n') - text + 1 : 0)] = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        uint64_t dg;
        const char *name;
        if (!parse_mark(e->d_name, MPK_SHARD_MARK, &dg, &name) || !*name)
            continue;
        size_t need = len + strlen(name) + 32;
        char *t = need > cap ? realloc(text, cap = 2 * need) : text;
        if (!t) {
            free(text);
            text = NULL;
            break;
        }
        text = t;
        len += (size_t)sprintf(text + len, "shard %s %016llx\n", name, (unsigned long long)dg);
    }
    if (d)
        closedir(d);
    if (!text)
        MPK_FAIL(err, MPK_E_NOMEM, st->tmp, "out of memory");
    st->journal = text;
    return MPK_OK;
}

/* Whether the run that owns directory name (after the prefix) is gone; *why says who it was. */
static bool owner_gone(const char *path, const owner *self, const owner *o, const char *my_boot)
{
    if (strcmp(o->host, self->host) != 0)
        return false; /* another machine's: we cannot tell */
    uint64_t dg;
    char b[64];
    if (run_record(path, &dg, b, sizeof b) && *b && *my_boot && strcmp(b, my_boot) != 0)
        return true;
    return proc_start(o->pid) != o->start;
}

static mpk_status stage_scan(mpk_stage *st, const char *prefix, const owner *self, mpk_error *err)
{
    char my_boot[64];
    boot_id(my_boot, sizeof my_boot);
    DIR *d = opendir(st->parent);
    if (!d)
        return mpk_error_set(err, MPK_E_IO, errno, st->parent, "cannot list: %s", strerror(errno));
    size_t pl = strlen(prefix), bl = strlen(st->base);
    struct dirent *e;
    while ((e = readdir(d))) {
        owner o;
        char *path = NULL;
        if (strncmp(e->d_name, prefix, pl) != 0) {
            /* an older moepack's ".BASE.moepack-tmp-XXXXXX": no owner recorded */
            if (e->d_name[0] == '.' && strncmp(e->d_name + 1, st->base, bl) == 0 &&
                strncmp(e->d_name + 1 + bl, ".moepack-tmp-", 13) == 0 && strlen(e->d_name + 1 + bl + 13) == 6)
                mpk_exec_warn(st->o, "%s/%s was left by an older moepack (no owner recorded); remove it by hand "
                              "if no conversion into %s is running", st->parent, e->d_name, st->dst);
            continue;
        }
        if (!parse_owner(e->d_name + pl, &o) || !(path = mpk_path_join(st->parent, e->d_name)))
            continue;
        if (strcmp(path, st->tmp) != 0 && !mpk_stage_dir_ours(path)) {
            /* in a shared directory, another user's (or a link): never removed nor adopted */
            mpk_exec_warn(st->o, "%s is not a directory of this user's; left alone", path);
            free(path);
            continue;
        }
        if (strcmp(path, st->tmp) == 0 || !owner_gone(path, self, &o, my_boot)) {
            if (strcmp(path, st->tmp) != 0)
                mpk_exec_warn(st->o, "%s belongs to a run that may still be going (pid %ld on %s); left alone",
                              path, o.pid, o.host);
            free(path);
            continue;
        }
        bool adopt = false;
        if (st->o->resume && !st->adopted) {
            uint64_t dg;
            char b[64];
            adopt = run_record(path, &dg, b, sizeof b) && dg == st->digest;
        }
        /* adopting renames it over our fresh (empty) directory: of two runs, one gets it */
        if (adopt && (mpk_fault_point("rename") == 0 && rename(path, st->tmp) == 0)) {
            st->adopted = true;
            mpk_exec_warn(st->o, "resuming the run of pid %ld (%s), which is gone", o.pid, path);
        } else {
            mpk_rmrf(path);
            st->stale_removed++;
            mpk_exec_warn(st->o, "removed %s, left by a run that is gone (pid %ld on %s)%s", path, o.pid, o.host,
                          st->o->resume ? " (a different plan: not resumable)"
                                        : "; a resumed run would have continued it");
        }
        free(path);
    }
    closedir(d);
    return MPK_OK;
}

mpk_status mpk_stage_open(mpk_stage *st, const char *dst, uint64_t digest, const mpk_exec_opts *o,
                          mpk_error *err)
{
    memset(st, 0, sizeof *st);
    st->o = o;
    st->digest = digest;
    size_t l = strlen(dst);
    while (l > 1 && dst[l - 1] == '/')
        l--;
    st->dst = mpk_strndup(dst, l);
    char *slash = st->dst ? strrchr(st->dst, '/') : NULL;
    st->parent = !st->dst ? NULL : !slash ? mpk_strndup(".", 1) : mpk_strndup(st->dst, slash == st->dst ? 1 : (size_t)(slash - st->dst));
    st->base = st->dst ? mpk_strndup(slash ? slash + 1 : st->dst, strlen(slash ? slash + 1 : st->dst)) : NULL;
    if (st->base && (!st->base[0] || strcmp(st->base, ".") == 0 || strcmp(st->base, "..") == 0))
        /* "", "/", "DIR/.", "..": no name to rename a new directory to */
        MPK_FAIL(err, MPK_E_USAGE, dst, "the destination must end in the name of the directory to create "
                 "(not '', '/', '.' or '..'): write DIR/NAME");
    char *prefix = st->base ? tmp_prefix(st->base) : NULL;
    if (!prefix || !st->parent || !(st->tmp = mpk_alloc(strlen(st->parent) + strlen(prefix) + 160))) {
        free(prefix);
        MPK_FAIL(err, MPK_E_NOMEM, dst, "out of memory");
    }
    owner self;
    self_owner(&self);
    sprintf(st->tmp, "%s/%s%s.%ld.%llu.XXXXXX", st->parent, prefix, self.host, self.pid, self.start);
    if (mpk_fault_point("mkdir") || !mkdtemp(st->tmp)) {
        free(prefix);
        int e = errno;
        st->tmp[0] = 0;
        return mpk_error_set(err, MPK_E_IO, e, dst, "cannot create a temporary directory in %s: %s", st->parent,
                             strerror(e));
    }
    mpk_status s = stage_scan(st, prefix, &self, err);
    free(prefix);
    MPK_TRY(s);
    if (st->adopted)
        MPK_TRY(load_journal(st, err));
    /* the dead run's record goes first: between the two, the directory's name alone says
     * its owner (this process) is alive */
    remove_marks(st->tmp, true);
    char boot[64], name[NAME_MAX + 1];
    boot_id(boot, sizeof boot);
    boot[strspn(boot, "0123456789abcdef-")] = 0; /* a file name's characters only */
    format_mark(name, MPK_RUN_MARK, digest, boot); /* (fits: 13 + 17 + 63 bytes at most) */
    return create_mark(st->tmp, name, !o->no_fsync, err);
}

mpk_status mpk_stage_attach(mpk_stage *st, const char *dst, const char *tmp, const mpk_exec_opts *o,
                            mpk_error *err)
{
    memset(st, 0, sizeof *st);
    st->o = o;
    st->attached = true;
    st->dst = mpk_strndup(dst, strlen(dst));
    st->tmp = mpk_strndup(tmp, strlen(tmp));
    if (!st->dst || !st->tmp)
        MPK_FAIL(err, MPK_E_NOMEM, dst, "out of memory");
    return MPK_OK;
}

mpk_status mpk_stage_open_shared(mpk_stage *st, const char *dst, uint64_t digest, const mpk_exec_opts *o,
                                 mpk_error *err)
{
    if (mpk_dist_size() < 2)
        return mpk_stage_open(st, dst, digest, o, err);
    bool root = mpk_dist_rank() == 0;
    char tmp[8192] = "";
    memset(st, 0, sizeof *st);
    mpk_status s = root ? mpk_stage_open(st, dst, digest, o, err) : MPK_OK;
    if (root && s == MPK_OK && (size_t)snprintf(tmp, sizeof tmp, "%s", st->tmp) >= sizeof tmp)
        s = mpk_error_set(err, MPK_E_USAGE, 0, dst, "the destination's path is too long");
    MPK_TRY(mpk_dist_agree(s, err));
    mpk_dist_bcast(tmp, sizeof tmp, 0);
    s = root ? MPK_OK : mpk_stage_attach(st, dst, tmp, o, err);
    return mpk_dist_agree(s, err);
}

bool mpk_stage_journal_find(const mpk_stage *st, const char *name, uint64_t *digest)
{
    size_t k = strlen(name);
    bool found = false; /* the last line for name counts: a shard redone is recorded again */
    for (const char *l = st->journal; l && *l;) {
        const char *nl = strchr(l, '\n');
        if (!nl)
            break; /* a line cut by the crash */
        if (strncmp(l, "shard ", 6) == 0 && strncmp(l + 6, name, k) == 0 && l[6 + k] == ' ') {
            *digest = strtoull(l + 7 + k, NULL, 16);
            found = true;
        }
        l = nl + 1;
    }
    return found;
}

mpk_status mpk_stage_journal_add(mpk_stage *st, const char *name, uint64_t digest, mpk_error *err)
{
    char mark[NAME_MAX + 1];
    uint64_t old;
    /* a shard the adopted run recorded with another digest is redone: its marker goes */
    if (mpk_stage_journal_find(st, name, &old) && old != digest && format_mark(mark, MPK_SHARD_MARK, old, name)) {
        char *p = mpk_path_join(st->tmp, mark);
        if (p)
            unlink(p);
        free(p);
    }
    if (!format_mark(mark, MPK_SHARD_MARK, digest, name))
        return MPK_OK; /* a name this long is not recorded: a resume redoes it */
    return create_mark(st->tmp, mark, !st->o->no_fsync, err);
}

static mpk_status rename_into_place(mpk_stage *st, bool force, bool *exchanged, mpk_error *err)
{
    *exchanged = false;
    if (mpk_fault_point("rename"))
        return mpk_error_set(err, MPK_E_IO, errno, st->dst, "cannot rename %s into place: %s", st->tmp,
                             strerror(errno));
    if (force) /* again: what is there now (a folder may have appeared since the run began) */
        MPK_TRY(mpk_force_check(st->dst, err));
    if (force && renameat2(AT_FDCWD, st->tmp, AT_FDCWD, st->dst, RENAME_EXCHANGE) == 0) {
        *exchanged = true;
        return MPK_OK;
    }
    if (force && errno != ENOENT && errno != EINVAL && errno != ENOSYS)
        return mpk_error_set(err, MPK_E_IO, errno, st->dst, "cannot exchange %s with it: %s", st->tmp,
                             strerror(errno));
    if (force && errno != ENOENT) {
        /* no RENAME_EXCHANGE here (some network file systems): move the old one aside first;
         * a crash between the two renames leaves it at the temporary name + ".old" */
        char *old = mpk_alloc(strlen(st->tmp) + 8);
        if (!old)
            MPK_FAIL(err, MPK_E_NOMEM, st->dst, "out of memory");
        sprintf(old, "%s.old", st->tmp);
        mpk_status s = MPK_OK;
        if (rename(st->dst, old) != 0)
            s = mpk_error_set(err, MPK_E_IO, errno, st->dst, "cannot move the old destination aside: %s",
                              strerror(errno));
        else if (rename(st->tmp, st->dst) != 0) {
            s = mpk_error_set(err, MPK_E_IO, errno, st->dst, "cannot rename into place: %s", strerror(errno));
            rename(old, st->dst);
        } else {
            mpk_rmrf(old);
        }
        free(old);
        return s;
    }
    if (renameat2(AT_FDCWD, st->tmp, AT_FDCWD, st->dst, RENAME_NOREPLACE) == 0)
        return MPK_OK;
    if (errno == EINVAL || errno == ENOSYS) { /* no RENAME_NOREPLACE: check, then rename */
        struct stat sb;
        if (lstat(st->dst, &sb) != 0 && rename(st->tmp, st->dst) == 0)
            return MPK_OK;
        errno = EEXIST;
    }
    if (errno == EEXIST || errno == ENOTEMPTY)
        return mpk_error_set(err, MPK_E_DST_EXISTS, EEXIST, st->dst,
                             "the destination appeared while this run was writing (another run, or "
                             "someone else); it was left as it is and this run's output discarded");
    return mpk_error_set(err, MPK_E_IO, errno, st->dst, "cannot rename %s into place: %s", st->tmp, strerror(errno));
}

/* ---------------------------------------------------------------- privacy */

typedef struct {
    char **names;
    mode_t *modes;
    size_t n;
    mode_t shards, all;          /* intersections: SRC's checkpoint files, every file of SRC */
} src_modes;

static bool weights_name(const char *name)
{
    return mpk_str_ends(name, ".safetensors") || mpk_str_ends(name, ".safetensors.mpkz") ||
           mpk_str_ends(name, ".safetensors.index.json");
}

/* The permission bits of SRC's top-level files (links followed: a Hub cache's blobs). */
static mpk_status read_modes(const char *dir, const char *only, src_modes *m, mpk_error *err)
{
    m->shards = m->all = 0777;
    DIR *d = opendir(dir);
    if (!d)
        return mpk_error_set(err, MPK_E_IO, errno, dir, "cannot list it to read its files' permissions: %s",
                             strerror(errno));
    mpk_status s = MPK_OK;
    for (struct dirent *e; s == MPK_OK && (e = readdir(d));) {
        struct stat sb;
        if (only && strcmp(e->d_name, only) != 0 && strcmp(e->d_name, "config.json") != 0)
            continue;
        char *p = mpk_path_join(dir, e->d_name);
        bool nomem = !p, reg = p && stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
        free(p);
        if (nomem) {
            s = mpk_error_set(err, MPK_E_NOMEM, 0, dir, "out of memory");
        } else if (reg) {
            char **nn = realloc(m->names, (m->n + 1) * sizeof *nn);
            mode_t *nm = nn ? realloc(m->modes, (m->n + 1) * sizeof *nm) : NULL;
            if (nn)
                m->names = nn;
            if (nm)
                m->modes = nm;
            if (!nm || !(nn[m->n] = mpk_strndup(e->d_name, strlen(e->d_name)))) {
                s = mpk_error_set(err, MPK_E_NOMEM, 0, dir, "out of memory");
            } else {
                m->modes[m->n++] = sb.st_mode & 0777;
                m->all &= sb.st_mode;
                if (weights_name(e->d_name))
                    m->shards &= sb.st_mode;
            }
        }
    }
    closedir(d);
    return s;
}

static bool mode_of(const src_modes *m, const char *name, size_t cut, const char *add, mode_t *mode)
{
    for (size_t i = 0; i < m->n; i++) {
        size_t l = strlen(m->names[i]);
        if (add ? l == strlen(name) + strlen(add) && strncmp(m->names[i], name, strlen(name)) == 0 &&
                      strcmp(m->names[i] + strlen(name), add) == 0
                : l + cut == strlen(name) && strncmp(m->names[i], name, l) == 0) {
            *mode = m->modes[i];
            return true;
        }
    }
    return false;
}

/* What an output file of this name may show: a container or file decompressed takes its
 * counterpart's bits; a shard or index the intersection of SRC's shards'; a file SRC also has
 * (copied, or rewritten like config.json) that file's; moepack's records, which embed SRC's
 * config and names, the intersection of all SRC's files. */
static mode_t cap_for(const src_modes *m, const char *name)
{
    mode_t c;
    if (mpk_str_ends(name, ".mpkz") && mode_of(m, name, 5, NULL, &c))
        return c;
    if (mode_of(m, name, 0, ".mpkz", &c))
        return c;
    if (weights_name(name))
        return m->shards;
    if (strncmp(name, "moepack.", 8) == 0)
        return m->all;
    return mode_of(m, name, 0, NULL, &c) ? c : m->shards;
}

/* Output files take the permission bits of the source files they are built from (never more
 * than the umask allows; the owner keeps read and write), DST's folder those of SRC's (the
 * owner keeps full access), as cp -r keeps a 0600 file 0600. Side files (tree.c) already
 * carry their own. */
static mpk_status protect(mpk_stage *st, const char *src, mpk_error *err)
{
    unsigned um = mpk_umask();
    mode_t dir_mode = 0777 & ~um;
    struct stat sb;
    if (!src || stat(src, &sb) != 0)
        return chmod(st->tmp, dir_mode) == 0 ? MPK_OK
                                             : mpk_error_set(err, MPK_E_IO, errno, st->tmp, "cannot set the mode: %s",
                                                             strerror(errno));
    src_modes m = {0};
    char *dir = NULL;
    const char *only = NULL;
    if (S_ISDIR(sb.st_mode)) {
        dir = mpk_strndup(src, strlen(src));
    } else { /* a single file: it and the config.json beside it */
        const char *slash = strrchr(src, '/');
        dir = slash ? mpk_strndup(src, slash == src ? 1 : (size_t)(slash - src)) : mpk_strndup(".", 1);
        only = slash ? slash + 1 : src;
    }
    struct stat db;
    mpk_status s = !dir ? mpk_error_set(err, MPK_E_NOMEM, 0, src, "out of memory") : read_modes(dir, only, &m, err);
    if (s == MPK_OK && stat(dir, &db) == 0)
        dir_mode = ((db.st_mode & 0777) | 0700) & ~um;
    int fd = s == MPK_OK ? open(st->tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (s == MPK_OK && !d)
        s = mpk_error_set(err, MPK_E_IO, errno, st->tmp, "cannot list: %s", strerror(errno));
    for (struct dirent *e; s == MPK_OK && (e = readdir(d));) {
        struct stat fb;
        if (fstatat(fd, e->d_name, &fb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(fb.st_mode))
            continue;
        mode_t want = (fb.st_mode & 0777 & cap_for(&m, e->d_name)) | (fb.st_mode & 0600);
        if (want != (fb.st_mode & 0777) && fchmodat(fd, e->d_name, want, 0) != 0)
            s = mpk_error_set(err, MPK_E_IO, errno, e->d_name, "cannot set the mode: %s", strerror(errno));
    }
    if (d)
        closedir(d);
    else if (fd >= 0)
        close(fd);
    for (size_t i = 0; i < m.n; i++)
        free(m.names[i]);
    free(m.names);
    free(m.modes);
    free(dir);
    if (s == MPK_OK && chmod(st->tmp, dir_mode) != 0)
        s = mpk_error_set(err, MPK_E_IO, errno, st->tmp, "cannot set the mode: %s", strerror(errno));
    return s;
}

/* ---------------------------------------------------------------- landing */

mpk_status mpk_stage_commit(mpk_stage *st, const char *src, bool force, mpk_error *err)
{
    bool sync = !st->o->no_fsync;
    remove_marks(st->tmp, false);
    MPK_TRY(protect(st, src, err));
    if (sync)
        MPK_TRY(mpk_fsync_dir(st->tmp, err));
    bool exchanged;
    MPK_TRY(rename_into_place(st, force, &exchanged, err));
    st->committed = true;
    if (sync)
        MPK_TRY(mpk_fsync_dir(st->parent, err));
    if (exchanged) /* the old destination, now at the temporary name */
        mpk_rmrf(st->tmp);
    return MPK_OK;
}

void mpk_stage_close(mpk_stage *st, bool keep)
{
    if (st->tmp && st->tmp[0] && !st->committed && !keep && !st->attached)
        mpk_rmrf(st->tmp);
    free(st->dst);
    free(st->parent);
    free(st->base);
    free(st->tmp);
    free(st->journal);
    memset(st, 0, sizeof *st);
}

