"""``ppproxy replay``: recorded answers from a HAR file served for matching requests, with no
identity provider, no upstream and no configuration.

::

    HAR file ─► recorded.load ─► Recordings (match: method, path and query, body; cycle)
                                     └── server (aiohttp): the recorded answer, or 404
                                         not_recorded with the nearest recorded requests
"""

from .recorded import Recorded, Recordings, load
from .server import create_app, serve

__all__ = ["Recorded", "Recordings", "create_app", "load", "serve"]
