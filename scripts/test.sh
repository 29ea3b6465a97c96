#!/usr/bin/env bash
# `make test`: set up everything the tests need, then lint, type-check and test.
# The tests use their own database and RabbitMQ vhost, so a running dev stack
# is neither disturbed nor read.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_venv
ensure_postgres
ensure_rabbitmq
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgresql://$PG_USER@$PG_HOST:$PG_PORT/billing_test}"
export TEST_AMQP_URL="${TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/billing_test}"
ensure_database billing_test
ensure_vhost billing_test

say "ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
say "mypy (strict)"
"$VENV/bin/mypy"
say "pytest"
"$VENV/bin/pytest" "$@"
