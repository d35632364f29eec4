/* hub.c — the Hugging Face hub cache as a source, read only (huggingface_hub's layout):
 *
 *   CACHE/models--ORG--NAME/refs/REV            the commit hash REV (a branch or tag) points at
 *   CACHE/models--ORG--NAME/snapshots/HASH/F    F as a relative link ../../blobs/ID (or a file)
 *   CACHE/models--ORG--NAME/blobs/ID            the bytes
 *
 * CACHE is $HF_HUB_CACHE, else $HF_HOME/hub, else $HOME/.cache/huggingface/hub. Nothing is
 * downloaded: an id that is not in the cache is an error that says how to fetch it.
 */
#define _GNU_SOURCE
#include "mpk_formats.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static bool is_dir(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* ORG/NAME with huggingface_hub's characters ([A-Za-z0-9._-], no "--" or ".." inside). */
static bool repo_id_like(const char *s)
{
    const char *slash = strchr(s, '/');
    if (!slash || slash == s || !slash[1] || strchr(slash + 1, '/') || strstr(s, "--") || strstr(s, ".."))
        return false;
    for (const char *p = s; *p; p++)
        if (!(*p == '/' || *p == '.' || *p == '_' || *p == '-' || (*p >= 'a' && *p <= 'z') ||
              (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')))
            return false;
    return s[0] != '.' && s[0] != '-';
}

char *mpk_hub_cache_dir(void)
{
    const char *c = getenv("HF_HUB_CACHE"), *home = getenv("HF_HOME");
    if (c && *c)
        return mpk_strndup(c, strlen(c));
    if (home && *home)
        return mpk_path_join(home, "hub");
    home = getenv("HOME");
    return home && *home ? mpk_path_join(home, ".cache/huggingface/hub") : NULL;
}

/* The snapshot of repo folder repo for revision rev (a ref's name or a commit hash). */
static mpk_status snapshot_of(const char *repo, const char *shown, const char *rev, char **out, mpk_error *err)
{
    char *ref = mpk_alloc(strlen(repo) + strlen(rev) + 8), *text = NULL;
    if (!ref)
        MPK_FAIL(err, MPK_E_NOMEM, repo, "out of memory");
    sprintf(ref, "%s/refs/%s", repo, rev);
    mpk_error ig;
    const char *hash = rev;
    if (!strstr(rev, "..") && mpk_read_file(ref, &text, NULL, &ig) == MPK_OK) {
        text[strcspn(text, " \r\n")] = 0;
        hash = text;
    }
    free(ref);
    char *snap = NULL;
    mpk_status s = MPK_OK;
    if (!*hash || strchr(hash, '/') || strstr(hash, "..") ||
        !(snap = mpk_alloc(strlen(repo) + strlen(hash) + 16)))
        s = *hash && !strchr(hash, '/') && !strstr(hash, "..")
                ? mpk_error_set(err, MPK_E_NOMEM, 0, repo, "out of memory")
                : mpk_error_set(err, MPK_E_NOT_FOUND, 0, repo, "revision '%s' of %s: not a ref or a commit hash", rev,
                                shown);
    if (s == MPK_OK) {
        sprintf(snap, "%s/snapshots/%s", repo, hash);
        if (!is_dir(snap))
            s = mpk_error_set(err, MPK_E_NOT_FOUND, 0, snap,
                              "revision '%s' of %s is not in the cache (no refs/%s, no snapshot of that name); "
                              "moepack downloads nothing: huggingface-cli download %s --revision %s fetches it",
                              rev, shown, rev, shown, rev);
    }
    free(text);
    if (s != MPK_OK) {
        free(snap);
        return s;
    }
    *out = snap;
    return MPK_OK;
}

/* "models--ORG--NAME" -> "ORG/NAME" (for messages). */
static void id_of_folder(const char *base, char *id, size_t cap)
{
    snprintf(id, cap, "%s", base + 8);
    char *dd = strstr(id, "--");
    if (dd) {
        *dd = '/';
        memmove(dd + 1, dd + 2, strlen(dd + 2) + 1);
    }
}

mpk_status mpk_hub_resolve(const char *src, const char *revision, char **out, mpk_error *err)
{
    *out = NULL;
    struct stat sb;
    if (stat(src, &sb) == 0) {
        size_t l = strlen(src);
        while (l > 1 && src[l - 1] == '/')
            l--;
        char *p = mpk_strndup(src, l);
        if (!p)
            MPK_FAIL(err, MPK_E_NOMEM, src, "out of memory");
        const char *base = strrchr(p, '/') ? strrchr(p, '/') + 1 : p;
        char *snaps = S_ISDIR(sb.st_mode) ? mpk_path_join(p, "snapshots") : NULL;
        if (strncmp(base, "models--", 8) == 0 && snaps && is_dir(snaps)) { /* a repo folder */
            char id[NAME_MAX + 1];
            id_of_folder(base, id, sizeof id);
            free(snaps);
            mpk_status s = snapshot_of(p, id, revision ? revision : "main", out, err);
            free(p);
            return s;
        }
        free(snaps);
        if (revision) {
            free(p);
            MPK_FAIL_ABOUT(err, MPK_FIELD_REVISION, MPK_E_USAGE, src, "a revision applies to a repo id (ORG/NAME) or a Hugging Face cache "
                     "folder models--ORG--NAME, not to a local checkpoint");
        }
        *out = p;
        return MPK_OK;
    }
    if (errno != ENOENT || !repo_id_like(src))
        return mpk_error_set(err, errno == ENOENT ? MPK_E_NOT_FOUND : MPK_E_IO, errno, src, "cannot open: %s",
                             strerror(errno));
    char *cache = mpk_hub_cache_dir();
    if (!cache)
        MPK_FAIL(err, MPK_E_NOT_FOUND, src, "no such file or directory, and no Hugging Face cache to look the id up "
                 "in (HF_HUB_CACHE, HF_HOME and HOME are unset)");
    char *folder = mpk_alloc(strlen(src) + 16), *repo = NULL;
    if (folder) {
        sprintf(folder, "models--%s", src);
        char *slash = strchr(folder, '/');
        memmove(slash + 2, slash + 1, strlen(slash + 1) + 1);
        slash[0] = slash[1] = '-';
        repo = mpk_path_join(cache, folder);
    }
    mpk_status s = MPK_OK;
    if (!repo)
        s = mpk_error_set(err, MPK_E_NOMEM, 0, src, "out of memory");
    else if (!is_dir(repo))
        s = mpk_error_set(err, MPK_E_NOT_FOUND, 0, src,
                          "neither a local path nor in the Hugging Face cache (no %s); moepack downloads "
                          "nothing: huggingface-cli download %s fetches it", repo, src);
    else
        s = snapshot_of(repo, src, revision ? revision : "main", out, err);
    free(cache);
    free(folder);
    free(repo);
    return s;
}

char *mpk_hub_blobs_of(const char *dir)
{
    char *real = realpath(dir, NULL);
    if (!real)
        return NULL;
    /* .../models--X/snapshots/HASH */
    char *s1 = strrchr(real, '/');
    char *s2 = NULL;
    if (s1 && s1 != real) {
        *s1 = 0;
        s2 = strrchr(real, '/');
    }
    char *blobs = NULL;
    if (s2 && strcmp(s2 + 1, "snapshots") == 0) {
        *s2 = 0;
        const char *repo = strrchr(real, '/') ? strrchr(real, '/') + 1 : real;
        if (strncmp(repo, "models--", 8) == 0 || strncmp(repo, "datasets--", 10) == 0) {
            blobs = mpk_path_join(real, "blobs");
            if (blobs && !is_dir(blobs)) {
                free(blobs);
                blobs = NULL;
            }
        }
    }
    free(real);
    return blobs;
}

bool mpk_path_under(const char *real, const char *dir)
{
    size_t l = strlen(dir);
    return strncmp(real, dir, l) == 0 && (real[l] == '/' || (l == 1 && dir[0] == '/'));
}
