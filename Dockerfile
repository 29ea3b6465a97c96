# syntax=docker/dockerfile:1
# One image for the five services and the offline Stripe emulator; the process
# is chosen by the command (compose and deploy/k8s set it):
#   python -m services.gateway | services.webhooks | services.subscriptions
#   | services.credits | services.retry | stripe_sandbox
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    HTTP_HOST=0.0.0.0

WORKDIR /app

# Fixed numeric ids so Kubernetes' runAsNonRoot can verify them.
RUN groupadd --system --gid 10001 billing \
 && useradd --system --uid 10001 --gid billing --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin billing

COPY pyproject.toml ./
COPY shared/ ./shared/
COPY services/ ./services/
COPY stripe_sandbox/ ./stripe_sandbox/
# The catalog the operator edits (CATALOG_PATH can point at a mounted one).
COPY catalog.toml ./
# Installs the pinned dependencies (all ship wheels for CPython 3.11, so no
# compiler is needed). The processes run the source in /app (first on
# sys.path), which also carries each service's migrations/*.sql.
RUN pip install --no-cache-dir .

USER 10001:10001

EXPOSE 8080 8081 8082 8083 8084 12111
