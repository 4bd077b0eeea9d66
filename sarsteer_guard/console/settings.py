"""Review console settings and the rule that keeps an open console off the network."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from sarsteer_guard.console.auth import ConsoleConfigError, TokenBook

#: Host names that always reach a loopback console (besides the bound address).
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts local connections."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ConsoleSettings:
    """How ``sarsteer-guard audit serve`` runs.

    Without tokens the console is open to anyone who can reach it, as the local user
    ``local`` with admin rights; that is allowed on loopback only (:meth:`check`).
    """

    audit_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8787
    tokens: TokenBook = field(default_factory=TokenBook)
    secret: bytes | None = field(default=None, repr=False)
    """Session signing key; None: random per process."""
    page_size: int = 50
    verify_every_s: float = 30.0
    """The chain is re-verified when a page needs it and the last check is older."""
    session_hours: float = 8.0
    reviewer_export_limit: int = 1000
    """Reviewers export at most this many records at once; admins export everything."""
    signin_per_minute: int = 10
    allowed_hosts: tuple[str, ...] = ()
    """Extra Host header names accepted (the public name behind a proxy)."""

    @property
    def loopback(self) -> bool:
        """Whether the console listens on loopback only."""
        return is_loopback(self.host)

    @property
    def secure_cookies(self) -> bool:
        """Cookies are marked Secure (HTTPS only) whenever the console is not on loopback."""
        return not self.loopback

    def hosts(self) -> frozenset[str]:
        """Host header names accepted (against DNS rebinding)."""
        names = {self.host.lower(), *(h.lower() for h in self.allowed_hosts)}
        if self.loopback:
            names.update(LOOPBACK_NAMES)
        return frozenset(names)

    def check(self) -> None:
        """Refuse settings that cannot be safe.

        Raises:
            ConsoleConfigError: a non-loopback bind without tokens, or bad limits.
        """
        if not self.loopback and not self.tokens.configured:
            raise ConsoleConfigError(
                f"refusing to serve the review console on {self.host} without tokens: set "
                "SARSTEER_CONSOLE_REVIEWER_TOKENS / SARSTEER_CONSOLE_ADMIN_TOKENS or "
                "--token-file, or listen on 127.0.0.1"
            )
        if self.page_size < 1 or self.reviewer_export_limit < 1 or self.signin_per_minute < 1:
            raise ConsoleConfigError("page size, export limit and sign-in limit must be positive")
