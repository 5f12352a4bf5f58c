"""The debugging tap: every exchange captured (redacted, bodies capped) into a ring buffer,
shown live at ``/_proxy/tap``, exported as HAR at ``/_proxy/tap.har`` and optionally recorded
to a JSON-lines file.

::

    exchange observers ─► store.Tap (captures → capture.Captured: bounded; record: redacted)
                            ├── two rings (routed, unrouted), under tap.max_memory
                            │     └── endpoints (page, SSE, JSON; har.py with export.py's
                            │         bodies; snippets.py: curl, PowerShell; resend.py)
                            └── recorder.Recorder (JSON lines, rotated, O_NOFOLLOW, 0600)
"""

from .endpoints import EVENTS, EXCHANGES, HAR, PAGE, install, may_look
from .store import Tap

__all__ = ["EVENTS", "EXCHANGES", "HAR", "PAGE", "Tap", "install", "may_look"]
