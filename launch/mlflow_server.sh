#!/usr/bin/env bash
# The MLflow tracking server on the Ray head node: start | stop | status.
# Run ON the head (launch/cluster.sh mlflow does it for you through `ray exec`):
#
#   bash ~/dsr_tune/launch/mlflow_server.sh start
#
# It always listens on 127.0.0.1:PORT, where people reach it through an SSH
# port forward (launch/cluster.sh forward). Trials and Train workers on other
# nodes must reach it too, so when MLFLOW_TRACKING_URI names a non-loopback
# address of this machine (the head's private IP, set by cluster.yaml), it
# listens there as well and nowhere else: never on a public interface.
#
# Environment:
#   MLFLOW_TRACKING_URI  http://HOST:PORT the cluster logs to (default http://127.0.0.1:5000)
#   MLFLOW_DIR           database, log and pid file (default ~/mlflow; a shared
#                        folder survives `ray down`)
#   MLFLOW_ARTIFACTS     where artifacts go, proxied by the server: a folder or
#                        s3://bucket/prefix (default $MLFLOW_DIR/artifacts)
set -euo pipefail

uri=${MLFLOW_TRACKING_URI:-http://127.0.0.1:5000}
hostport=${uri#http://}
hostport=${hostport%%/*}
host=${hostport%:*}
port=${hostport##*:}
dir=${MLFLOW_DIR:-$HOME/mlflow}
artifacts=${MLFLOW_ARTIFACTS:-$dir/artifacts}
pidfile=$dir/server.pid
mlflow=$(command -v mlflow || echo "$(dirname "$0")/../.venv/bin/mlflow")

healthy() { curl -sf -o /dev/null "http://127.0.0.1:$port/health"; }

start() {
    if healthy; then echo "MLflow already answers on 127.0.0.1:$port"; return 0; fi
    mkdir -p "$dir"
    local bind=(--host 127.0.0.1 --port "$port")
    local allowed="localhost,localhost:$port,127.0.0.1,127.0.0.1:$port"
    if [[ $host != 127.0.0.1 && $host != localhost ]]; then
        # A second address needs gunicorn (uvicorn binds one); Host headers
        # naming it are allowed too (MLflow refuses unknown ones; with gunicorn
        # it reads the list from the environment only).
        bind+=(--gunicorn-opts "-b $host:$port")
        allowed+=",$host,$host:$port"
    fi
    # setsid: the server outlives the SSH session that started it and has its
    # own process group, which `stop` ends. The job-execution workers are for
    # MLflow's GenAI features; a sweep does not need them.
    MLFLOW_SERVER_ALLOWED_HOSTS=$allowed MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$mlflow" server \
        --backend-store-uri "sqlite:///$dir/mlflow.db" --artifacts-destination "$artifacts" \
        "${bind[@]}" --workers 2 \
        >"$dir/server.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 120); do
        if healthy; then echo "MLflow on 127.0.0.1:$port (cluster: $uri), store $dir, artifacts $artifacts"; return 0; fi
        kill -0 "$(cat "$pidfile")" 2>/dev/null || break
        sleep 0.5
    done
    echo "MLflow did not start; see $dir/server.log:" >&2
    tail -20 "$dir/server.log" >&2
    return 1
}

stop() {
    [[ -f $pidfile ]] || { echo "no $pidfile: nothing started here"; return 0; }
    local pid; pid=$(cat "$pidfile")
    kill -TERM -- "-$pid" 2>/dev/null || true   # the whole process group started by `start`
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$pidfile"
    echo "MLflow stopped"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) if healthy; then echo "up: 127.0.0.1:$port (cluster: $uri)"; else echo "down"; exit 1; fi ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
