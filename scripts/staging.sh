#!/usr/bin/env bash
# Local staging: five Debian 12 containers running systemd (database,
# homeserver, TURN, proxy, backup), deployed with playbooks/site.yml and the
# inventory inventories/staging.
#   scripts/staging.sh up       create the containers (if needed) and deploy
#   scripts/staging.sh deploy   deploy again (after a change)
#   scripts/staging.sh status   show the containers and the URLs
#   scripts/staging.sh check    run the end-to-end client checks (tests/e2e) against staging
#   scripts/staging.sh down     remove the containers (credentials are kept)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
INVENTORY=inventories/staging
CREDENTIALS=$INVENTORY/credentials

activate() {
  "$REPO/scripts/bootstrap.sh"
  # shellcheck disable=SC1091
  source "$REPO/.venv/bin/activate"
}

# Element web: the pinned official release when it can be downloaded from
# here, otherwise the locally built fixture (clearly named as such).
element_args() {
  local version url fixture
  version=$(python3 -c 'import yaml; print(yaml.safe_load(open("roles/element_web/defaults/main.yml"))["element_web_version"])')
  url=$(python3 - "$version" <<'PY'
import sys, yaml
d = yaml.safe_load(open("roles/element_web/defaults/main.yml"))
print(d["element_web_download_url"].replace("{{ element_web_version }}", sys.argv[1]))
PY
)
  if python3 -c 'import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="HEAD"), timeout=5)' "$url" 2>/dev/null; then
    return 0
  fi
  fixture="$REPO/.cache/fixtures/element-v${version}-fixture.tar.gz"
  [ -f "$fixture" ] || scripts/build-element-fixture.sh >/dev/null
  echo "NOTE: $url cannot be reached from here: deploying the Element web FIXTURE ($fixture)." >&2
  ELEMENT_ARGS=(-e "element_web_archive_src=$fixture" -e "element_web_checksum=sha256:$(cut -d' ' -f1 "$fixture.sha256")")
}

deploy() {
  ELEMENT_ARGS=()
  element_args
  ansible-playbook -i "$INVENTORY" playbooks/site.yml "${ELEMENT_ARGS[@]}"
}

address_of() {
  docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"
}

summary() {
  local proxy turn ca
  proxy=$(address_of staging-proxy)
  turn=$(address_of staging-turn)
  ca="$REPO/$CREDENTIALS/ca/ca.crt"
  cat <<INFO

Staging is up.
  Element web   https://element.example.test/
  Homeserver    https://matrix.example.test/   (server name example.test)
  TURN          turn.example.test:3478 (udp/tcp), :5349 (TLS)

Names resolve only where you add them; on this machine:
  $proxy  element.example.test matrix.example.test example.test
  $turn  turn.example.test
Trust the staging CA: $ca

Accounts (passwords generated once, kept in $CREDENTIALS/users/):
$(for u in "$CREDENTIALS"/users/*; do [ -f "$u" ] && printf '  @%s:example.test  password: %s\n' "$(basename "$u")" "$(cat "$u")"; done)

Log in from a shell:
  curl --cacert $ca --resolve matrix.example.test:443:$proxy \\
    -d '{"type":"m.login.password","identifier":{"type":"m.id.user","user":"alice"},"password":"<alice password>"}' \\
    https://matrix.example.test/_matrix/client/v3/login
Tear down: scripts/staging.sh down
INFO
}

case "${1:-up}" in
  up)
    activate
    molecule create -s staging
    deploy
    summary
    ;;
  deploy)
    activate
    deploy
    summary
    ;;
  status)
    activate
    docker ps --filter name=staging- --format '{{.Names}}\t{{.Status}}'
    summary
    ;;
  check)
    activate
    MATRIX_E2E_PROXY_ADDRESS=$(address_of staging-proxy) MATRIX_E2E_TURN_ADDRESS=$(address_of staging-turn) \
    MATRIX_E2E_SERVER_NAME=example.test MATRIX_E2E_HOMESERVER_FQDN=matrix.example.test \
    MATRIX_E2E_ELEMENT_FQDN=element.example.test MATRIX_E2E_TURN_FQDN=turn.example.test \
    MATRIX_E2E_CA_FILE="$REPO/$CREDENTIALS/ca/ca.crt" \
    MATRIX_E2E_USER_A=alice MATRIX_E2E_PASSWORD_A="$(cat "$CREDENTIALS/users/alice")" \
    MATRIX_E2E_USER_B=bob MATRIX_E2E_PASSWORD_B="$(cat "$CREDENTIALS/users/bob")" \
      python -m pytest -q -p no:cacheprovider tests/e2e
    ;;
  down)
    activate
    molecule destroy -s staging
    scripts/docker-engine.sh stop
    echo "Containers removed; credentials kept in $CREDENTIALS (delete them to start afresh)."
    ;;
  *) echo "usage: $0 [up|deploy|status|check|down]" >&2; exit 2 ;;
esac
