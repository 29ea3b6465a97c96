"""``python -m services.webhooks``"""

from services.webhooks.app import create_app
from services.webhooks.settings import WebhooksSettings
from shared.runtime import run


def main() -> None:
    settings = WebhooksSettings()  # secrets come from the environment
    run(
        lambda: create_app(settings),
        service="webhooks",
        settings=settings,
        port=settings.webhooks_port,
    )


if __name__ == "__main__":
    main()
