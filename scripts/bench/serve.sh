# shellcheck shell=bash
# The bench scripts' shared parts: starting and stopping the service, analyzing
# a database, a private PostgreSQL. Source it after scripts/common.sh, with
# $bin (the release binary) and $work (a scratch directory) set; do not run it.

server_pid=
address=

# start_server URL [SERVE ARGS...]: `serve` on a free port over the
# database URL (drain 0, JSON logs to $work/server.log); sets server_pid
# and address once it says where it serves gRPC (60 s at most; --metrics-listen
# logs an address of its own first). With $serve_wrap set (an array: a
# command and its arguments, valgrind say), the service runs under it.
start_server() {
    local url=$1
    shift
    CCC_DRAIN_MS=0 ${serve_wrap[@]+"${serve_wrap[@]}"} "$bin" --log-format json serve --listen 127.0.0.1:0 \
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

# migrate_db URL: `$bin migrate` over URL (which creates the database if
# missing); dies with the end of its log if it fails.
migrate_db() {
    "$bin" migrate --database-url "$1" 2>"$work/migrate.log" ||
        die "$bin migrate failed: $(tail -3 "$work/migrate.log")"
}

# admin_token URL: prints a new operator token of URL's database, valid
# for a day.
admin_token() {
    "$bin" token create --role admin --expires-in 86400 --database-url "$1" 2>/dev/null
}

# stop_server: stops the server started last, if any, and waits for it.
stop_server() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=
}

# field EXPR: EXPR (Python, over the JSON document `d` read from stdin)
# printed: "-" for null, floats to three places.
field() { python3 -c 'import json,sys; d=json.load(sys.stdin); v=eval(sys.argv[1]); print("-" if v is None else (f"{v:.3f}" if isinstance(v, float) else v))' "$1"; }

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

# start_private_pg [SETTING...]: a PostgreSQL of the script's own, for what
# the shared server must not be reconfigured for: initdb into $work/data
# from the installed binaries, a free port, each SETTING ("name = value")
# added to its configuration. Sets pg_port. Stop it with stop_private_pg
# (in the script's exit trap). With $pg_cpus set (a taskset CPU list) the
# server and every backend it forks run on those CPUs only.
start_private_pg() {
    pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    [[ -x $pgbin/initdb ]] || die "PostgreSQL's server binaries not found (apt-get install postgresql)"
    pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    chmod 755 "$work"
    [[ $(id -u) -eq 0 ]] && chown postgres "$work"
    say "starting a private PostgreSQL on port $pg_port"
    run_pg "$pgbin/initdb" -D "$work/data" -A trust -U postgres >/dev/null
    {
        echo "port = $pg_port"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$work'"
        printf '%s\n' "$@"
    } >>"$work/data/postgresql.conf"
    local pin=()
    [[ -n ${pg_cpus:-} ]] && pin=(taskset -c "$pg_cpus")
    run_pg "${pin[@]}" "$pgbin/pg_ctl" -D "$work/data" -l "$work/log" -w start >/dev/null
}

# stop_private_pg: stops the server start_private_pg started, if any.
stop_private_pg() {
    if [[ -n ${pgbin:-} ]]; then
        run_pg "$pgbin/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
    fi
}

# restart_private_pg_under_callgrind [OPTION...]: stops the private
# PostgreSQL and starts it again under `valgrind --tool=callgrind` with
# each OPTION, the postmaster and every process it forks counting into
# $work/cg/cg.<pid>; waits until it accepts connections (5 minutes at
# most: everything runs 20 to 50 times slower under callgrind).
restart_private_pg_under_callgrind() {
    say "restarting PostgreSQL under callgrind"
    run_pg "$pgbin/pg_ctl" -D "$work/data" -m fast stop >/dev/null
    mkdir "$work/cg"
    [[ $(id -u) -eq 0 ]] && chown postgres "$work/cg"
    run_pg valgrind --tool=callgrind --trace-children=yes "$@" \
        --callgrind-out-file="$work/cg/cg.%p" "$pgbin/postgres" -D "$work/data" \
        >"$work/valgrind.log" 2>&1 &
    for _ in $(seq 300); do
        pg_isready -q -h 127.0.0.1 -p "$pg_port" && return
        sleep 1
    done
    die "PostgreSQL under callgrind did not start"
}

# remove_work: removes $work, retrying: processes under callgrind write
# their counts as they exit, after the server has been told to stop.
remove_work() {
    for _ in 1 2 3 4 5; do
        rm -rf "$work" 2>/dev/null && return
        sleep 1
    done
}

# run_pg CMD...: CMD as the postgres user when running as root (initdb
# refuses root), else as is.
run_pg() {
    if [[ $(id -u) -eq 0 ]]; then as_postgres "$@"; else "$@"; fi
}
