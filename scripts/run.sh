#!/usr/bin/env bash
# Start the web app, a Celery worker and beat on the embedded default; stop them all on Ctrl-C.
set -euo pipefail
host=${1:-127.0.0.1}
port=${2:-8000}
bin=.venv/bin
mkdir -p var/log

"$bin/celery" -A governance worker --loglevel=INFO --concurrency=2 > var/log/worker.log 2>&1 &
worker=$!
"$bin/celery" -A governance beat --loglevel=INFO --schedule var/celerybeat-schedule > var/log/beat.log 2>&1 &
beat=$!
trap 'kill $worker $beat 2>/dev/null; wait 2>/dev/null' EXIT INT TERM

echo
echo "  Comptroller is starting at http://$host:$port/"
echo "  Demo login: $(cat var/demo-login.txt 2>/dev/null || echo 'run make seed')"
echo "  API docs:   http://$host:$port/api/docs/   health: http://$host:$port/healthz"
echo "  Worker and beat logs: var/log/"
echo
"$bin/python" manage.py runserver "$host:$port"
