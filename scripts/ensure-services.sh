#!/usr/bin/env bash
# Make sure the servers the test suite talks to are up: PostgreSQL (127.0.0.1:5432),
# Redis (127.0.0.1:6379) and an S3 server (moto, 127.0.0.1:${LETHE_S3_PORT:-9900}).
#
# Idempotent: a service that already answers is left alone, so `make test` can call this
# every time. Tests use real servers, not mocks (see DESIGN.md); this script is what makes
# that cheap locally. Each service gets a bounded wait (~20 s); if one does not answer the
# script fails naming it, instead of letting tests time out obscurely later.
#
# Usage: scripts/ensure-services.sh [VENV_BIN]   (default: .venv/bin, for moto_server)

set -euo pipefail

# Resolve the venv path before changing directory, so a relative argument means relative
# to where the caller stands.
venv_bin="${1:-}"
if [[ -n "$venv_bin" && -d "$venv_bin" ]]; then
    venv_bin="$(cd "$venv_bin" && pwd)"
fi
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
venv_bin="${venv_bin:-.venv/bin}"

s3_port="${LETHE_S3_PORT:-9900}"
wait_s="${LETHE_SERVICES_WAIT_S:-20}"
state_dir="$repo_root/var"

say() { echo "ensure-services: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# wait_for NAME CHECK...: poll CHECK every 0.5 s until it succeeds or wait_s elapses.
wait_for() {
    local name="$1"; shift
    local tries=$(( wait_s * 2 ))
    for (( i = 0; i < tries; i++ )); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    return 1
}

# --- PostgreSQL ---------------------------------------------------------------------------
pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q; }

if pg_up; then
    say "postgres: already answering on 127.0.0.1:5432"
else
    command -v pg_ctlcluster >/dev/null || die "postgres: not answering on 127.0.0.1:5432 and pg_ctlcluster is not installed"
    pg_version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$pg_version" ]] || die "postgres: no cluster under /etc/postgresql"
    say "postgres: starting cluster $pg_version/main"
    # "already running" (e.g. up but still recovering) is not an error: the wait decides.
    pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start || true
    wait_for postgres pg_up || die "postgres: still not answering on 127.0.0.1:5432 after ${wait_s}s (see /var/log/postgresql/)"
    say "postgres: up"
fi

# --- Redis --------------------------------------------------------------------------------
redis_up() { [[ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" == "PONG" ]]; }

if redis_up; then
    say "redis: already answering on 127.0.0.1:6379"
else
    command -v redis-server >/dev/null || die "redis: not answering on 127.0.0.1:6379 and redis-server is not installed"
    say "redis: starting"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" >/dev/null \
        || die "redis: redis-server failed to start"
    wait_for redis redis_up || die "redis: still not answering on 127.0.0.1:6379 after ${wait_s}s"
    say "redis: up"
fi

# --- S3 (moto) ----------------------------------------------------------------------------
# "Answers" = accepts a TCP connection and speaks HTTP. bash's /dev/tcp needs no curl.
s3_up() {
    exec 3<>"/dev/tcp/127.0.0.1/$s3_port" || return 1
    printf 'GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    local status_line
    IFS= read -r -t 2 status_line <&3 || status_line=""
    exec 3<&- 3>&-
    [[ "$status_line" == HTTP/* ]]
}

if s3_up 2>/dev/null; then
    say "s3: already answering on 127.0.0.1:$s3_port"
else
    moto="$venv_bin/moto_server"
    [[ -x "$moto" ]] || die "s3: nothing answers on 127.0.0.1:$s3_port and $moto is missing (pip install -e '.[test]')"
    mkdir -p "$state_dir"
    say "s3: starting moto_server on 127.0.0.1:$s3_port (log: var/moto-$s3_port.log)"
    # setsid + nohup: the server outlives this script and the make job that ran it, so the
    # next run finds it answering and reuses it. The inner shell records its own pid and
    # execs moto, so the pid file is right even where setsid has to fork.
    rm -f "$state_dir/moto-$s3_port.pid"
    setsid nohup bash -c 'echo $$ >"$1"; shift; exec "$@"' moto-launch "$state_dir/moto-$s3_port.pid" \
        "$moto" -H 127.0.0.1 -p "$s3_port" >"$state_dir/moto-$s3_port.log" 2>&1 </dev/null &
    moto_pid=""
    for (( i = 0; i < wait_s * 2; i++ )); do
        [[ -n "$moto_pid" ]] || moto_pid="$(cat "$state_dir/moto-$s3_port.pid" 2>/dev/null || true)"
        if [[ -n "$moto_pid" ]] && ! kill -0 "$moto_pid" 2>/dev/null; then
            tail -n 20 "$state_dir/moto-$s3_port.log" >&2 || true
            die "s3: moto_server (pid $moto_pid) exited at start; see var/moto-$s3_port.log"
        fi
        if s3_up 2>/dev/null; then
            break
        fi
        sleep 0.5
    done
    if ! s3_up 2>/dev/null; then
        tail -n 20 "$state_dir/moto-$s3_port.log" >&2 || true
        die "s3: moto_server (pid ${moto_pid:-?}) not answering on 127.0.0.1:$s3_port after ${wait_s}s"
    fi
    say "s3: up (pid $moto_pid)"
fi
