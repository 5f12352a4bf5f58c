"""ppproxy: an authenticating reverse proxy for the Microsoft Power Platform APIs."""

__version__ = "0.1.0"
