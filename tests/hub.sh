#!/bin/sh
# hub.sh MOEPACK — the Hugging Face cache as SRC (issue 46, item 1). Builds the layout
# huggingface_hub leaves (blobs named by sha256, snapshots of relative links, refs/main) from a
# synth checkpoint, then reads it as a snapshot folder, a models--ORG--NAME folder and a repo id.
set -u
M=$1
tmp=$(mktemp -d /tmp/mpk-hub-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/shlib.sh"
# the same files, byte for byte, but the manifest (whose provenance names the repo and revision)
same() {
  for f in "$1"/*; do [ "${f##*/}" = moepack.manifest.json ] || cmp -s "$f" "$2/${f##*/}" || return 1; done
  [ "$(ls "$1")" = "$(ls "$2")" ]
}

"$M" synth --layers 2 "$tmp/plain" >/dev/null || exit 1
echo '{"bos": 1}' > "$tmp/plain/tokenizer_config.json"
cache=$tmp/cache
repo=$cache/models--acme--tiny-moe
rev=0123456789abcdef0123456789abcdef01234567
mkdir -p "$repo/blobs" "$repo/snapshots/$rev" "$repo/refs"
for f in "$tmp/plain"/*; do
  id=$(sha256sum "$f" | cut -c1-64)
  cp "$f" "$repo/blobs/$id"
  ln -s "../../blobs/$id" "$repo/snapshots/$rev/${f##*/}"
done
printf '%s' "$rev" > "$repo/refs/main"
snap=$repo/snapshots/$rev

"$M" pack -q "$tmp/plain" "$tmp/ref" || exit 1
export HF_HUB_CACHE="$cache"
for form in "$snap" "$repo" acme/tiny-moe; do
  expect 0 "inspect $form" -- "$M" inspect "$form"
  expect 0 "plan $form" -- "$M" plan "$form"
  expect 0 "hash $form" -- "$M" hash "$form"
  d=$tmp/pk-$(echo "$form" | cksum | cut -d' ' -f1)
  expect 0 "pack $form" -- "$M" pack -q "$form" "$d"
  same "$tmp/ref" "$d" && ok "... the same files as packing a plain copy" || bad "pack of $form differs from the plain copy's"
  [ -z "$(find "$d" -type l)" ] && ok "... no links into the cache in the output" || bad "links in $d"
  python3 -c "import json, sys; p = json.load(open(sys.argv[1]))['provenance']; sys.exit(p['source'] != 'acme/tiny-moe@$rev')" \
    "$d/moepack.manifest.json" && ok "... the manifest names the repo and revision, no local path" || bad "provenance"
  expect 0 "verify $form against its pack" -- "$M" verify "$form" "$d"
done
expect 0 "--revision with a ref's name" -- "$M" inspect acme/tiny-moe --revision main
expect 0 "--revision with a commit hash" -- "$M" inspect acme/tiny-moe --revision "$rev"
expect 1 "--revision that is not in the cache" -- "$M" inspect acme/tiny-moe --revision v2
grep -q "huggingface-cli download acme/tiny-moe --revision v2" "$tmp/err" && ok "... says how to fetch it" || bad "message"
expect 1 "an id not in the cache" -- "$M" inspect acme/other-moe
grep -q "huggingface-cli download acme/other-moe" "$tmp/err" && grep -q "moepack downloads nothing" "$tmp/err" \
  && ok "... says nothing is downloaded and how to fetch it" || bad "message"
HF_HUB_CACHE= HF_HOME="$tmp" expect 1 "HF_HOME/hub is where the cache is without HF_HUB_CACHE" -- "$M" inspect acme/tiny-moe
grep -q "$tmp/hub/models--acme--tiny-moe" "$tmp/err" && ok "... it names HF_HOME/hub" || bad "message"

# a shard not downloaded yet: plan works from the index, pack names the missing file
rm "$snap/model-00002-of-00002.safetensors"
expect 0 "plan with a shard not downloaded" -- "$M" plan acme/tiny-moe
expect 1 "pack with a shard not downloaded" -- "$M" pack -q acme/tiny-moe "$tmp/x"
grep -q "model-00002-of-00002.safetensors" "$tmp/err" && ok "... names the missing shard" || bad "message"
[ ! -e "$tmp/x" ] && ok "... nothing at DST" || bad "DST written"
ln -s "../../blobs/$(sha256sum "$tmp/plain/model-00002-of-00002.safetensors" | cut -c1-64)" "$snap/model-00002-of-00002.safetensors"

# a link out of the repo folder is still refused
cp "$tmp/plain/model-00001-of-00002.safetensors" "$tmp/outside.safetensors"
ln -sf "$tmp/outside.safetensors" "$snap/model-00001-of-00002.safetensors"
expect 1 "a shard linked out of the repo folder refused" -- "$M" pack -q acme/tiny-moe "$tmp/y"
grep -q "resolves outside the checkpoint directory" "$tmp/err" && ok "... the message says so" || bad "message"

echo "$fails failed"
[ "$fails" = 0 ]
