"""``python -m services.credits [serve|migrate]``"""

from services.credits.app import MIGRATIONS, SCHEMA, create_app
from services.credits.settings import CreditsSettings
from shared.runtime import main

if __name__ == "__main__":
    settings = CreditsSettings()  # secrets come from the environment
    main(
        lambda: create_app(settings),
        service="credits",
        settings=settings,
        port=settings.credits_port,
        schema=SCHEMA,
        migrations=MIGRATIONS,
    )
