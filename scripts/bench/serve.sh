# shellcheck shell=bash
# Starting and stopping the service, and readying a database, for the bench
# scripts. Source it after scripts/common.sh, with $bin (the release binary)
# and $work (a scratch directory) set; do not run it.

server_pid=
address=

# start_server URL [SERVE ARGS...]: `serve` on a free port over the
# database URL (drain 0, JSON logs to $work/server.log); sets server_pid
# and address once it says where it serves gRPC (60 s at most; --metrics-listen
# logs an address of its own first).
start_server() {
    local url=$1
    shift
    CCC_DRAIN_MS=0 "$bin" --log-format json serve --listen 127.0.0.1:0 \
        --database-url "$url" "$@" 2>"$work/server.log" &
    server_pid=$!
    address=
    for _ in $(seq 600); do
        address=$(grep '"message":"serving gRPC"' "$work/server.log" | grep -o '"address":"[^"]*"' |
            head -1 | cut -d'"' -f4 || true)
        [[ -n $address ]] && return
        kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; die "the service did not start"; }
        sleep 0.1
    done
    die "the service did not say where it listens"
}

# stop_server: stops the server started last, if any, and waits for it.
stop_server() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=
}

# analyze_all URL...: ANALYZE each database, as autovacuum would within a
# minute of a real deployment's first writes. Until then PostgreSQL plans
# for empty tables, and a bench on a new database would measure those plans
# (docs/performance.md, "Plans made for empty tables").
analyze_all() {
    local url
    for url in "$@"; do
        psql "$url" -qc "ANALYZE" >/dev/null
    done
}
