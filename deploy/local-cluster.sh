#!/usr/bin/env bash
# Start or stop a local zbroker cluster on this machine.
#
#   deploy/local-cluster.sh start    # install into .venv if needed, start the services
#   deploy/local-cluster.sh status
#   deploy/local-cluster.sh stop     # SIGTERM (clean shutdown), then wait
#
# Services started today: the coordinator (config/coordinator.properties, data under ./data/).
# Environment: ZB_HOME (default: the repository root), COORDINATOR_PORT (default 2181).
set -euo pipefail
ZB_HOME=${ZB_HOME:-$(cd "$(dirname "$0")/.." && pwd)}
RUN_DIR="$ZB_HOME/data/run"
COORDINATOR_PORT=${COORDINATOR_PORT:-2181}
cd "$ZB_HOME"

install() {
  if [ ! -x .venv/bin/zb-coordinator-start ]; then
    echo "Installing zbroker into $ZB_HOME/.venv ..."
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e .
  fi
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  install
  mkdir -p "$RUN_DIR" data/coordinator
  if running "$RUN_DIR/coordinator.pid"; then
    echo "The coordinator is already running (pid $(cat "$RUN_DIR/coordinator.pid"))."
  else
    .venv/bin/zb-coordinator-start config/coordinator.properties \
      --override "listeners=tcp://0.0.0.0:$COORDINATOR_PORT" \
      --override "data.dir=$ZB_HOME/data/coordinator" \
      >>"$RUN_DIR/coordinator.log" 2>&1 &
    echo $! >"$RUN_DIR/coordinator.pid"
    for _ in $(seq 50); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$COORDINATOR_PORT") 2>/dev/null; then
        echo "Coordinator listening on 127.0.0.1:$COORDINATOR_PORT (pid $(cat "$RUN_DIR/coordinator.pid"), log $RUN_DIR/coordinator.log)."
        return 0
      fi
      if ! running "$RUN_DIR/coordinator.pid"; then
        echo "The coordinator did not start:" >&2
        tail -5 "$RUN_DIR/coordinator.log" >&2
        exit 1
      fi
      sleep 0.1
    done
    echo "The coordinator did not listen within 5 seconds; see $RUN_DIR/coordinator.log." >&2
    exit 1
  fi
}

stop() {
  for pidfile in "$RUN_DIR"/*.pid; do
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
  -h|--help|help|"") sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) echo "Unknown command '$1'; use start, stop or status." >&2; exit 2 ;;
esac
