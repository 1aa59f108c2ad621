#!/usr/bin/env bash
# Start the web app, a Celery worker and beat on the embedded default; stop them all on Ctrl-C.
# The banner is printed once the web port accepts connections. Logs are appended to var/log/.
set -euo pipefail
host=${1:-127.0.0.1}
port=${2:-8000}
bin=.venv/bin
mkdir -p var/log

stamp() { echo "=== $(date '+%Y-%m-%d %H:%M:%S') make run ===" >> "var/log/$1.log"; }
stamp worker
stamp beat
"$bin/celery" -A governance worker --loglevel=INFO --concurrency=2 >> var/log/worker.log 2>&1 &
worker=$!
"$bin/celery" -A governance beat --loglevel=INFO --schedule var/celerybeat-schedule >> var/log/beat.log 2>&1 &
beat=$!
banner=

stop() {
    trap - EXIT INT TERM
    local pids=("$worker" "$beat")
    [ -n "$banner" ] && pids+=("$banner")
    kill -TERM "${pids[@]}" 2> /dev/null || true
    # A worker finishes its task in hand on TERM; past 10 s, stop waiting for it.
    for _ in $(seq 100); do
        kill -0 "${pids[@]}" 2> /dev/null || break
        sleep 0.1
    done
    kill -KILL "${pids[@]}" 2> /dev/null || true
    wait 2> /dev/null || true
}
trap stop EXIT INT TERM

# The banner waits for the port to accept, so the URL it prints works when it appears.
show_banner() {
    for _ in $(seq 600); do
        "$bin/python" -c "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 0.5)" \
            "$host" "$port" 2> /dev/null && break
        sleep 0.2
    done
    local url="http://$host:$port"
    echo
    echo "  Comptroller is running at $url/"
    echo "  Sign in:      $(cat var/demo-login.txt 2> /dev/null || echo 'run make seed first')"
    echo "  Service key:  $(cat var/demo-service-key.txt 2> /dev/null || echo 'run make seed first')"
    echo "                (KEY=\$(cat var/demo-service-key.txt) for the README's curl example)"
    echo "  API docs:     $url/api/docs/   health: $url/healthz"
    echo "  Worker and beat logs: var/log/ (appended). Ctrl-C stops everything."
    echo
}
show_banner &
banner=$!
"$bin/python" manage.py runserver "$host:$port"
