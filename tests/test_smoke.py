from __future__ import annotations

import pytest

from tests.conftest import USERS, structured

pytestmark = pytest.mark.anyio


async def test_alice_lists_her_sparks(client_as) -> None:  # type: ignore[no-untyped-def]
    async with client_as(USERS["alice"]) as client:
        result = structured(await client.call_tool("list_sparks", {}))
    assert len(result["sparks"]) == 3
