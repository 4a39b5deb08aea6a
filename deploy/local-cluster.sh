#!/usr/bin/env bash
# Start or stop a local zbroker cluster on this machine.
#
#   deploy/local-cluster.sh start    # install into .venv if needed, start the services
#   deploy/local-cluster.sh status
#   deploy/local-cluster.sh stop     # SIGTERM (clean shutdown), then wait
#
# It starts one coordinator (config/coordinator.properties, port 2181), or with ZB_COORDINATORS=3
# an ensemble of 3 (client ports 2181, 2182, 2183; peer ports 2888, 2889, 2890), and BROKERS
# brokers (config/server.properties, ports 9092, 9093, ...), with their data under ./data/.
# Environment: ZB_HOME (default: the repository root), ZB_DATA (default $ZB_HOME/data),
# ZB_BIN (where the zb-* commands are; default: $ZB_HOME/.venv/bin, installed there if needed),
# ZB_COORDINATORS (1, 3 or 5; default 1), COORDINATOR_PORT (first one, default 2181),
# COORDINATOR_PEER_PORT (first one, default 2888), BROKERS (default 3), BROKER_PORT (first
# broker, default 9092).
set -euo pipefail
ZB_HOME=${ZB_HOME:-$(cd "$(dirname "$0")/.." && pwd)}
ZB_DATA=${ZB_DATA:-$ZB_HOME/data}
RUN_DIR="$ZB_DATA/run"
COORDINATOR_PORT=${COORDINATOR_PORT:-2181}
COORDINATOR_PEER_PORT=${COORDINATOR_PEER_PORT:-2888}
ZB_COORDINATORS=${ZB_COORDINATORS:-1}
BROKERS=${BROKERS:-3}
BROKER_PORT=${BROKER_PORT:-9092}
cd "$ZB_HOME"

install() {   # into .venv, again whenever pyproject.toml changed since the last install
  [ -z "${ZB_BIN:-}" ] || return 0
  ZB_BIN="$ZB_HOME/.venv/bin"
  if [ ! -f .venv/.zb-installed ] || [ pyproject.toml -nt .venv/.zb-installed ]; then
    echo "Installing zbroker into $ZB_HOME/.venv ..."
    mkdir -p "$RUN_DIR"
    if ! { python3 -m venv .venv && .venv/bin/python -m pip install --upgrade pip &&
           .venv/bin/python -m pip install -e .; } >"$RUN_DIR/install.log" 2>&1; then
      echo "Installing failed; the end of $RUN_DIR/install.log says:" >&2
      tail -15 "$RUN_DIR/install.log" >&2
      exit 1
    fi
    touch .venv/.zb-installed
  fi
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_listening() {   # name port
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then
      echo "$1 listening on 127.0.0.1:$2 (pid $(cat "$RUN_DIR/$1.pid"), log $RUN_DIR/$1.log)."
      return 0
    fi
    if ! running "$RUN_DIR/$1.pid"; then
      echo "$1 did not start:" >&2
      tail -5 "$RUN_DIR/$1.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "$1 did not listen within 10 seconds; see $RUN_DIR/$1.log." >&2
  exit 1
}

launch() {   # name command...
  local name=$1; shift
  if running "$RUN_DIR/$name.pid"; then
    echo "$name is already running (pid $(cat "$RUN_DIR/$name.pid"))."
    return 1
  fi
  "$@" >>"$RUN_DIR/$name.log" 2>&1 &
  echo $! >"$RUN_DIR/$name.pid"
}

start() {
  install
  mkdir -p "$RUN_DIR"
  case "$ZB_COORDINATORS" in
    1|3|5) ;;
    *) echo "ZB_COORDINATORS must be 1, 3 or 5, not '$ZB_COORDINATORS'." >&2; exit 2 ;;
  esac
  connect=""
  if [ "$ZB_COORDINATORS" = 1 ]; then
    if launch coordinator "$ZB_BIN/zb-coordinator-start" config/coordinator.properties \
        --override "listeners=tcp://0.0.0.0:$COORDINATOR_PORT" \
        --override "data.dir=$ZB_DATA/coordinator"; then
      wait_listening coordinator "$COORDINATOR_PORT"
    fi
    connect="127.0.0.1:$COORDINATOR_PORT"
  else
    members=()
    for i in $(seq "$ZB_COORDINATORS"); do
      members+=(--override "server.$i=127.0.0.1:$((COORDINATOR_PEER_PORT + i - 1))")
      connect="$connect,127.0.0.1:$((COORDINATOR_PORT + i - 1))"
    done
    connect=${connect#,}
    for i in $(seq "$ZB_COORDINATORS"); do
      port=$((COORDINATOR_PORT + i - 1))
      if launch "coordinator-$i" "$ZB_BIN/zb-coordinator-start" config/coordinator.properties \
          --override "coordinator.id=$i" "${members[@]}" \
          --override "listeners=tcp://0.0.0.0:$port" \
          --override "data.dir=$ZB_DATA/coordinator-$i"; then
        wait_listening "coordinator-$i" "$port"
      fi
    done
  fi
  for i in $(seq "$BROKERS"); do
    port=$((BROKER_PORT + i - 1))
    if launch "broker-$i" "$ZB_BIN/zb-server-start" config/server.properties \
        --override "broker.id=$i" \
        --override "listeners=tcp://0.0.0.0:$port" \
        --override "log.dirs=$ZB_DATA/broker-$i" \
        --override "coordinator.connect=$connect"; then
      wait_listening "broker-$i" "$port"
    fi
  done
  echo "Coordinators: $connect"
  echo "Bootstrap servers: $(for i in $(seq "$BROKERS"); do printf '127.0.0.1:%s,' $((BROKER_PORT + i - 1)); done | sed 's/,$//')"
}

stop() {
  # brokers first (a clean shutdown talks to the coordinator), the coordinator last
  for pidfile in $(ls "$RUN_DIR"/broker-*.pid "$RUN_DIR"/coordinator*.pid 2>/dev/null); do
    [ -e "$pidfile" ] || continue
    name=$(basename "$pidfile" .pid)
    if running "$pidfile"; then
      pid=$(cat "$pidfile")
      kill -TERM "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then
        echo "$name did not stop within 10 seconds; killing it." >&2
        kill -KILL "$pid"
      fi
      echo "Stopped $name."
    fi
    rm -f "$pidfile"
  done
}

status() {
  for pidfile in "$RUN_DIR"/*.pid; do
    [ -e "$pidfile" ] || { echo "Nothing is running."; return; }
    name=$(basename "$pidfile" .pid)
    if running "$pidfile"; then echo "$name: running (pid $(cat "$pidfile"))"; else echo "$name: not running"; fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  -h|--help|help|"") sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) echo "Unknown command '$1'; use start, stop or status." >&2; exit 2 ;;
esac
