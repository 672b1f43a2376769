#!/usr/bin/env bash
# Start, stop or show the Docker engine Molecule uses.
#
#   scripts/docker-engine.sh start    use an engine that already answers; otherwise install
#                                     Debian's docker.io if missing and run dockerd in the
#                                     background (pidfile + log under .cache/dockerd/)
#   scripts/docker-engine.sh stop     stop the engine only if this script started it
#   scripts/docker-engine.sh status   say whether an engine answers and who started it
#
# The machine has no systemd as PID 1, so dockerd is not a service here: this script is its
# supervisor. The Docker CLI and the Python docker SDK negotiate the API version with the
# 20.10 engine (API 1.41) on their own; nothing needs DOCKER_API_VERSION.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

DOCKERD_DIR="${CACHE_DIR}/dockerd"
PIDFILE="${DOCKERD_DIR}/dockerd.pid"
LOGFILE="${DOCKERD_DIR}/dockerd.log"
START_TIMEOUT="${DOCKERD_START_TIMEOUT:-60}"

our_pid() {
  # Print the PID from our pidfile if that process is still a dockerd.
  local pid
  [ -s "$PIDFILE" ] || return 1
  pid="$(cat "$PIDFILE")"
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "dockerd" ] || return 1
  printf '%s\n' "$pid"
}

cmd_start() {
  if docker_answers; then
    if pid="$(our_pid)"; then
      log "engine already running (started by this script, pid ${pid}, pidfile ${PIDFILE})"
    else
      log "an engine already answers; using it"
    fi
    return 0
  fi
  need_root
  mkdir -p "$DOCKERD_DIR"
  # Concurrent callers: one starts the engine, the others wait for it.
  exec 9>"${DOCKERD_DIR}/.lock"
  flock 9
  if docker_answers; then
    log "engine started meanwhile by another caller; using it"
    return 0
  fi
  apt_install docker.io
  command -v docker >/dev/null 2>&1 || die "no docker CLI after installing docker.io"
  if pid="$(our_pid)"; then
    log "dockerd (pid ${pid}) is running but does not answer yet; waiting"
  else
    rm -f "$PIDFILE"
    log "starting dockerd (log ${LOGFILE})"
    # setsid: the engine outlives this shell and the job control of its caller.
    setsid dockerd --pidfile="$PIDFILE" </dev/null >>"$LOGFILE" 2>&1 9>&- &
  fi
  local i
  for ((i = 0; i < START_TIMEOUT * 2; i++)); do
    if docker_answers; then
      log "engine up: server $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})'), pid $(cat "$PIDFILE" 2>/dev/null || echo '?'), pidfile ${PIDFILE}"
      return 0
    fi
    sleep 0.5
  done
  tail -n 30 "$LOGFILE" >&2 || true
  die "dockerd did not answer within ${START_TIMEOUT}s (see ${LOGFILE})"
}

cmd_stop() {
  local pid i
  if ! pid="$(our_pid)"; then
    rm -f "$PIDFILE"
    if docker_answers; then
      log "the running engine was not started by this script; leaving it alone"
    else
      log "no engine started by this script is running"
    fi
    return 0
  fi
  log "stopping dockerd (pid ${pid})"
  kill -TERM "$pid"
  for ((i = 0; i < 60; i++)); do
    [ -d "/proc/$pid" ] || break
    sleep 0.5
  done
  if [ -d "/proc/$pid" ]; then
    log "dockerd did not stop within 30s; sending SIGKILL to ${pid}"
    kill -KILL "$pid" || true
  fi
  rm -f "$PIDFILE"
  log "stopped"
}

cmd_status() {
  local pid
  if docker_answers; then
    if pid="$(our_pid)"; then
      echo "running: started by this script (pid ${pid}, pidfile ${PIDFILE}, log ${LOGFILE})"
    else
      echo "running: engine not started by this script"
    fi
    docker version --format 'client {{.Client.Version}} (API {{.Client.APIVersion}}), server {{.Server.Version}} (API {{.Server.APIVersion}})'
    return 0
  fi
  echo "not running"
  return 3
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
