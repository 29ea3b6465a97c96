"""The ``/v1`` API contract, declared once and used on both sides of the gateway.

Each service declares its public operations as :class:`~shared.api.endpoint.Endpoint`
values (method, path, who may call it, the pydantic models of its query, body
and response) in its ``contract`` module. The gateway builds its routes, its
authentication and its OpenAPI document from those declarations; the owning
service binds a handler to each with :class:`~shared.api.service.ServiceRoutes`,
which validates the request against the same models and shapes the answer.
So the document cannot drift from what the code accepts and returns.
"""
