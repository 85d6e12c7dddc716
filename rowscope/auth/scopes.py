"""The scopes rowscope's tokens carry, in plain words for the consent page."""

from __future__ import annotations

READ = "rowscope:read"
WRITE = "rowscope:write"

DESCRIPTIONS = {
    READ: "Read your records, your sparks and their knowledge",
    WRITE: "Add training content to your sparks and remove it",
}
SUPPORTED = (READ, WRITE)
# Asked for when a client names no scope (ChatGPT's reconnect omits it): everything the server
# offers, which the user sees and approves on the consent page.
DEFAULT = SUPPORTED
# Requested by some clients; rowscope always issues refresh tokens, so it adds nothing.
IGNORED = frozenset({"offline_access"})


def parse(scope: str | None) -> list[str]:
    """Known scopes in a space-separated string, in canonical order; unknown ones are dropped."""
    asked = set((scope or "").split())
    return [s for s in SUPPORTED if s in asked]


def render(scopes: list[str] | tuple[str, ...] | set[str]) -> str:
    return " ".join(s for s in SUPPORTED if s in scopes)
