.PHONY: dev test lint bench seed token chaos chaos-scale

# Run the whole product locally: installs, starts Postgres/RabbitMQ if needed,
# migrates, starts the five services (and the Stripe sandbox without a key).
dev:
	@scripts/dev.sh

# Lint, type-check and run every test against real Postgres and RabbitMQ.
# Anything after `--` goes to pytest: `make test -- tests/credits -x -q`.
test:
	@scripts/test.sh $(PYTEST_ARGS)

lint:
	@.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

# Benchmarks: webhook ingest (wrk) and events applied end to end (bench/*.py).
bench:
	@scripts/bench.sh

# Nothing lost under faults: signed events through the whole product while
# RabbitMQ, Postgres and each consumer restart, compared with a reference model.
# Its own Postgres and RabbitMQ; not part of `make test`. CHAOS_EVENTS=2000 for a quick one.
chaos:
	@scripts/chaos.sh run

# The same traffic drained by one, then two replicas of every consumer service.
chaos-scale:
	@scripts/chaos.sh scale

# Create the plans catalog in Stripe (or the sandbox) idempotently, and give
# the subscriptions made before their plan billed overage its metered prices.
seed:
	@.venv/bin/python -m services.subscriptions.seed_catalog

# `make test -- <pytest arguments>`: make sees those arguments as goals; they
# are handed to pytest instead, and the goals themselves do nothing.
ifeq (test,$(firstword $(MAKECMDGOALS)))
PYTEST_ARGS := $(wordlist 2,$(words $(MAKECMDGOALS)),$(MAKECMDGOALS))
%:
	@:
endif

# A dev JWT for the local gateway: make token [ROLE=member|staff|admin] [USER=id] [EMAIL=...]
# (USER only when given here: the shell's own $$USER is not a user id).
token:
	@.venv/bin/python scripts/dev_token.py --role "$(or $(ROLE),admin)" \
		--user "$(if $(filter command line,$(origin USER)),$(USER))" --email "$(EMAIL)"
