"""HTTP plumbing every service shares: JSON errors, request ids, metrics,
health endpoints and internal-API authentication."""
