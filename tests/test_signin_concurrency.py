"""Password verification off the event loop (rowscope/auth/passwords.py): while sign-ins are being
verified, a real ``rowscope serve`` goes on answering other requests in far less time than one
argon2id verification takes."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import anyio
import httpx2
import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError

from tests.oauth import hidden_fields
from tests.servers import serve

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SIGNINS = 8


@pytest.fixture(scope="module")
def url(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Limits high enough that none of this module's failures is refused before it is verified.
    with serve(
        database_url,
        tmp_path_factory.mktemp("signin-concurrency"),
        ROWSCOPE_SIGNIN_MAX_FAILURES="1000",
        ROWSCOPE_SIGNIN_MAX_FAILURES_PER_ADDRESS="1000",
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def no_failures(admin: sa.Engine) -> Iterator[None]:
    """The failures counted here must not count against the other modules' sign-ins."""
    yield
    with admin.begin() as conn:
        conn.execute(sa.text("DELETE FROM signin_failures"))


def one_verification() -> float:
    """Seconds one argon2id verification takes on this machine (the median of three), with the
    parameters rowscope hashes with (argon2-cffi's defaults)."""
    hasher = PasswordHasher()
    hashed = hasher.hash("a password of no importance")
    times = []
    for _ in range(3):
        started = time.perf_counter()
        with pytest.raises(VerificationError):
            hasher.verify(hashed, "not the password")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def test_other_requests_are_answered_while_sign_ins_are_verified(url: str) -> None:
    """Our choice: a sign-in's argon2id verification (~0.1-0.2 s of CPU) runs in a worker thread,
    one at a time per process, so it never stalls the requests of everyone else."""
    verification = one_verification()
    browsers = [httpx2.AsyncClient(timeout=30) for _ in range(SIGNINS)]
    try:
        forms = []
        for http in browsers:  # each a browser of its own: its sign-in cookie and CSRF token
            form = hidden_fields((await http.get(f"{url}/signin")).text)
            form.pop("__action__")
            forms.append(form | {"email": "alice@example.com", "password": "not-the-password"})
        statuses: list[int] = []
        latencies: list[float] = []

        async def sign_in(http: httpx2.AsyncClient, form: dict[str, str]) -> None:
            statuses.append((await http.post(f"{url}/signin", data=form)).status_code)

        async with httpx2.AsyncClient(timeout=30) as probe:
            assert (await probe.get(f"{url}/health")).status_code == 200  # connected before
            started = time.perf_counter()
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tasks:
                    for http, form in zip(browsers, forms, strict=True):
                        tasks.start_soon(sign_in, http, form)
                    while len(statuses) < SIGNINS:
                        sent = time.perf_counter()
                        assert (await probe.get(f"{url}/health")).status_code == 200
                        latencies.append(time.perf_counter() - sent)
            elapsed = time.perf_counter() - started
    finally:
        for http in browsers:
            await http.aclose()
    stalled = sum(1 for latency in latencies if latency >= verification / 2)
    figures = (
        f"one verification {verification * 1000:.0f} ms; {SIGNINS} sign-ins in {elapsed * 1000:.0f} ms; "
        f"{len(latencies)} GET /health meanwhile: median {statistics.median(latencies) * 1000:.1f} ms, "
        f"p90 {statistics.quantiles(latencies, n=10)[-1] * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms, "
        f"{stalled} waited half a verification or more"
    )
    print(figures)
    assert statuses == [401] * SIGNINS, statuses
    # The sign-ins took several verifications' time, and requests kept being answered throughout.
    assert elapsed > 2 * verification, figures
    assert len(latencies) >= 10, figures
    assert statistics.median(latencies) < verification / 10, figures
    assert stalled == 0, figures
