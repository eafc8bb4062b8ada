#!/usr/bin/env bash
# The whole cluster cycle for dsr_tune, run from your machine in the project:
#
#   launch/cluster.sh up                 # token, `ray up`, MLflow on the head
#   launch/cluster.sh forward            # dashboard :8265 + MLflow :5000 on localhost (leave it running)
#   launch/cluster.sh submit -- dsr-tune sweep search_spaces/digits_demo.yaml --output /mnt/shared/sweeps/demo
#   launch/cluster.sh logs JOB_ID        # follow; exit status 0 only if the job succeeded
#   launch/cluster.sh status [JOB_ID]    # one job, or all of them
#   launch/cluster.sh stop JOB_ID
#   launch/cluster.sh nodes              # `ray status` on the head: nodes, resources, pending demand
#   launch/cluster.sh attach             # a shell on the head
#   launch/cluster.sh down               # stop MLflow, terminate the nodes (shared storage stays)
#
# Environment:
#   CLUSTER                 cluster config (default cluster.yaml; cluster-local.yaml on premises)
#   RAY_API_SERVER_ADDRESS  where jobs go (default http://127.0.0.1:8265, the forwarded dashboard;
#                           on Kubernetes, a `kubectl port-forward` to the head service)
#   RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH   the cluster's token if not ~/.ray/auth_token
#   DRY_RUN=1               print the commands instead of running them
#
# Ray 2.60 authenticates every request with a token. `up` creates one in
# ~/.ray/auth_token if you have none, the cluster config copies it to every
# node, and the job commands here send it (RAY_AUTH_MODE=token).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-cluster.yaml}
DASHBOARD_PORT=8265
MLFLOW_PORT=5000
if [[ -x .venv/bin/ray ]]; then RAY=.venv/bin/ray; else RAY=ray; fi  # the pinned Ray, same as the cluster's
export RAY_AUTH_MODE=token
export RAY_API_SERVER_ADDRESS=${RAY_API_SERVER_ADDRESS:-http://127.0.0.1:$DASHBOARD_PORT}
HEAD_MLFLOW="bash ~/dsr_tune/launch/mlflow_server.sh"

run() {
    if [[ -n ${DRY_RUN:-} ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

token() {  # ~/.ray/auth_token, which the cluster configs copy to every node (never printed)
    if [[ ! -s ~/.ray/auth_token ]]; then
        run env -u RAY_AUTH_TOKEN -u RAY_AUTH_TOKEN_PATH "$RAY" get-auth-token --generate >/dev/null 2>&1 ||
            { echo "could not create ~/.ray/auth_token (ray get-auth-token --generate)" >&2; exit 1; }
        run chmod 600 ~/.ray/auth_token
        echo "created ~/.ray/auth_token"
    fi
    if [[ -n ${RAY_AUTH_TOKEN:-}${RAY_AUTH_TOKEN_PATH:-} ]]; then
        echo "note: RAY_AUTH_TOKEN(_PATH) is set and wins over ~/.ray/auth_token, the token the nodes get" >&2
    fi
}

up() {
    token
    run "$RAY" up -y "$CLUSTER"
    mlflow
    echo "next: launch/cluster.sh forward   (in another terminal), then launch/cluster.sh submit -- CMD"
}

mlflow() { run "$RAY" exec "$CLUSTER" "$HEAD_MLFLOW start"; }

forward() {
    echo "dashboard http://localhost:$DASHBOARD_PORT (it asks for the token: .venv/bin/ray get-auth-token)"
    echo "MLflow    http://localhost:$MLFLOW_PORT"
    echo "jobs      RAY_API_SERVER_ADDRESS=$RAY_API_SERVER_ADDRESS; Ctrl-C ends the forward"
    run "$RAY" exec "$CLUSTER" --port-forward "$DASHBOARD_PORT" --port-forward "$MLFLOW_PORT" \
        "echo forwarding; sleep infinity"
}

submit() {  # submit [ray job submit options, e.g. --no-wait --submission-id ID] -- CMD ...
    [[ " $* " == *" -- "* ]] || { echo "usage: $0 submit [options] -- CMD ..." >&2; exit 2; }
    run "$RAY" job submit --runtime-env launch/runtime_env.yaml "$@"
}

logs() {  # follow a job to its end; succeed only if it succeeded
    local id=${1:?usage: $0 logs JOB_ID}
    run "$RAY" job logs --follow "$id"
    [[ -n ${DRY_RUN:-} ]] && return 0
    # `ray job logs` exits 0 whatever the job did; `ray job status` says "Job 'ID' succeeded"
    local status; status=$("$RAY" job status "$id" 2>&1 || true)
    [[ $status == *"Job '$id' succeeded"* ]]
}

status() {
    if [[ $# -gt 0 ]]; then run "$RAY" job status "$1"; else run "$RAY" job list; fi
}

down() {
    run "$RAY" exec "$CLUSTER" "$HEAD_MLFLOW stop" || true  # the database stays in MLFLOW_DIR
    run "$RAY" down -y "$CLUSTER"
}

cmd=${1:-help}
shift || true
case $cmd in
    up) up ;;
    mlflow) mlflow ;;
    forward) forward ;;
    submit) submit "$@" ;;
    logs) logs "$@" ;;
    status) status "$@" ;;
    stop) run "$RAY" job stop "${1:?usage: $0 stop JOB_ID}" ;;
    nodes) run "$RAY" exec "$CLUSTER" "ray status" ;;
    attach) run "$RAY" attach "$CLUSTER" ;;
    down) down ;;
    token) token ;;
    help | -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
    *) echo "unknown command '$cmd'; see $0 help" >&2; exit 2 ;;
esac
