#!/usr/bin/env bash
# Build the Element web FIXTURE tarball the tests deploy instead of the real
# release (tests cannot download). Same layout as the official tarball
# (element-v<version>/index.html, config.sample.json, version, bundles/),
# clearly marked as a fixture, byte-for-byte reproducible so its sha256 is
# stable: .cache/fixtures/element-v<version>-fixture.tar.gz (+ .sha256).
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-$(sed -n 's/^element_web_version: "\(.*\)"$/\1/p' roles/element_web/defaults/main.yml)}
[ -n "$version" ] || { echo "cannot read element_web_version" >&2; exit 1; }
out=.cache/fixtures/element-v${version}-fixture.tar.gz
[ -f "$out" ] && [ -f "$out.sha256" ] && { echo "$out"; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
top=$work/element-v$version
mkdir -p "$top/bundles/fixture"
cat >"$top/index.html" <<HTML
<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Element web FIXTURE for tests</title>
<script src="bundles/fixture/bundle.js"></script></head>
<body><p>Element web FIXTURE for tests (stands in for element-v$version; not the real client).</p></body></html>
HTML
echo '{"default_server_config": {"m.homeserver": {"base_url": "https://matrix-client.matrix.org"}}}' >"$top/config.sample.json"
echo "$version-fixture" >"$top/version"
echo 'console.log("Element web fixture");' >"$top/bundles/fixture/bundle.js"
mkdir -p "$(dirname "$out")"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work" -cf - "element-v$version" | gzip -n -9 >"$out"
sha256sum "$out" | cut -d' ' -f1 >"$out.sha256"
echo "$out"
