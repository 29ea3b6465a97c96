"""``python -m services.webhooks [serve|migrate]``"""

from services.webhooks.app import MIGRATIONS, SCHEMA, create_app
from services.webhooks.settings import WebhooksSettings
from shared.runtime import main

if __name__ == "__main__":
    settings = WebhooksSettings()  # secrets come from the environment
    main(
        lambda: create_app(settings),
        service="webhooks",
        settings=settings,
        port=settings.webhooks_port,
        schema=SCHEMA,
        migrations=MIGRATIONS,
    )
