/* signals.c — what a terminating signal does while a command writes DST: the staging directory
 * goes, nothing lands, and moepack ends by that signal (the commands of cmd_convert.c call
 * mpk_cli_guard_begin / mpk_cli_guard_end around their requests). */
#define _GNU_SOURCE
#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---------------------------------------------------------------- terminating signals
 *
 * A signal that would end the process while a command writes DST (Ctrl-C, SIGTERM, a closed
 * terminal's SIGHUP, SIGPIPE from a closed stderr, a batch system's SIGXCPU or SIGUSR1, an
 * alarm...) first has what the command staged removed, then ends the process by the same signal
 * (its default action, raised again), so that the parent sees it: never a staging directory
 * (DIR/.NAME.moepack-tmp.*) left for the next run into DST to find.
 *  - pack, unpack and convert hand the library a cancel flag: the handler raises it, the library
 *    stops, removes its staging directory and returns, the command says "cancelled" and raises
 *    the signal again (with --resume it keeps the staging directory for the next run, as on any
 *    failure; the library reads the flag once more just before the landing: only a flag raised
 *    during the rename itself is too late, DST lands complete and the signal then ends the
 *    process). A second signal of the same kind (Ctrl-C twice) ends the process
 *    at once; not SIGPIPE or SIGXCPU, which the kernel repeats on its own.
 *  - compress, decompress and synth take no cancel flag: the handler itself removes this
 *    process's staging directories beside DST (the library's owner-recorded names,
 *    .NAME.moepack-tmp.HOST.PID.START.XXXXXX, and synth's NAME.synth-src-XXXXXX) with system
 *    calls only, then raises the signal again. Linux hands a process-directed signal to the main
 *    thread, the one thread that creates staging directories, so none appears after the sweep.
 * Signals ignored when moepack started (nohup's SIGHUP, a background job's SIGINT) stay ignored,
 * as does SIGXFSZ (main.c: a write past the file size limit fails with EFBIG, reported and cleaned
 * up). Signals of faults (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP, SIGSYS) keep their
 * default action: the process state is not to be trusted. Under MPI the launcher's signals
 * cancel on every rank, which ends with the failure status (no raise: MPI ends first). */
volatile int mpk_cli_cancelled;
static volatile sig_atomic_t caught; /* the first signal caught, 0: none */
static volatile int under_mpi;
static volatile int self_clean;      /* the handler removes our staging and ends the process */
static int stage_dirfd = -1;          /* DST's parent (self_clean) */
static char stage_tail[64];           /* ".PID.START." in our staging directories' names */
static char synth_prefix[NAME_MAX + 1]; /* "NAME.synth-src-" (synth), or "" */
static char synth_seen[16][NAME_MAX + 1]; /* NAME.synth-src-* there before we started */
static size_t n_synth_seen;
static struct {
    int sig;
    struct sigaction old;
} guarded[64];
static size_t n_guarded;

/* The catchable signals whose default action ends the process (faults aside). */
static size_t terminating_signals(int *out, size_t cap)
{
    static const int named[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGPIPE, SIGALRM, SIGUSR1, SIGUSR2, SIGXCPU,
                                SIGXFSZ, SIGVTALRM, SIGPROF, SIGIO,
#ifdef SIGSTKFLT
                                SIGSTKFLT,
#endif
#ifdef SIGPWR
                                SIGPWR,
#endif
    };
    size_t n = 0;
    for (size_t i = 0; i < sizeof named / sizeof named[0] && n < cap; i++)
        out[n++] = named[i];
    for (int s = SIGRTMIN; s <= SIGRTMAX && n < cap; s++)
        out[n++] = s;
    return n;
}

/* Ends the process by sig, its default action (async-signal-safe). */
static void die_by(int sig)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    raise(sig);
    _exit(128 + sig); /* (not reached) */
}

struct mpk_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* rm -rf of dirfd/name with system calls only (async-signal-safe). Entries another thread
 * creates meanwhile make rmdir fail with ENOTEMPTY: the sweep starts over, a bounded number of
 * times. */
static void rm_tree_at(int dirfd, const char *name, int depth)
{
    if (unlinkat(dirfd, name, 0) == 0 || errno == ENOENT || depth > 64)
        return;
    for (int tries = 0; tries < 100; tries++) {
        int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            return;
        _Alignas(8) char buf[2048];
        long n;
        while ((n = syscall(SYS_getdents64, fd, buf, sizeof buf)) > 0)
            for (long off = 0; off < n;) {
                const struct mpk_dirent64 *d = (const void *)(buf + off);
                off += d->d_reclen;
                if (strcmp(d->d_name, ".") != 0 && strcmp(d->d_name, "..") != 0)
                    rm_tree_at(fd, d->d_name, depth + 1);
            }
        close(fd);
        if (unlinkat(dirfd, name, AT_REMOVEDIR) == 0 || (errno != ENOTEMPTY && errno != EEXIST))
            return;
    }
}

/* Whether name (in DST's parent) is a staging directory of this process, or synth's scratch
 * directory made since the command started. */
static bool own_staging(const char *name)
{
    size_t l = strlen(name), tl = strlen(stage_tail);
    if (name[0] == '.' && strstr(name, ".moepack-tmp.") && l > tl + 6 &&
        memcmp(name + l - 6 - tl, stage_tail, tl) == 0)
        return true;
    size_t sl = strlen(synth_prefix);
    if (!sl || strncmp(name, synth_prefix, sl) != 0 || l != sl + 6)
        return false;
    for (size_t i = 0; i < n_synth_seen; i++)
        if (strcmp(synth_seen[i], name) == 0)
            return false;
    return true;
}

/* Removes this process's staging directories beside DST (async-signal-safe). */
static void remove_own_staging(void)
{
    if (stage_dirfd < 0)
        return;
    for (int pass = 0; pass < 2; pass++) { /* (entries removed while listing may hide others) */
        int fd = openat(stage_dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
            return;
        _Alignas(8) char buf[4096];
        long n;
        while ((n = syscall(SYS_getdents64, fd, buf, sizeof buf)) > 0)
            for (long off = 0; off < n;) {
                const struct mpk_dirent64 *d = (const void *)(buf + off);
                off += d->d_reclen;
                if (own_staging(d->d_name))
                    rm_tree_at(stage_dirfd, d->d_name, 0);
            }
        close(fd);
    }
}

static void on_signal(int sig)
{
    int saved = errno;
    if (!caught)
        caught = sig;
    mpk_cli_cancelled = 1;
    if (self_clean) {
        remove_own_staging();
        die_by(sig);
    }
    /* a second one ends the process at once; not under MPI, where the launcher signals a job
     * more than once before its SIGKILL, and the time between is rank 0's to clean up */
    if (!under_mpi && sig != SIGPIPE && sig != SIGXCPU)
        signal(sig, SIG_DFL);
    errno = saved;
}

/* Our start time in clock ticks since boot, as the library records it in staging names. */
static unsigned long long self_start(void)
{
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "re");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    for (int field = 3; field <= 22 && p; field++)
        p = strchr(p + 1, ' ');
    return p ? strtoull(p + 1, NULL, 10) : 0;
}

/* From here until mpk_cli_guard_end(), a terminating signal removes what the command staged for dst
 * (see above); clean: the handler removes it itself (no cancel flag), synth: and synth's scratch
 * directory. */
void mpk_cli_guard_begin(const char *dst, bool clean, bool synth)
{
    caught = 0;
    mpk_cli_cancelled = 0;
    under_mpi = mpk_mpi_size() > 1;
    stage_dirfd = -1;
    synth_prefix[0] = 0;
    n_synth_seen = 0;
    if (clean) {
        char parent[PATH_MAX];
        size_t l = strlen(dst);
        while (l > 1 && dst[l - 1] == '/')
            l--;
        const char *base = dst;
        for (size_t i = 0; i < l; i++)
            if (dst[i] == '/')
                base = dst + i + 1;
        size_t pl = (size_t)(base - dst);
        if (pl == 0)
            snprintf(parent, sizeof parent, ".");
        else
            snprintf(parent, sizeof parent, "%.*s", (int)(pl > 1 ? pl - 1 : pl), dst);
        stage_dirfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        snprintf(stage_tail, sizeof stage_tail, ".%ld.%llu.", (long)getpid(), self_start());
        size_t bl = l - pl;
        if (synth && stage_dirfd >= 0 && bl > 0 && bl + 16 <= NAME_MAX) {
            snprintf(synth_prefix, sizeof synth_prefix, "%.*s.synth-src-", (int)bl, base);
            DIR *d = fdopendir(dup(stage_dirfd));
            struct dirent *e;
            while (d && (e = readdir(d)))
                if (strncmp(e->d_name, synth_prefix, strlen(synth_prefix)) == 0 &&
                    n_synth_seen < sizeof synth_seen / sizeof synth_seen[0])
                    snprintf(synth_seen[n_synth_seen++], sizeof synth_seen[0], "%s", e->d_name);
            if (d)
                closedir(d);
        }
    }
    self_clean = clean;
    int sigs[64];
    size_t n = terminating_signals(sigs, 64);
    n_guarded = 0;
    for (size_t i = 0; i < n; i++) {
        struct sigaction old, act;
        if (sigaction(sigs[i], NULL, &old) != 0 || old.sa_handler == SIG_IGN)
            continue; /* (nohup's SIGHUP, a background job's SIGINT, SIGXFSZ: ignored they stay) */
        /* a handler already there (an MPI library's) is kept, but for SIGINT and SIGTERM */
        if (old.sa_handler != SIG_DFL && sigs[i] != SIGINT && sigs[i] != SIGTERM)
            continue;
        memset(&act, 0, sizeof act);
        act.sa_handler = on_signal;
        sigemptyset(&act.sa_mask);
        for (size_t k = 0; k < n; k++) /* one handler at a time */
            sigaddset(&act.sa_mask, sigs[k]);
        act.sa_flags = SA_RESTART;
        if (sigaction(sigs[i], &act, NULL) == 0) {
            guarded[n_guarded].sig = sigs[i];
            guarded[n_guarded++].old = old;
        }
    }
}

/* The dispositions as they were; the command's output is in place or removed by now. When a
 * signal was caught, the process ends by it (not under MPI: the caller returns a failure). */
void mpk_cli_guard_end(void)
{
    for (size_t i = 0; i < n_guarded; i++)
        sigaction(guarded[i].sig, &guarded[i].old, NULL);
    n_guarded = 0;
    self_clean = 0;
    if (stage_dirfd >= 0)
        close(stage_dirfd);
    stage_dirfd = -1;
    if (caught && !under_mpi) {
        fflush(stdout);
        die_by(caught);
    }
}

