"""The single-use key that guards claiming from the dashboard (`/api/v3/claim`).

The agent writes a random key at start to `var/lib/tether/tether_random_session_id`,
mode 0600 (the agent's user only), so only someone with a shell on the node
(root or the agent's user) can claim it through its web port. Every attempt,
right or wrong, replaces the key: a key read once is good for one try, and
guessing over the network is hopeless (128 random bits per try).
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from tether.atomic import write_atomic


class ClaimKey:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._key = ""

    def regenerate(self) -> None:
        self._key = secrets.token_hex(16)
        write_atomic(self.path, self._key + "\n", mode=0o600)

    def try_key(self, candidate: str) -> bool:
        """True when `candidate` is the current key; the key changes either way."""
        ok = bool(self._key) and hmac.compare_digest(candidate.encode(), self._key.encode())
        self.regenerate()
        return ok
