#!/usr/bin/env bash
# `make bench`: gateway webhook throughput against a bare aiohttp handler, with wrk.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_venv
ensure_rabbitmq
command -v wrk >/dev/null || { say "installing wrk"; apt_install wrk || die "wrk is needed (Debian package wrk)"; }
ensure_vhost billing_bench
export BENCH_AMQP_URL="${BENCH_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/billing_bench}"
"$PY" -m bench.webhooks "$@"
