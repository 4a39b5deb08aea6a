#!/usr/bin/env bash
# Start, stop or look at a zbroker cluster spread over several machines.
#
#   deploy/cluster.sh start  CLUSTER_FILE
#   deploy/cluster.sh status CLUSTER_FILE
#   deploy/cluster.sh stop   CLUSTER_FILE      # brokers first (clean shutdown), then the coordinator
#
# CLUSTER_FILE lists one process a line (see deploy/cluster.example):
#   coordinator HOST ADDRESS         (several lines: one ensemble, member ids 1, 2, ... in order;
#                                     use 3 or 5, and list them in the same order every time)
#   broker      HOST ADDRESS BROKER_ID [RACK]
# HOST is how to reach the machine (for ssh), ADDRESS the IP or name the others use for it.
# Every machine needs zbroker installed at the same path (deploy/local-cluster.sh installs it
# into .venv); commands run there through $ZB_REMOTE (default "ssh -o BatchMode=yes").
#
# Environment: ZB_REMOTE, ZB_HOME (the path on every machine; default this repository),
# ZB_BIN (default $ZB_HOME/.venv/bin), ZB_DATA (default $ZB_HOME/data),
# COORDINATOR_PORT (default 2181), COORDINATOR_PEER_PORT (the ensemble's, default 2888),
# BROKER_PORT (default 9092).
set -euo pipefail
ZB_REMOTE=${ZB_REMOTE:-ssh -o BatchMode=yes}
ZB_HOME=${ZB_HOME:-$(cd "$(dirname "$0")/.." && pwd)}
ZB_BIN=${ZB_BIN:-$ZB_HOME/.venv/bin}
ZB_DATA=${ZB_DATA:-$ZB_HOME/data}
COORDINATOR_PORT=${COORDINATOR_PORT:-2181}
COORDINATOR_PEER_PORT=${COORDINATOR_PEER_PORT:-2888}
BROKER_PORT=${BROKER_PORT:-9092}

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }

remote() {   # host script: the script goes on standard input, so ssh and others quote nothing
  # shellcheck disable=SC2086
  $ZB_REMOTE "$1" bash -s <<<"$2"
}

read_cluster() {
  [ -f "$1" ] || { echo "No cluster file at $1." >&2; exit 2; }
  COORDINATORS=(); BROKER_LINES=()
  while read -r role host address rest; do
    case "$role" in
      ""|\#*) ;;
      coordinator) COORDINATORS+=("$host $address") ;;
      broker) BROKER_LINES+=("$host $address $rest") ;;
      *) echo "Unknown role '$role' in $1: use coordinator or broker." >&2; exit 2 ;;
    esac
  done <"$1"
  [ ${#COORDINATORS[@]} -ge 1 ] || { echo "$1 names no coordinator." >&2; exit 2; }
  CONNECT=$(for c in "${COORDINATORS[@]}"; do set -- $c; printf '%s:%s,' "$2" "$COORDINATOR_PORT"; done)
  CONNECT=${CONNECT%,}
}

# coordinator_name I: "coordinator" alone, "coordinator-I" for member I of an ensemble (its
# pid file and data directory, so members sharing a filesystem keep apart)
coordinator_name() {
  if [ ${#COORDINATORS[@]} -gt 1 ]; then echo "coordinator-$1"; else echo coordinator; fi
}

# start_on HOST NAME PORT COMMAND...: start COMMAND in the background on HOST, wait until PORT
# listens there, and keep its pid in $ZB_DATA/run/NAME.pid on that machine.
start_on() {
  local host=$1 name=$2 port=$3; shift 3
  local cmd run="$ZB_DATA/run"
  cmd=$(printf '%q ' "$@")
  remote "$host" "
    mkdir -p '$run'
    if [ -f '$run/$name.pid' ] && kill -0 \$(cat '$run/$name.pid') 2>/dev/null; then
      echo '$name on $host is already running.'; exit 0
    fi
    cd '$ZB_HOME'
    nohup $cmd >>'$run/$name.log' 2>&1 </dev/null &
    echo \$! >'$run/$name.pid'
    for _ in \$(seq 100); do
      if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
        echo '$name listening on $host port $port.'; exit 0
      fi
      kill -0 \$(cat '$run/$name.pid') 2>/dev/null || break
      sleep 0.1
    done
    echo '$name on $host did not start; the end of its log:' >&2
    tail -5 '$run/$name.log' >&2
    exit 1"
}

stop_on() {   # host name
  remote "$1" "
    f='$ZB_DATA/run/$2.pid'
    [ -f \"\$f\" ] || exit 0
    pid=\$(cat \"\$f\")
    if kill -0 \$pid 2>/dev/null; then
      kill -TERM \$pid
      for _ in \$(seq 100); do kill -0 \$pid 2>/dev/null || break; sleep 0.1; done
      kill -0 \$pid 2>/dev/null && kill -KILL \$pid
      echo 'Stopped $2 on $1.'
    fi
    rm -f \"\$f\""
}

status_on() {   # host name
  remote "$1" "
    f='$ZB_DATA/run/$2.pid'
    if [ -f \"\$f\" ] && kill -0 \$(cat \"\$f\") 2>/dev/null; then
      echo '$2 on $1: running'
    else
      echo '$2 on $1: not running'
    fi"
}

command=${1:-}
case "$command" in
  -h|--help|help|"") usage; exit 0 ;;
  start|stop|status) ;;
  *) echo "Unknown command '$command'; use start, stop or status." >&2; exit 2 ;;
esac
[ $# -ge 2 ] || { echo "Name the cluster file: deploy/cluster.sh $command CLUSTER_FILE" >&2; exit 2; }
read_cluster "$2"

case "$command" in
  start)
    members=(); i=0
    if [ ${#COORDINATORS[@]} -gt 1 ]; then     # several coordinator lines: one ensemble
      for c in "${COORDINATORS[@]}"; do
        set -- $c; i=$((i + 1))
        members+=(--override "server.$i=$2:$COORDINATOR_PEER_PORT")
      done
    fi
    i=0
    for c in "${COORDINATORS[@]}"; do
      set -- $c; i=$((i + 1))
      ensemble=()
      [ ${#members[@]} -eq 0 ] || ensemble=(--override "coordinator.id=$i" "${members[@]}")
      name=$(coordinator_name $i)
      start_on "$1" "$name" "$COORDINATOR_PORT" "$ZB_BIN/zb-coordinator-start" \
        config/coordinator.properties \
        --override "listeners=tcp://0.0.0.0:$COORDINATOR_PORT" \
        --override "data.dir=$ZB_DATA/$name" ${ensemble[@]+"${ensemble[@]}"}
    done
    for b in "${BROKER_LINES[@]}"; do
      set -- $b
      host=$1 address=$2 id=$3 rack=${4:-}
      args=(--override "broker.id=$id" --override "listeners=tcp://0.0.0.0:$BROKER_PORT"
            --override "advertised.listeners=tcp://$address:$BROKER_PORT"
            --override "log.dirs=$ZB_DATA/broker-$id" --override "coordinator.connect=$CONNECT")
      [ -z "$rack" ] || args+=(--override "broker.rack=$rack")
      start_on "$host" "broker-$id" "$BROKER_PORT" "$ZB_BIN/zb-server-start" \
        config/server.properties "${args[@]}"
    done
    echo "Bootstrap servers: $(for b in "${BROKER_LINES[@]}"; do set -- $b; printf '%s:%s,' "$2" "$BROKER_PORT"; done | sed 's/,$//')"
    ;;
  stop)
    for b in "${BROKER_LINES[@]}"; do set -- $b; stop_on "$1" "broker-$3"; done
    i=0
    for c in "${COORDINATORS[@]}"; do set -- $c; i=$((i + 1)); stop_on "$1" "$(coordinator_name $i)"; done
    ;;
  status)
    i=0
    for c in "${COORDINATORS[@]}"; do set -- $c; i=$((i + 1)); status_on "$1" "$(coordinator_name $i)"; done
    for b in "${BROKER_LINES[@]}"; do set -- $b; status_on "$1" "broker-$3"; done
    ;;
esac
