#!/usr/bin/env bash
# `make bench`: every benchmark, each against a baseline measured in the same run.
#   webhooks  the gateway's webhook throughput against a bare aiohttp handler (wrk)
#   pipeline  Stripe events applied end to end: gateway -> broker -> subscriptions
#   dunning   attempts/s of two retry replicas against the sandbox, 100,000 cases open
#   credits   credit spends through the gateway, spread and on one hot account (wrk),
#             the ledger reconciled after each run
# `make bench BENCH=pipeline` runs one; BENCH_ARGS="--rounds 3" goes to each.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_venv
ensure_postgres
ensure_rabbitmq
ensure_rabbitmq_management
command -v wrk >/dev/null || { say "installing wrk"; apt_install wrk || die "wrk is needed (Debian package wrk)"; }
ensure_vhost billing_bench
ensure_database billing_bench
# The credits bench resets its schema: its own database, apart from the pipeline's.
ensure_database billing_bench_credits
export BENCH_AMQP_URL="${BENCH_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/billing_bench}"
export BENCH_DATABASE_URL="${BENCH_DATABASE_URL:-postgresql://$PG_USER@$PG_HOST:$PG_PORT/billing_bench}"
export BENCH_CREDITS_DATABASE_URL="${BENCH_CREDITS_DATABASE_URL:-postgresql://$PG_USER@$PG_HOST:$PG_PORT/billing_bench_credits}"

for bench in ${BENCH:-webhooks pipeline dunning credits}; do
  say "bench: $bench"
  # shellcheck disable=SC2086 # BENCH_ARGS is a list of words
  "$PY" -m "bench.$bench" ${BENCH_ARGS:-}
done
