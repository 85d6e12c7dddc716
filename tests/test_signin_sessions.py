"""Sign-in sessions end when they should, against a real ``rowscope serve`` driven over HTTP: when
the user signs out (``POST /signout``), and for every browser of the user when the operator sets
their password, revokes their tokens or removes their account. The connections page says in plain
words what each connected assistant may do, and when it was connected and last used.

Each test makes a user of its own (``rowscope users add``), so the demo users' sessions, which
other tests hold, are never ended here; the user is deleted at the end."""

from __future__ import annotations

import re
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2
import pytest

from rowscope.auth.scopes import DESCRIPTIONS
from rowscope.auth.sessions import csrf_token
from tests.oauth import hidden_fields, pkce
from tests.oauth_server import (
    Registered,
    Server,
    assert_bearer_refused,
    assert_error_page,
    assert_oauth_error,
    hashed,
    sign_in,
)
from tests.servers import ROWSCOPE, child_env

pytestmark = pytest.mark.slow


def rowscope(database_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ROWSCOPE, *args],
        env=child_env(DATABASE_URL=database_url),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@dataclass(frozen=True)
class Person:
    email: str
    password: str
    id: uuid.UUID


def new_person(server: Server, database_url: str, prefix: str) -> Iterator[Person]:
    """A new user with a password, deleted (with every row of theirs) after the test."""
    email, password = f"{prefix}-{secrets.token_hex(4)}@example.com", secrets.token_urlsafe(12)
    added = rowscope(database_url, "users", "add", email, "--password-stdin", stdin=password + "\n")
    assert added.returncode == 0, added.stderr
    yield Person(email, password, uuid.UUID(added.stdout.split()[-1]))
    server.sql("DELETE FROM user_profiles WHERE email = :e", e=email)


@pytest.fixture
def person(server: Server, database_url: str) -> Iterator[Person]:
    yield from new_person(server, database_url, "session")


@pytest.fixture
def other(server: Server, database_url: str) -> Iterator[Person]:
    yield from new_person(server, database_url, "bystander")


def browser_of(server: Server, who: Person) -> httpx2.Client:
    return sign_in(server.url, who.email, who.password)


def password_works(server: Server, email: str, password: str) -> bool:
    """Whether the sign-in form accepts the password (a fresh browser, closed again)."""
    with httpx2.Client(timeout=15) as http:
        form = hidden_fields(http.get(f"{server.url}/signin").text)
        form.pop("__action__")
        answer = http.post(f"{server.url}/signin", data=form | {"email": email, "password": password})
    assert answer.status_code in (303, 401), answer.text
    return answer.status_code == 303


def signed_in(server: Server, browser: httpx2.Client) -> bool:
    """Whether the browser's session is live: the connections page answers instead of sending it to
    the sign-in page."""
    page = browser.get(f"{server.url}/connections")
    assert page.status_code in (200, 303), page.text
    return page.status_code == 200


def sessions_of(server: Server, who: Person) -> int:
    return int(server.scalar("SELECT count(*) FROM auth_sessions WHERE user_id = :u", u=who.id))


def forms(html: str) -> list[dict[str, str]]:
    return [hidden_fields(html, i) for i in range(html.count("<form"))]


def signout_form(html: str) -> dict[str, str]:
    form = next(f for f in forms(html) if f["__action__"] == "/signout")
    form.pop("__action__")
    return form


def consent_or_code(server: Server, browser: httpx2.Client, client: Registered) -> httpx2.Response:
    """GET /authorize for ``client``: the consent page (200), or a code at once (303)."""
    return browser.get(f"{server.url}/authorize", params=dict(server.authorize_query(client, pkce()[1])))


# -- the operator's commands -------------------------------------------------------------------------


def test_setting_a_password_signs_the_user_out_of_every_browser_and_no_one_else(
    server: Server, database_url: str, person: Person, other: Person
) -> None:
    """Our choice: whoever signed in with the old password is signed out (OWASP session management:
    invalidate sessions on a credential change); other users keep theirs."""
    laptop, phone, bystander = (
        browser_of(server, person),
        browser_of(server, person),
        browser_of(server, other),
    )
    try:
        assert signed_in(server, laptop) and signed_in(server, phone)
        new_password = secrets.token_urlsafe(12)
        done = rowscope(database_url, "users", "passwd", person.email, stdin=new_password + "\n")
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"password set for {person.email}; ended 2 sign-in session(s)\n"
        assert not signed_in(server, laptop) and not signed_in(server, phone)
        assert sessions_of(server, person) == 0
        assert signed_in(server, bystander)
        assert not password_works(server, person.email, person.password)
        assert password_works(server, person.email, new_password)
    finally:
        for browser in (laptop, phone, bystander):
            browser.close()


def test_revoking_a_user_s_tokens_signs_them_out_kills_unredeemed_codes_and_keeps_consents(
    server: Server, database_url: str, person: Person, other: Person
) -> None:
    """Our choice: after `tokens revoke --user`, nothing already handed out still works: tokens,
    refresh tokens, a code not yet redeemed, and the sign-in session that would hand a connector a
    new code at once. Consents stay: signing in again gets a code without asking."""
    client = server.register(client_name="revoked by the operator")
    browser, bystander = browser_of(server, person), browser_of(server, other)
    try:
        granted = server.tokens(browser, client)
        code, verifier = server.code(browser, client)  # issued, not yet redeemed
        others = server.tokens(bystander, client)
        done = rowscope(database_url, "tokens", "revoke", "--user", person.email)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"revoked 1 token(s) of {person.email}, ended 1 sign-in session(s)\n"
        assert_bearer_refused(server.mcp(granted["access_token"]))
        assert_oauth_error(server.refresh(client, granted["refresh_token"]), 400, "invalid_grant")
        assert_oauth_error(server.redeem(client, code, verifier), 400, "invalid_grant")
        assert not signed_in(server, browser)
        assert server.mcp(others["access_token"]).status_code == 200 and signed_in(server, bystander)
    finally:
        browser.close()
        bystander.close()
    again = browser_of(server, person)
    try:
        assert consent_or_code(server, again, client).status_code == 303  # remembered: a code at once
    finally:
        again.close()


def test_revoking_with_consents_also_forgets_what_the_user_approved(
    server: Server, database_url: str, person: Person
) -> None:
    """Our choice: `tokens revoke --user EMAIL --consents` makes every assistant ask again."""
    client = server.register(client_name="forgotten by the operator")
    browser = browser_of(server, person)
    try:
        server.tokens(browser, client)
    finally:
        browser.close()
    done = rowscope(database_url, "tokens", "revoke", "--user", person.email, "--consents")
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(", forgot 1 consent(s)\n")
    again = browser_of(server, person)
    try:
        asked = consent_or_code(server, again, client)
        assert asked.status_code == 200 and "action=/authorize" in asked.text
        assert "forgotten by the operator" not in again.get(f"{server.url}/connections").text
    finally:
        again.close()


def test_removing_a_user_deletes_rowscope_s_account_data_and_nothing_of_the_app_s(
    server: Server, database_url: str, person: Person
) -> None:
    """Our choice: `users remove` deletes the user's password, sessions, tokens, codes, consents and
    API keys, so nothing of theirs reaches rowscope any more; their profile and every row of the
    application stay (rowscope never deletes the app's data)."""
    client = server.register(client_name="removed user's app")
    browser = browser_of(server, person)
    try:
        granted = server.tokens(browser, client)
        server.code(browser, client)
        key = rowscope(database_url, "keys", "create", "--user", person.email).stdout.strip()
        assert server.mcp(key).status_code == 200
        spark = uuid.uuid4()
        server.sql(
            "INSERT INTO sparks (id, user_id, name) VALUES (:s, :u, 'kept spark')", s=spark, u=person.id
        )
        done = rowscope(database_url, "users", "remove", person.email)
        assert done.returncode == 0, done.stderr
        assert done.stdout == (
            f"removed {person.email}'s rowscope account data: password 1, sign-in sessions 1, "
            "authorization codes 2, OAuth tokens 1, consents 1, API keys 1\n"
        )
        assert "application's rows are untouched" in done.stderr
        assert not signed_in(server, browser)
        assert_bearer_refused(server.mcp(granted["access_token"]))
        assert_bearer_refused(server.mcp(key))
        assert_oauth_error(server.refresh(client, granted["refresh_token"]), 400, "invalid_grant")
    finally:
        browser.close()
    assert not password_works(server, person.email, person.password)
    for table in (
        "user_credentials",
        "auth_sessions",
        "oauth_codes",
        "oauth_tokens",
        "oauth_consents",
        "api_keys",
    ):
        assert server.scalar(f"SELECT count(*) FROM {table} WHERE user_id = :u", u=person.id) == 0, table
    assert server.scalar("SELECT email FROM user_profiles WHERE id = :u", u=person.id) == person.email
    assert server.scalar("SELECT name FROM sparks WHERE id = :s", s=spark) == "kept spark"


# -- signing out ---------------------------------------------------------------------------------------


def test_signing_out_ends_the_session_on_the_server_and_clears_the_cookie(
    server: Server, person: Person
) -> None:
    """Our choice: sign-out deletes the session row, so the cookie is worthless even if kept, and
    shows the sign-in page saying so."""
    browser = browser_of(server, person)
    try:
        cookie = browser.cookies["rowscope_session"]
        page = browser.get(f"{server.url}/connections")
        response = browser.post(f"{server.url}/signout", data=signout_form(page.text))
        assert response.status_code == 303
        assert response.headers["location"] == "/signin?return_to=%2Fconnections&signed_out=1"
        assert re.match(r'rowscope_session=""; .*Max-Age=0', response.headers["set-cookie"])
        assert "rowscope_session" not in browser.cookies
        assert (
            server.scalar("SELECT count(*) FROM auth_sessions WHERE token_hash = :h", h=hashed(cookie)) == 0
        )
        notice = browser.get(f"{server.url}{response.headers['location']}")
        assert "<p class=notice role=status>You are signed out.</p>" in notice.text
    finally:
        browser.close()
    with httpx2.Client(timeout=15, cookies={"rowscope_session": cookie}) as replayed:
        assert not signed_in(server, replayed)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="missing"),
        pytest.param("connections", id="another-form-s-token"),
        pytest.param("other-session", id="another-session-s-token"),
    ],
)
def test_sign_out_without_its_own_csrf_token_is_refused(
    server: Server, person: Person, other: Person, token: str | None
) -> None:
    """Our choice, as for every form of rowscope's pages: the CSRF token is bound to the session and
    the form's purpose; without it nobody is signed out (a 403 page, the session live)."""
    browser, stranger = browser_of(server, person), browser_of(server, other)
    try:
        page = browser.get(f"{server.url}/connections").text
        form = signout_form(page)
        if token is None:
            form.pop("csrf_token")
        elif token == "connections":  # the connections form's, of the same session
            form["csrf_token"] = csrf_token(browser.cookies["rowscope_session"], "connections")
        else:
            form["csrf_token"] = signout_form(stranger.get(f"{server.url}/connections").text)["csrf_token"]
        assert_error_page(browser.post(f"{server.url}/signout", data=form), 403)
        assert signed_in(server, browser) and signed_in(server, stranger)
    finally:
        browser.close()
        stranger.close()


def test_get_signout_signs_no_one_out(server: Server, person: Person) -> None:
    """Our choice: only the POST signs out (a link or an image elsewhere cannot); GET shows the
    connections page, where the button is."""
    browser = browser_of(server, person)
    try:
        response = browser.get(f"{server.url}/signout")
        assert (response.status_code, response.headers["location"]) == (303, "/connections")
        assert signed_in(server, browser)
    finally:
        browser.close()


def test_signing_out_on_the_consent_page_returns_to_the_same_request_as_someone_else(
    server: Server, person: Person, other: Person
) -> None:
    """Our choice: "Not you? Sign out" on the consent page leads to signing in as another user for
    the same authorization request, whose consent page then names that user."""
    client = server.register(client_name="shared computer app")
    browser = browser_of(server, person)
    try:
        consent = consent_or_code(server, browser, client)
        assert consent.status_code == 200 and person.email in consent.text
        assert f"Not {person.email}?" in consent.text
        form = signout_form(consent.text)
        assert form["return_to"].startswith("/authorize?")
        signed_out = browser.post(f"{server.url}/signout", data=form)
        assert signed_out.status_code == 303
        page = browser.get(f"{server.url}{signed_out.headers['location']}")
        fields = hidden_fields(page.text)
        fields.pop("__action__")
        assert fields["return_to"] == form["return_to"]
        back = browser.post(
            f"{server.url}/signin", data=fields | {"email": other.email, "password": other.password}
        )
        assert (back.status_code, back.headers["location"]) == (303, form["return_to"])
        again = browser.get(f"{server.url}{back.headers['location']}")
        assert "Allow shared computer app" in again.text
        assert other.email in again.text and person.email not in again.text
    finally:
        browser.close()


# -- the connections page ------------------------------------------------------------------------------


def test_the_connections_page_says_what_each_assistant_may_do_and_when_it_was_last_used(
    server: Server, person: Person
) -> None:
    """Our choice: the page names each assistant, what it may do in the consent page's words, when it
    was connected and when it last used its access (issue, refresh, or a verified call)."""
    fresh, idle = (
        server.register(client_name="Fresh assistant"),
        server.register(client_name="Idle assistant"),
    )
    browser = browser_of(server, person)
    try:
        server.code(browser, fresh)  # approved, no token yet
        granted = server.tokens(browser, idle, scope="rowscope:read")
        # As if it was approved yesterday, and its token issued three hours ago and not used since.
        server.sql(
            "UPDATE oauth_consents SET created_at = now() - interval '1 day 1 hour' WHERE client_id = :c",
            c=idle.client_id,
        )
        server.sql(
            "UPDATE oauth_tokens SET created_at = now() - interval '3 hours' WHERE access_hash = :h",
            h=hashed(granted["access_token"]),
        )
        page = browser.get(f"{server.url}/connections").text
        assert "<h1>Assistants connected to your data</h1>" in page
        fresh_part, idle_part = (
            page.split("<h2>Fresh assistant</h2>")[1],
            page.split("<h2>Idle assistant</h2>")[1],
        )
        assert all(DESCRIPTIONS[s] in fresh_part.split("</div>")[0] for s in DESCRIPTIONS)
        assert "Not used yet" in fresh_part.split("</div>")[0]
        idle_part = idle_part.split("</div>")[0]
        assert DESCRIPTIONS["rowscope:read"] in idle_part and DESCRIPTIONS["rowscope:write"] not in idle_part
        assert re.search(r"Connected <time datetime='[^']+' title='[^']+ UTC'>yesterday</time>", idle_part)
        assert re.search(r"Last used <time datetime='[^']+' title='[^']+ UTC'>3 hours ago</time>", idle_part)
        assert page.index("Idle assistant") > page.index("Fresh assistant")  # most recently used first

        assert server.mcp(granted["access_token"]).status_code == 200  # a call records its use
        idle_part = browser.get(f"{server.url}/connections").text.split("<h2>Idle assistant</h2>")[1]
        assert (
            "Last used <time" in idle_part
            and ">in the last few minutes</time>" in idle_part.split("</div>")[0]
        )
    finally:
        browser.close()


def test_a_disconnected_then_reapproved_assistant_starts_afresh(server: Server, person: Person) -> None:
    """Our choice: an assistant withdrawn and approved again is a new connection: its old tokens'
    use is not its last use."""
    client = server.register(client_name="Reconnected assistant")
    browser = browser_of(server, person)
    try:
        server.tokens(browser, client)
        page = browser.get(f"{server.url}/connections").text
        form = next(f for f in forms(page) if f.get("client_id") == client.client_id)
        form.pop("__action__")
        assert browser.post(f"{server.url}/connections", data=form | {"action": "revoke"}).status_code == 303
        assert "Reconnected assistant" not in browser.get(f"{server.url}/connections").text
        server.code(browser, client)
        part = browser.get(f"{server.url}/connections").text.split("<h2>Reconnected assistant</h2>")[1]
        assert "Not used yet" in part.split("</div>")[0]
    finally:
        browser.close()


def test_the_signed_out_notice_is_only_a_notice(server: Server) -> None:
    """Our choice: ``signed_out=1`` changes only the sign-in page's wording, never where it leads."""
    with httpx2.Client(timeout=15) as http:
        page = http.get(
            f"{server.url}/signin", params={"signed_out": "1", "return_to": "https://evil.example/"}
        )
    assert page.status_code == 200 and "You are signed out." in page.text
    assert hidden_fields(page.text)["return_to"] == "/connections"
