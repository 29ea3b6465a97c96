"""Each service's own Postgres role in the test database (shared/db_roles.py).

Roles belong to the whole Postgres cluster, so their names carry the test
database's name: two checkouts testing at once keep to their own.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from shared.db_roles import SERVICE_SCHEMAS, ServiceRole, provision_all
from tests.support import env


def role_url(service: str, database_url: str = env.DATABASE_URL) -> str:
    """``database_url`` with the service's own role (and a password) instead of its user."""
    parts = urlsplit(database_url)
    database = parts.path.lstrip("/")
    host = parts.hostname or "127.0.0.1"
    netloc = f"{database}_{service}:{service}-test-password@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def role_urls() -> dict[str, str]:
    return {service: role_url(service) for service in SERVICE_SCHEMAS}


async def provision_test_roles() -> dict[str, str]:
    """Create (or update) every service's role; its DATABASE_URL by service."""
    urls = role_urls()
    await provision_all(
        env.DATABASE_URL, [ServiceRole.from_url(service, url) for service, url in urls.items()]
    )
    return urls
