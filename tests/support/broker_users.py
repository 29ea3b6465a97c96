"""Each service's own RabbitMQ user in the test virtual host
(shared/broker/users.py). Users belong to the whole broker, so their names
carry the vhost's: two checkouts testing at once keep to their own."""

from __future__ import annotations

from urllib.parse import quote, unquote, urlsplit, urlunsplit

from shared.broker.policies import Management
from shared.broker.users import SERVICES, BrokerUser, provision
from tests.support import env


def user_url(service: str, amqp_url: str = env.AMQP_URL) -> str:
    parts = urlsplit(amqp_url)
    vhost = unquote(parts.path.lstrip("/")) or "root"
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(vhost, safe='')}_{service}:{service}-test-password@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def provision_test_users() -> dict[str, str]:
    """Create (or update) every service's user; its AMQP_URL by service."""
    urls = {service: user_url(service) for service in SERVICES}
    await provision(
        Management.for_broker(env.AMQP_URL),
        [BrokerUser.from_url(service, url) for service, url in urls.items()],
    )
    return urls
