"""``python -m services.credits``"""

from services.credits.app import create_app
from services.credits.settings import CreditsSettings
from shared.runtime import run


def main() -> None:
    settings = CreditsSettings()  # secrets come from the environment
    run(
        lambda: create_app(settings),
        service="credits",
        settings=settings,
        port=settings.credits_port,
    )


if __name__ == "__main__":
    main()
