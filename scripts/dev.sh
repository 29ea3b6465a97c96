#!/usr/bin/env bash
# `make dev`: the whole product on this machine, from nothing.
#
# Installs the virtualenv, makes sure Postgres and RabbitMQ run (starting or
# installing them if needed), creates the database, generates any secret that
# is not set (kept in .dev/secrets.env so tokens survive a restart), starts the
# offline Stripe sandbox when no STRIPE_SECRET_KEY is set, then runs every
# service until Ctrl-C. Every setting can be overridden from the environment.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_venv
ensure_postgres
ensure_rabbitmq
ensure_rabbitmq_management

export DATABASE_URL="${DATABASE_URL:-postgresql://$PG_USER@$PG_HOST:$PG_PORT/billing}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}"
export GATEWAY_PORT="${GATEWAY_PORT:-8080}"
db_name="${DATABASE_URL##*/}"; db_name="${db_name%%\?*}"
ensure_database "$db_name"

# Secrets: the environment wins; otherwise reuse the ones generated before;
# otherwise generate one, keep it and print it.
mkdir -p .dev
secrets_file=.dev/secrets.env
touch "$secrets_file"; chmod 600 "$secrets_file"
generate() {  # name value
  local kept
  if [ -z "${!1:-}" ]; then
    kept="$(grep -m1 "^$1=" "$secrets_file" | cut -d= -f2- || true)"
    if [ -n "$kept" ]; then
      printf -v "$1" '%s' "$kept"
    else
      printf -v "$1" '%s' "$2"
      echo "$1=$2" >> "$secrets_file"
      say "generated $1 (dev only, kept in $secrets_file): $2"
    fi
  fi
  export "${1?}"
}
generate JWT_SECRET "$(openssl rand -hex 32 2>/dev/null || "$PY" -c 'import secrets; print(secrets.token_hex(32))')"
# Least privilege, as in production: each service its own internal-API token,
# Postgres role and RabbitMQ user (scripts/devstack.py provisions them with
# DATABASE_URL's and AMQP_URL's admin rights and gives each process only its own).
random_hex() { "$PY" -c 'import secrets; print(secrets.token_hex(24))'; }
for svc in WEBHOOKS SUBSCRIPTIONS CREDITS RETRY; do
  generate "${svc}_SERVICE_TOKEN" "$(random_hex)"
  generate "${svc}_DB_PASSWORD" "$(random_hex)"
done
for svc in GATEWAY WEBHOOKS SUBSCRIPTIONS CREDITS RETRY; do
  generate "${svc}_AMQP_PASSWORD" "$(random_hex)"
done
generate STRIPE_WEBHOOK_SECRETS "whsec_$("$PY" -c 'import secrets; print(secrets.token_hex(24))')"

# Stripe: a real key talks to Stripe (or STRIPE_API_BASE if set); no key runs
# the offline sandbox and points every service at it.
if [ -z "${STRIPE_SECRET_KEY:-}" ]; then
  export STRIPE_API_BASE="${STRIPE_API_BASE:-http://127.0.0.1:12111}"
  export SANDBOX_PORT="${STRIPE_API_BASE##*:}"
  export STRIPE_SECRET_KEY="sk_test_sandbox"
  export DEV_START_SANDBOX=1
  # Test mode: every new customer on its own Stripe test clock, moved with
  # POST /v1/admin/test-clocks/{user_id}/advance (README, "Subscriptions").
  export TEST_CLOCKS="${TEST_CLOCKS:-true}"
  say "no STRIPE_SECRET_KEY: starting the Stripe sandbox on $STRIPE_API_BASE,"
  say "  every service calls it, and it delivers signed webhooks to the gateway"
else
  export DEV_START_SANDBOX=0
  say "using Stripe with the key from STRIPE_SECRET_KEY${STRIPE_API_BASE:+ at $STRIPE_API_BASE}"
fi

# Checkout and billing-portal redirects may go to a local front end, any port.
export CHECKOUT_ALLOWED_ORIGINS="${CHECKOUT_ALLOWED_ORIGINS:-[\"http://localhost\",\"http://127.0.0.1\"]}"

exec "$PY" scripts/devstack.py
