#!/usr/bin/env bash
# `make test`: set up everything the tests need, then lint, type-check and test.
# The tests use their own database and RabbitMQ vhost, so a running dev stack
# is neither disturbed nor read.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_venv
ensure_k8s_tools
ensure_postgres
ensure_rabbitmq
ensure_rabbitmq_management
ensure_rabbitmq_prometheus
ensure_promtool
# TEST_NAMESPACE names the database and the vhost: two checkouts on one
# machine can run their suites at once without resetting each other's state.
TEST_NAMESPACE="${TEST_NAMESPACE:-billing_test}"
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgresql://$PG_USER@$PG_HOST:$PG_PORT/$TEST_NAMESPACE}"
export TEST_AMQP_URL="${TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/$TEST_NAMESPACE}"
ensure_database "$TEST_NAMESPACE"
ensure_vhost "$TEST_NAMESPACE"

say "ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
say "mypy (strict)"
"$VENV/bin/mypy"
say "pytest"
"$VENV/bin/pytest" "$@"
