"""The subscriptions service's API (``services/subscriptions/contract.py``):
every handler module registers on the one ``routes``."""

from __future__ import annotations

from services.subscriptions import admin_api, member_api, member_changes
from services.subscriptions.payments import api as payments_api
from services.subscriptions.routing import SETTINGS, routes

payments_api.register(routes)

__all__ = ["SETTINGS", "admin_api", "member_api", "member_changes", "routes"]
