"""Common building blocks of the billing services: settings, logging, metrics,
Postgres access and migrations, and the RabbitMQ event spine."""
