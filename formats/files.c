/* files.c — small file helpers every reader and writer shares: the write-path fault points
 * (test hook), the umask, preallocation, fsync of files and directories, opening regular files without
 * blocking, reading a whole file, atomic replacement of a file, pread/pwrite until done, and
 * the check that an opened file is still the one opened. The other files of formats/ call
 * down into this one; it calls none of them. */
#define _GNU_SOURCE
#include "formats_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- fault points */

long mpk_fault_countdown = 0, mpk_fault_passed = 0, mpk_fault_fsyncs = 0;
int mpk_fault_errno = 0;

int mpk_fault_point(const char *op)
{
    __atomic_fetch_add(&mpk_fault_passed, 1, __ATOMIC_RELAXED);
    if (strcmp(op, "fsync") == 0)
        __atomic_fetch_add(&mpk_fault_fsyncs, 1, __ATOMIC_RELAXED);
    if (__atomic_load_n(&mpk_fault_countdown, __ATOMIC_RELAXED) <= 0 ||
        __atomic_fetch_sub(&mpk_fault_countdown, 1, __ATOMIC_RELAXED) != 1)
        return 0;
    if (mpk_fault_errno < 0) { /* paused here: a test changes the world meanwhile */
        raise(SIGSTOP);
        return 0;
    }
    if (!mpk_fault_errno)
        raise(SIGKILL);
    errno = mpk_fault_errno;
    return mpk_fault_errno;
}

unsigned mpk_umask(void)
{
    FILE *f = fopen("/proc/self/status", "re");
    char line[256];
    unsigned m = 0;
    bool found = false;
    while (f && !found && fgets(line, sizeof line, f))
        found = sscanf(line, "Umask: %o", &m) == 1;
    if (f)
        fclose(f);
    if (!found) { /* before Linux 4.7: read it by setting it (racy only against other umask calls) */
        mode_t old = umask(022);
        umask(old);
        m = (unsigned)old;
    }
    return m & 0777;
}

/* Allocating a new file's blocks before its bytes are written: each page written then lands in
 * a block that is already there, which spares ext4 its reservation of a delayed block for every
 * page (decompress, one thread, 21 interleaved rounds: 1.12x less CPU for BF16, 1.05x for FP8;
 * pack, 2 threads: 1.07x and 1.11x faster in two runs; bench/results/2026-12-07-mpkz-round2.md),
 * and a file system short of room says so before the work. */
mpk_status mpk_preallocate(int fd, const char *path, uint64_t size, mpk_error *err)
{
    if (!size || (!mpk_fault_point("fallocate") && fallocate(fd, 0, 0, (off_t)size) == 0))
        return MPK_OK;
    if (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL) /* written as before */
        return MPK_OK;
    return mpk_error_set(err, MPK_E_IO, errno, path, "cannot reserve its %llu bytes on disk: %s",
                         (unsigned long long)size, strerror(errno));
}

mpk_status mpk_fsync_fd(int fd, const char *path, mpk_error *err)
{
    if (mpk_fault_point("fsync") || fsync(fd) != 0)
        return mpk_error_set(err, MPK_E_IO, errno, path, "fsync failed: %s", strerror(errno));
    return MPK_OK;
}

mpk_status mpk_fsync_dir(const char *path, mpk_error *err)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return mpk_error_set(err, MPK_E_IO, errno, path, "cannot open the directory to fsync it: %s",
                             strerror(errno));
    mpk_status s = mpk_fsync_fd(fd, path, err);
    close(fd);
    return s;
}

/* ---------------------------------------------------------------- files */

mpk_status mpk_open_regular(const char *path, int *fd_out, struct stat *st_out, mpk_error *err)
{
    *fd_out = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return mpk_error_set(err, errno == ENOENT ? MPK_E_NOT_FOUND : MPK_E_IO, errno, path,
                             "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return mpk_error_set(err, MPK_E_IO, e, path, "cannot stat: %s", strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        /* a directory is EISDIR (what read(2) would say); a FIFO, socket or device none */
        return mpk_error_set(err, MPK_E_IO, S_ISDIR(st.st_mode) ? EISDIR : 0, path, "not a regular file (a %s)",
                             S_ISDIR(st.st_mode) ? "directory" : S_ISFIFO(st.st_mode) ? "FIFO"
                             : S_ISSOCK(st.st_mode) ? "socket" : "device");
    }
    /* io_uring honours O_NONBLOCK on regular files (EAGAIN instead of waiting): drop it */
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        int e = errno;
        close(fd);
        return mpk_error_set(err, MPK_E_IO, e, path, "cannot clear O_NONBLOCK: %s", strerror(e));
    }
    *fd_out = fd;
    if (st_out)
        *st_out = st;
    return MPK_OK;
}

mpk_status mpk_read_file(const char *path, char **out, size_t *len, mpk_error *err)
{
    int fd;
    struct stat st;
    MPK_TRY(mpk_open_regular(path, &fd, &st, err));
    size_t n = (size_t)st.st_size;
    char *buf = mpk_alloc(n + 1);
    if (!buf) {
        close(fd);
        MPK_FAIL(err, MPK_E_NOMEM, path, "out of memory reading %zu bytes", n);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : 0;
            free(buf);
            close(fd);
            return mpk_error_set(err, MPK_E_IO, e, path, "read failed at byte %zu: %s", got,
                                 e ? strerror(e) : "unexpected end of file");
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    *out = buf;
    if (len)
        *len = n;
    return MPK_OK;
}

mpk_status mpk_write_text_in(const char *dir, const char *name, char *text, bool sync, mpk_error *err)
{
    char *path = mpk_path_join(dir, name);
    mpk_status s = text && path ? mpk_write_file(path, text, strlen(text), sync, err)
                                : mpk_error_set(err, MPK_E_NOMEM, 0, dir, "out of memory");
    free(text);
    free(path);
    return s;
}

mpk_status mpk_write_file(const char *path, const void *buf, size_t len, bool sync, mpk_error *err)
{
    char *dcopy = mpk_strndup(path, strlen(path)), *bcopy = mpk_strndup(path, strlen(path));
    char *tmp = dcopy && bcopy ? mpk_alloc(strlen(path) + 32) : NULL;
    if (!tmp) {
        free(dcopy);
        free(bcopy);
        MPK_FAIL(err, MPK_E_NOMEM, path, "out of memory");
    }
    const char *dir = dirname(dcopy);
    sprintf(tmp, "%s/.%s.tmp-XXXXXX", dir, basename(bcopy));
    mpk_status s = MPK_OK;
    int fd = mpk_fault_point("create") ? -1 : mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        s = mpk_error_set(err, MPK_E_IO, errno, path, "cannot create a temporary file beside it: %s",
                          strerror(errno));
        goto out;
    }
    for (const char *p = buf; len && s == MPK_OK;) {
        ssize_t w = mpk_fault_point("write") ? -1 : write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            s = mpk_error_set(err, MPK_E_IO, errno, tmp, "write of %zu bytes failed: %s", len, strerror(errno));
        else {
            p += w;
            len -= (size_t)w;
        }
    }
    if (s == MPK_OK && fchmod(fd, 0666 & ~mpk_umask()) != 0)
        s = mpk_error_set(err, MPK_E_IO, errno, tmp, "cannot set the mode: %s", strerror(errno));
    if (s == MPK_OK && sync)
        s = mpk_fsync_fd(fd, tmp, err);
    if (close(fd) != 0 && s == MPK_OK)
        s = mpk_error_set(err, MPK_E_IO, errno, tmp, "close failed: %s", strerror(errno));
    if (s == MPK_OK && (mpk_fault_point("rename") || rename(tmp, path) != 0))
        s = mpk_error_set(err, MPK_E_IO, errno, path, "cannot rename %s into place: %s", tmp, strerror(errno));
    if (s != MPK_OK)
        unlink(tmp);
    else if (sync)
        s = mpk_fsync_dir(dir, err);
out:
    free(tmp);
    free(dcopy);
    free(bcopy);
    return s;
}

char *mpk_path_join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    bool slash = la && a[la - 1] == '/';
    char *p = mpk_alloc(la + lb + 2);
    if (!p)
        return NULL;
    memcpy(p, a, la);
    size_t o = la;
    if (!slash)
        p[o++] = '/';
    memcpy(p + o, b, lb + 1);
    return p;
}

/* ---------------------------------------------------------------- reading and writing at an offset */

mpk_status mpk_pread_all(int fd, void *buf, uint64_t len, uint64_t off, const char *path, const char *tensor,
                         mpk_error *err)
{
    char *p = buf;
    while (len) {
        ssize_t k = pread(fd, p, len, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return mpk_error_set(err, MPK_E_IO, k < 0 ? errno : 0, path, "reading tensor '%s' at %llu: %s",
                                 tensor, (unsigned long long)off, k < 0 ? strerror(errno) : "file ends early");
        p += k;
        off += (uint64_t)k;
        len -= (uint64_t)k;
    }
    return MPK_OK;
}

#define MPK_WRITE_PIECE (64u << 10)

/* The most bytes one pwrite writes (mpk_tune's write_piece overrides; UINT64_MAX: no limit). The kernel
 * gives a buffered write page-cache folios as large as the write (ext4 since 6.16); on a VM that
 * hands free memory back to its host (free page reporting), large folios come from that memory
 * and every first touch of it faults in the host: the same 3.2 GB written in 4 MiB calls took
 * 9-30 s, in 32 KiB calls 1.2-2.1 s (bench/RESULTS.md). Small calls keep folios small; 64 KiB,
 * the size cp's in-kernel copies write in, beat 32 KiB in 5 of 5 rounds of a durable
 * pack --dequantize (median 2.52 s against 3.16 s). */
static size_t write_piece(void)
{
    uint64_t n = mpk_tuning_now()->write_piece;
    return !n ? MPK_WRITE_PIECE : n > SIZE_MAX ? SIZE_MAX : (size_t)n;
}

mpk_status mpk_pwrite_all(int fd, const void *buf, size_t len, uint64_t off, const char *where,
                          mpk_error *err)
{
    const char *p = buf;
    size_t piece = write_piece();
    while (len) {
        size_t n = len < piece ? len : piece;
        ssize_t w = mpk_fault_point("pwrite") ? -1 : pwrite(fd, p, n, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return mpk_error_set(err, MPK_E_IO, errno, where, "write of %zu bytes at %llu failed: %s",
                                 len, (unsigned long long)off, strerror(errno));
        p += w;
        len -= (size_t)w;
        off += (uint64_t)w;
    }
    return MPK_OK;
}

/* ---------------------------------------------------------------- is it still the file opened */

void mpk_file_id_of(const struct stat *st, mpk_file_id *id)
{
    id->dev = (uint64_t)st->st_dev;
    id->ino = (uint64_t)st->st_ino;
    id->size = (uint64_t)st->st_size;
    id->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
    id->ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
}

/* Here rather than in ckpt.c: mpkz.c checks its one file with it, and ckpt.c calls mpkz.c, so
 * in ckpt.c the two files would call each other. */
mpk_status mpk_ckpt_check_unchanged(const mpk_ckpt *c, mpk_error *err)
{
    for (size_t i = 0; i < c->n_shards; i++) {
        const mpk_shard *sh = &c->shards[i];
        struct stat now;
        mpk_file_id a;
        const char *what = NULL;
        if (stat(sh->path, &now) != 0)
            what = "its name (removed or renamed)";
        else if (mpk_file_id_of(&now, &a), a.dev != sh->id.dev || a.ino != sh->id.ino)
            what = "the file at its name (replaced by another)";
        else if (fstat(sh->fd, &now) != 0)
            return mpk_error_set(err, MPK_E_IO, errno, sh->path, "cannot stat: %s", strerror(errno));
        else if (mpk_file_id_of(&now, &a), a.size != sh->id.size)
            what = "its size";
        else if (a.mtime_ns != sh->id.mtime_ns)
            what = "its modification time";
        else if (a.ctime_ns != sh->id.ctime_ns)
            what = "its status-change time";
        if (what)
            MPK_FAIL(err, MPK_E_CHANGED, sh->path, "the source changed while it was read (%s "
                     "differs from when it was opened): what was read cannot be trusted; run again "
                     "when it is stable", what);
    }
    return MPK_OK;
}
