"""``python -m services.retry``"""

from services.retry.app import create_app
from services.retry.settings import RetrySettings
from shared.runtime import run


def main() -> None:
    settings = RetrySettings()  # secrets come from the environment
    run(
        lambda: create_app(settings),
        service="retry",
        settings=settings,
        port=settings.retry_port,
    )


if __name__ == "__main__":
    main()
