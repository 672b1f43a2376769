#!/usr/bin/env bash
# Build the Element web FIXTURE tarball that the tests deploy instead of the
# real release (tests cannot download it). Same layout as the official
# tarball: a top folder element-v<version>/ holding index.html,
# config.sample.json, version and bundles/<hash>/*.js; its index page says
# plainly that it is a fixture. Byte-for-byte reproducible (sorted names, fixed
# times and owners, gzip without name or time), so its sha256 is stable.
#
# Usage: scripts/build-element-fixture.sh [VERSION]
#   VERSION defaults to element_web_version in roles/element_web/defaults/main.yml.
# Writes .cache/fixtures/element-v<version>-fixture.tar.gz and <that>.sha256
# ("<hex>  <file name>", as sha256sum prints it), and prints the tarball's path.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. scripts/lib.sh

version=${1:-$(role_default element_web element_web_version)}
if ! [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
  echo "build-element-fixture: no usable version (got '${version}'; expected x.y.z)" >&2
  exit 1
fi

out_dir=.cache/fixtures
name=element-v${version}-fixture.tar.gz
out=$out_dir/$name
mkdir -p "$out_dir"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
top=$work/element-v$version
# The real bundles folder is named after the build's commit hash.
hash=$(printf 'element-web-fixture-%s' "$version" | sha256sum | cut -c1-20)
mkdir -p "$top/bundles/$hash"

cat >"$top/index.html" <<HTML
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Element web FIXTURE for tests</title>
<script src="bundles/$hash/bundle.js"></script>
</head>
<body>
<p>Element web FIXTURE for tests: it stands in for element-v$version in test runs and is not the Element client.</p>
</body>
</html>
HTML

cat >"$top/config.sample.json" <<'JSON'
{
    "default_server_config": {
        "m.homeserver": {
            "base_url": "https://matrix.example.invalid",
            "server_name": "example.invalid"
        }
    },
    "brand": "Element FIXTURE"
}
JSON

printf '%s\n' "$version" >"$top/version"
printf '%s\n' '/* Element web FIXTURE for tests: not the Element client. */' \
  'document.addEventListener("DOMContentLoaded", function () { document.title = "Element web FIXTURE for tests"; });' \
  >"$top/bundles/$hash/bundle.js"

# Fixed permissions too, whatever the umask.
find "$top" -type d -exec chmod 0755 {} +
find "$top" -type f -exec chmod 0644 {} +

tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
  -C "$work" -cf - "element-v$version" | gzip -n -9 >"$work/$name"
mv "$work/$name" "$out"
(cd "$out_dir" && sha256sum "$name" >"$name.sha256")
echo "$out"
