.PHONY: dev test lint bench seed

# Run the whole product locally: installs, starts Postgres/RabbitMQ if needed,
# migrates, starts the five services (and the Stripe sandbox without a key).
dev:
	@scripts/dev.sh

# Lint, type-check and run every test against real Postgres and RabbitMQ.
test:
	@scripts/test.sh

lint:
	@.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

# Webhook throughput of the gateway against a bare aiohttp handler (wrk).
bench:
	@scripts/bench.sh

# Create the plans catalog in Stripe (or the sandbox) idempotently.
seed:
	@.venv/bin/python -m services.subscriptions.seed_catalog
