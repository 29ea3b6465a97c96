"""``python -m services.retry [serve|migrate]``"""

from services.retry.app import MIGRATIONS, SCHEMA, create_app
from services.retry.settings import RetrySettings
from shared.runtime import main

if __name__ == "__main__":
    settings = RetrySettings()  # secrets come from the environment
    main(
        lambda: create_app(settings),
        service="retry",
        settings=settings,
        port=settings.retry_port,
        schema=SCHEMA,
        migrations=MIGRATIONS,
    )
