"""Throttling of password sign-ins (rowscope/auth/throttle.py, migration 0009), against a real
``rowscope serve`` with a small limit and window: failures counted per account and per client
address in PostgreSQL, 429 with ``Retry-After`` over a limit (the right password too, an unknown
email alike), the count cleared by a success and aged out by the window, and no email stored."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest
import sqlalchemy as sa
from alembic import command

from rowscope.db import migrate
from rowscope.server.demo import DEMO_PASSWORD
from tests.conftest import table_schema
from tests.oauth import hidden_fields
from tests.servers import serve

pytestmark = pytest.mark.slow

WINDOW = 3
PER_ACCOUNT = 3
PER_ADDRESS = 8
BOB = "bob@example.com"
NOBODY = "nobody-here@example.com"
MESSAGE = re.compile(r"Too many failed sign-ins; try again in 1 minute\.")
WRONG = "not-the-password"


@pytest.fixture(scope="module")
def url(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(
        database_url,
        tmp_path_factory.mktemp("throttle"),
        ROWSCOPE_SIGNIN_FAILURE_WINDOW=str(WINDOW),
        ROWSCOPE_SIGNIN_MAX_FAILURES=str(PER_ACCOUNT),
        ROWSCOPE_SIGNIN_MAX_FAILURES_PER_ADDRESS=str(PER_ADDRESS),
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def no_failures(admin: sa.Engine) -> Iterator[None]:
    """Each test starts with no failure counted, and leaves none for the other modules' servers
    (they share the database and the loopback address)."""

    def clear() -> None:
        with admin.begin() as conn:
            conn.execute(sa.text("DELETE FROM signin_failures"))

    clear()
    yield
    clear()


def sessions(admin: sa.Engine) -> int:
    with admin.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM auth_sessions")).scalar_one())


def post(url: str, email: str, password: str, local_address: str | None = None) -> httpx2.Response:
    """One sign-in through the real form (a fresh browser: the page, its cookie, its CSRF token)."""
    transport = httpx2.HTTPTransport(local_address=local_address) if local_address else None
    with httpx2.Client(timeout=15, transport=transport) as http:
        form = hidden_fields(http.get(f"{url}/signin").text)
        form.pop("__action__")
        return http.post(f"{url}/signin", data=form | {"email": email, "password": password})


def alert(response: httpx2.Response) -> str:
    found = re.search(r"<p class=error role=alert>(.*?)</p>", response.text)
    assert found, response.text
    return found.group(1)


def assert_refused(response: httpx2.Response) -> int:
    """A 429 sign-in page with the message and Retry-After (within the window); its seconds."""
    assert response.status_code == 429, response.text
    assert MESSAGE.fullmatch(alert(response))
    assert "Sign in to rowscope" in response.text
    assert "rowscope_session" not in response.headers.get("set-cookie", "")
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= WINDOW
    return retry_after


def fail(url: str, email: str, times: int) -> None:
    for _ in range(times):
        response = post(url, email, WRONG)
        assert response.status_code == 401, response.text
        assert alert(response) == "The email or password is not right."


def test_after_the_limit_even_the_right_password_is_refused_with_429(url: str, admin: sa.Engine) -> None:
    """The (N+1)th sign-in after N failures is refused before its password is looked at: the right
    one starts no session."""
    fail(url, BOB, PER_ACCOUNT)
    before = sessions(admin)
    assert_refused(post(url, BOB, DEMO_PASSWORD))
    assert_refused(post(url, BOB, WRONG))
    assert sessions(admin) == before


def test_an_unknown_email_is_throttled_exactly_like_a_known_one(url: str) -> None:
    """No account enumeration: the same answers, in the same order, for an email nobody has."""
    answers: dict[str, list[tuple[int, str, bool]]] = {}
    for email in (BOB, NOBODY):
        responses = [post(url, email, WRONG) for _ in range(PER_ACCOUNT + 1)]
        answers[email] = [(r.status_code, alert(r), "retry-after" in r.headers) for r in responses]
        assert_refused(responses[-1])
    assert answers[BOB] == answers[NOBODY]
    assert [status for status, _, _ in answers[BOB]] == [401] * PER_ACCOUNT + [429]


def test_once_the_window_has_passed_the_right_password_signs_in(url: str) -> None:
    fail(url, BOB, PER_ACCOUNT)
    retry_after = assert_refused(post(url, BOB, DEMO_PASSWORD))
    time.sleep(retry_after + 0.5)
    response = post(url, BOB, DEMO_PASSWORD)
    assert response.status_code == 303, response.text
    assert "rowscope_session" in response.headers["set-cookie"]


def test_a_success_clears_the_account_s_failures(url: str) -> None:
    """After a right password the account has its whole allowance again (without the clearing, the
    second failure after it would be over the limit)."""
    fail(url, BOB, PER_ACCOUNT - 1)
    assert post(url, BOB, DEMO_PASSWORD).status_code == 303
    fail(url, BOB, PER_ACCOUNT)
    assert_refused(post(url, BOB, DEMO_PASSWORD))


def test_one_address_is_limited_across_different_emails(url: str) -> None:
    """Spraying many accounts from one address: each account stays under its own limit, the
    address does not; another address is not affected."""
    for i in range(PER_ADDRESS):
        fail(url, f"spray-{i}@example.com", 1)
    assert_refused(post(url, "spray-new@example.com", WRONG))
    assert_refused(post(url, BOB, DEMO_PASSWORD))
    assert post(url, BOB, DEMO_PASSWORD, local_address="127.0.0.2").status_code == 303


def address_keys(admin: sa.Engine) -> list[str]:
    with admin.connect() as conn:
        return list(conn.execute(sa.text("SELECT key FROM signin_failures WHERE kind = 'address'")).scalars())


def fail_forwarded(url: str, forwarded_for: str) -> None:
    with httpx2.Client(timeout=15, headers={"X-Forwarded-For": forwarded_for}) as http:
        form = hidden_fields(http.get(f"{url}/signin").text)
        form.pop("__action__")
        response = http.post(f"{url}/signin", data=form | {"email": NOBODY, "password": WRONG})
    assert response.status_code == 401


def test_behind_a_trusted_proxy_the_forwarded_address_is_the_key(
    database_url: str, admin: sa.Engine, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Our choice (issue 12): X-Forwarded-For counts only from ROWSCOPE_TRUSTED_PROXIES (here the
    loopback network the test connects from): the client's address, not the proxy's, is counted;
    the proxy's own hop and anything it was sent before are not."""
    with serve(
        database_url, tmp_path_factory.mktemp("trusted-proxy"), ROWSCOPE_TRUSTED_PROXIES='["127.0.0.0/8"]'
    ) as url:
        fail_forwarded(url, "198.51.100.7, 203.0.113.9, 127.0.0.5")
    assert address_keys(admin) == ["203.0.113.9"]


def test_x_forwarded_for_from_a_peer_not_named_a_proxy_is_ignored(url: str, admin: sa.Engine) -> None:
    """Our choice (issue 12): with no trusted proxies (the default) anyone could write the header,
    so the peer's own address is the key, and a client cannot escape its limit by inventing one."""
    fail_forwarded(url, "203.0.113.9")
    assert address_keys(admin) == ["127.0.0.1"]


def test_concurrent_attempts_cannot_overshoot_the_limit(url: str) -> None:
    """Attempts are counted before their passwords are verified, one key at a time: of many wrong
    passwords sent at once, exactly the limit are verified (401) and the rest refused (429)."""
    browsers = [httpx2.Client(timeout=30) for _ in range(4 * PER_ACCOUNT)]
    try:
        forms = []
        for http in browsers:
            form = hidden_fields(http.get(f"{url}/signin").text)
            form.pop("__action__")
            forms.append(form | {"email": BOB, "password": WRONG})
        with ThreadPoolExecutor(len(browsers)) as pool:
            statuses = list(
                pool.map(
                    lambda pair: pair[0].post(f"{url}/signin", data=pair[1]).status_code,
                    zip(browsers, forms, strict=True),
                )
            )
    finally:
        for http in browsers:
            http.close()
    assert sorted(statuses) == [401] * PER_ACCOUNT + [429] * (len(browsers) - PER_ACCOUNT)


def test_the_table_holds_no_email_only_its_hash(url: str, admin: sa.Engine) -> None:
    """The account key is the SHA-256 of the lower-cased, stripped email; the address is the
    client's address."""
    fail(url, "  Dana.Secret@Example.COM ", 2)
    with admin.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT kind, key, signin_failures::text AS row FROM signin_failures")
        ).all()
    assert sorted((kind, key) for kind, key, _ in rows) == [
        ("account", hashlib.sha256(b"dana.secret@example.com").hexdigest()),
        ("account", hashlib.sha256(b"dana.secret@example.com").hexdigest()),
        ("address", "127.0.0.1"),
        ("address", "127.0.0.1"),
    ]
    assert not any("dana" in row.lower() for _, _, row in rows)


def test_csrf_is_checked_before_the_throttle(url: str) -> None:
    """A locked account's sign-in without its CSRF token is still the 403 of a stale form."""
    fail(url, BOB, PER_ACCOUNT)
    with httpx2.Client(timeout=15) as http:
        form = hidden_fields(http.get(f"{url}/signin").text)
        form.pop("__action__")
        form.pop("csrf_token")
        response = http.post(f"{url}/signin", data=form | {"email": BOB, "password": DEMO_PASSWORD})
    assert response.status_code == 403, response.text
    assert "retry-after" not in response.headers


def test_migration_0009_downgrades_and_upgrades_again(pg_admin: Callable[[str], str]) -> None:
    """Our choice (STYLE.md 7): a real downgrade. Down: the table is gone; up: the same table,
    indexes and row-level security again."""
    url = pg_admin(f"rowscope_throttle_{uuid.uuid4().hex[:8]}")
    config = migrate.alembic_config(url)
    engine = sa.create_engine(url)

    def shape() -> tuple[set[str], dict[str, str], bool | None]:
        columns, indexes = table_schema(engine, "signin_failures")
        with engine.connect() as conn:
            secured = conn.execute(
                sa.text("SELECT relrowsecurity FROM pg_class WHERE relname = 'signin_failures'")
            ).scalar()
        return columns, indexes, secured

    try:
        command.upgrade(config, "head")
        head = shape()
        assert head[0] == {"id", "kind", "key", "failed_at"}
        assert set(head[1]) == {
            "pk_signin_failures",
            "ix_signin_failures_kind_key_failed_at",
            "ix_signin_failures_failed_at",
        }
        assert head[2] is True
        command.downgrade(config, "0008")
        assert shape() == (set(), {}, None)
        command.upgrade(config, "head")
        assert shape() == head
    finally:
        engine.dispose()
