/* files.c — small file helpers every writer shares: the write-path fault points (test hook),
 * the umask, fsync of files and directories, opening regular files without blocking, reading
 * a whole file, and atomic replacement of a file. */
#define _GNU_SOURCE
#include "mpk_formats.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
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
        return mpk_error_set(err, MPK_E_IO, 0, path, "not a regular file (a %s)",
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

