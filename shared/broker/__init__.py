"""The RabbitMQ event spine: topology, a confirming publisher and a consumer
base that owns the ack rule."""
