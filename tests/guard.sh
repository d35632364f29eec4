#!/bin/sh
# guard.sh MOEPACK — --force and mounts (issue 45 items 2 and 3), in a private mount namespace:
# a bind mount of a folder inside DST given as SRC, and a file system mounted inside DST. Runs
# itself again under `unshare -m`; exits 77 (skip) where the machine does not allow that.
set -u
M=$1
if [ "${MPK_GUARD_NS:-}" != 1 ]; then
  if ! unshare -m --propagation private true 2>/dev/null; then
    echo "guard.sh: no private mount namespace here (unshare -m refused): skipped"
    exit 77
  fi
  MPK_GUARD_NS=1 exec unshare -m --propagation private sh "$0" "$@"
fi
tmp=$(mktemp -d /tmp/mpk-guard-XXXXXX)
cleanup() {
  for m in $(grep " $tmp" /proc/self/mounts | cut -d' ' -f2 | sort -r); do umount "$m" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
. "$(dirname "$0")/shlib.sh"
sums() { (cd "$1" && find . | sort && find . -type f | sort | xargs cat | md5sum); }

"$M" synth --layers 2 "$tmp/src" >/dev/null || exit 1
shard=$(ls "$tmp/src/"*.safetensors | head -1)

# item 2. reproducer: mkdir -p D; cp -r src D/sub; cp shard D/old.safetensors;
# mount --bind D/sub B; moepack pack B D --force -> exit 0, D/sub gone
D=$tmp/D B=$tmp/B
mkdir -p "$D" "$B" && cp -r "$tmp/src" "$D/sub" && cp "$shard" "$D/old.safetensors"
mount --bind "$D/sub" "$B" || { echo "guard.sh: mount --bind refused: skipped"; exit 77; }
before=$(sums "$D")
for c in "pack $B $D --force -q" "compress $B $D --force -q"; do
  expect 2 "$c: SRC, a bind mount of a folder inside DST, refused" -- "$M" $c
  grep -q "holds the source" "$tmp/err" && grep -q "sub" "$tmp/err" && ok "... the message names the folder" \
    || bad "the message does not say DST holds SRC"
done
"$M" pack "$tmp/src" "$tmp/pk" -q && cp "$tmp/pk/"*.safetensors "$D/sub/" 2>/dev/null
"$M" compress "$tmp/src" "$tmp/z" -q
umount "$B"; rm -rf "$D/sub"; cp -r "$tmp/pk" "$D/sub"; mount --bind "$D/sub" "$B"
before=$(sums "$D")
expect 2 "unpack from a bind mount of a folder inside DST refused" -- "$M" unpack "$B" "$D" --force -q
umount "$B"; rm -rf "$D/sub"; cp -r "$tmp/z" "$D/sub"; mount --bind "$D/sub" "$B"
before=$(sums "$D")
expect 2 "decompress from a bind mount of a folder inside DST refused" -- "$M" decompress "$B" "$D" --force
[ "$(sums "$D")" = "$before" ] && ok "DST and the source in it untouched" || bad "DST changed"
ls -A "$tmp" | grep -q moepack-tmp && bad "staging litter left" || ok "no staging litter"
umount "$B"

# a single source file bind-mounted from inside DST (SRC's file lives under DST)
"$M" synth --layers 1 --shards 1 "$tmp/one" >/dev/null && cp "$tmp/one/"*.safetensors "$D/old.safetensors"
mkdir -p "$tmp/S2" && cp "$tmp/one/config.json" "$tmp/S2/" && touch "$tmp/S2/model.safetensors"
mount --bind "$D/old.safetensors" "$tmp/S2/model.safetensors"
expect 2 "a source file that is a file inside DST (bind mount) refused" -- "$M" pack "$tmp/S2" "$D" --force -q
grep -q "its file" "$tmp/err" && ok "... named as a file of the source" || bad "message"
umount "$tmp/S2/model.safetensors"

# item 3. reproducer: a file system mounted at D/data; `pack src D --force` deleted every file
# on it and left .D.moepack-tmp... (EBUSY)
mkdir -p "$D/data" && mount -t tmpfs -o size=4m none "$D/data" && echo precious > "$D/data/keep"
for c in "pack $tmp/src $D --force -q" "compress $tmp/src $D --force -q"; do
  expect 1 "$c: a DST holding a mount point refused" -- "$M" $c
  grep -q "mount point" "$tmp/err" && ok "... says it holds a mount point" || bad "message"
done
[ "$(cat "$D/data/keep")" = precious ] && ok "the mounted file system untouched" || bad "data lost"
ls -A "$tmp" | grep -q moepack-tmp && bad "staging litter left" || ok "no staging litter"
umount "$D/data"
# a bind mount of a folder from elsewhere inside DST (same file system): also a mount point
mkdir -p "$tmp/elsewhere" "$D/data" && echo precious > "$tmp/elsewhere/keep"
mount --bind "$tmp/elsewhere" "$D/data"
expect 1 "a DST holding a bind mount refused" -- "$M" pack "$tmp/src" "$D" --force -q
umount "$D/data"
[ -f "$tmp/elsewhere/keep" ] && ok "the bind-mounted folder untouched" || bad "data lost"
# DST itself the root of a mount
mkdir -p "$tmp/mnt" && mount -t tmpfs -o size=4m none "$tmp/mnt" && cp "$shard" "$tmp/mnt/"
expect 1 "a DST that is itself a mount point refused" -- "$M" pack "$tmp/src" "$tmp/mnt" --force -q
umount "$tmp/mnt"
# a checkpoint folder without mounts is replaced
mkdir -p "$tmp/E" && cp "$shard" "$tmp/E/"
expect 0 "a plain checkpoint DST is replaced" -- "$M" pack "$tmp/src" "$tmp/E" --force -q

echo "$fails failed"
[ "$fails" = 0 ]
