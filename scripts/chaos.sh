#!/usr/bin/env bash
# `make chaos` / `make chaos-scale`: the chaos run (python -m chaos), not part of
# `make test`. It starts its own throwaway Postgres cluster and RabbitMQ node
# (the run restarts both), so the machine's shared ones are never touched.
# CHAOS_EVENTS=2000 for a quick run; see chaos/__main__.py for every knob.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_venv
command -v rabbitmq-server >/dev/null || die "the chaos run needs RabbitMQ installed (it runs its own node)"
[ -x "${CHAOS_PG_BIN:-/usr/lib/postgresql/15/bin}/initdb" ] ||
  die "the chaos run needs PostgreSQL's initdb and pg_ctl (set CHAOS_PG_BIN to their folder)"
exec "$PY" -m chaos "$@"
