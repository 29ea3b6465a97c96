"""``python -m services.gateway``"""

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.runtime import main

if __name__ == "__main__":
    settings = GatewaySettings()  # secrets come from the environment
    main(
        lambda: create_app(settings),
        service="gateway",
        settings=settings,
        port=settings.gateway_port,
    )
