"""The CONNECT proxy the tests use as an outbound proxy (``proxy.testing.ConnectProxy``)."""

from proxy.testing import ConnectProxy

__all__ = ["ConnectProxy"]
