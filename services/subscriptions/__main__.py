"""``python -m services.subscriptions``"""

from services.subscriptions.app import create_app
from services.subscriptions.settings import SubscriptionsSettings
from shared.runtime import run


def main() -> None:
    settings = SubscriptionsSettings()  # secrets come from the environment
    run(
        lambda: create_app(settings),
        service="subscriptions",
        settings=settings,
        port=settings.subscriptions_port,
    )


if __name__ == "__main__":
    main()
