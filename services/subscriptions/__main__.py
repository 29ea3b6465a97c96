"""``python -m services.subscriptions [serve|migrate]``"""

from services.subscriptions.app import MIGRATIONS, SCHEMA, create_app
from services.subscriptions.settings import SubscriptionsSettings
from shared.runtime import main

if __name__ == "__main__":
    settings = SubscriptionsSettings()  # secrets come from the environment
    main(
        lambda: create_app(settings),
        service="subscriptions",
        settings=settings,
        port=settings.subscriptions_port,
        schema=SCHEMA,
        migrations=MIGRATIONS,
    )
