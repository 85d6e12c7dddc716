"""rowscope's HTML pages: sign-in, consent, connections and errors. Plain server-rendered
forms with every value escaped; never framed (``frame-ancestors 'none'``, ``X-Frame-Options``)."""

from __future__ import annotations

import datetime as dt
from html import escape
from urllib.parse import urlencode, urlsplit

from starlette.responses import HTMLResponse

from rowscope.auth.scopes import DESCRIPTIONS
from rowscope.auth.store import TOKEN_USE_RESOLUTION, Connection

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

STYLE = """
body{font-family:system-ui,sans-serif;max-width:30rem;margin:3rem auto;padding:0 1rem;color:#1d2733}
h1{font-size:1.4rem}label{display:block;margin:.8rem 0 .2rem}input[type=email],input[type=password]
{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box}button{padding:.55rem 1.1rem;
font-size:1rem;margin:1rem .5rem 0 0}.muted{color:#5b6776;font-size:.9rem}.error{color:#a4161a}
ul{padding-left:1.2rem}table{border-collapse:collapse;width:100%}td{padding:.4rem 0}
.notice{background:#eef4ea;padding:.5rem .8rem}form.inline{display:inline}
button.link{background:none;border:0;padding:0;margin:0;font:inherit;color:#0b57d0;
text-decoration:underline;cursor:pointer}h2{font-size:1.1rem;margin:0 0 .3rem}
.connection{border-top:1px solid #d6dbe1;padding:1rem 0}.connection ul{margin:.3rem 0}
"""


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    html = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)} · rowscope</title>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def hidden(fields: dict[str, str]) -> str:
    return "".join(f"<input type=hidden name='{escape(k)}' value='{escape(v)}'>" for k, v in fields.items())


def signout_form(csrf: str, return_to: str, label: str = "Sign out") -> str:
    """The sign-out button, shown wherever a signed-in user is named (a POST with a CSRF token)."""
    fields = hidden({"csrf_token": csrf, "return_to": return_to})
    return (
        f"<form class=inline method=post action=/signout>{fields}"
        f"<button class=link type=submit name=action value=signout>{escape(label)}</button></form>"
    )


def signin_page(
    *,
    csrf: str,
    return_to: str,
    error: str | None = None,
    notice: str | None = None,
    email: str = "",
    oidc_name: str | None = None,
    status: int | None = None,
) -> HTMLResponse:
    if error:
        problem = f"<p class=error role=alert>{escape(error)}</p>"
    else:
        problem = f"<p class=notice role=status>{escape(notice)}</p>" if notice else ""
    upstream = (
        f"<p><a href='/signin/oidc?{escape(urlencode({'return_to': return_to}))}'>Sign in with {escape(oidc_name)}</a></p>"
        if oidc_name
        else ""
    )
    body = f"""<h1>Sign in to rowscope</h1>{problem}
<form method=post action=/signin>{hidden({"csrf_token": csrf, "return_to": return_to})}
<label for=email>Email</label><input id=email name=email type=email autocomplete=username required value='{escape(email)}'>
<label for=password>Password</label><input id=password name=password type=password autocomplete=current-password required>
<button type=submit name=action value=signin>Sign in</button></form>{upstream}"""
    return page("Sign in", body, status or (401 if error else 200))


def consent_page(
    *,
    client_name: str,
    client_id: str,
    verified: bool,
    redirect_uri: str,
    scopes: list[str],
    email: str,
    csrf: str,
    signout_csrf: str,
    params: dict[str, str],
) -> HTMLResponse:
    """``verified``: a metadata-document client, whose name was fetched from its ``client_id``'s
    host; otherwise the name is the client's own claim, and the page says so."""
    host = urlsplit(redirect_uri).hostname or redirect_uri
    items = "".join(f"<li>{escape(DESCRIPTIONS.get(s, s))}</li>" for s in scopes)
    # Signing out here comes back to this same request, to sign in as someone else; below the
    # decision, which stays the page's first form.
    switch = signout_form(signout_csrf, "/authorize?" + urlencode(params))
    if verified:
        source = urlsplit(client_id).hostname or client_id
        identity = (
            f"<p>This application is identified by <strong>{escape(source)}</strong>: rowscope read its "
            f"name from <strong>{escape(source)}</strong> itself.</p>"
        )
    else:
        identity = (
            "<p class=error><strong>Unverified application.</strong> "
            f"“{escape(client_name)}” is the name this application gave itself when it registered; "
            "rowscope cannot confirm who made it. Allow it only if you started this connection "
            f"yourself just now.</p><p class=muted>Application ID: {escape(client_id)}</p>"
        )
    body = f"""<h1>Allow {escape(client_name)} to use your rowscope data?</h1>{identity}
<p>Signed in as <strong>{escape(email)}</strong>.</p>
<p><strong>{escape(client_name)}</strong> is asking to:</p><ul>{items}</ul>
<p class=muted>After you decide you will be sent to <strong>{escape(host)}</strong>.
It only ever sees your own data. You can withdraw access at any time on the
<a href=/connections>connections page</a>.</p>
<form method=post action=/authorize>{hidden({**params, "csrf_token": csrf})}
<button type=submit name=action value=approve>Allow</button>
<button type=submit name=action value=deny>Deny</button></form>
<p class=muted>Not {escape(email)}? {switch}</p>"""
    return page("Authorize", body)


def ago(when: dt.datetime, now: dt.datetime) -> str:
    """How long ago, in the words a person would use."""
    seconds = max(0.0, (now - when).total_seconds())
    minutes, hours, days = int(seconds // 60), int(seconds // 3600), int(seconds // 86400)
    if seconds < TOKEN_USE_RESOLUTION.total_seconds():
        return "in the last few minutes"  # what a record kept to within five minutes can say
    if hours < 1:
        return f"{minutes} minutes ago"
    if days < 1:
        return "an hour ago" if hours == 1 else f"{hours} hours ago"
    if days < 2:
        return "yesterday"
    if days < 30:
        return f"{days} days ago"
    return f"on {when.day} {when:%B %Y}"


def when(label: str, moment: dt.datetime, now: dt.datetime) -> str:
    exact = f"{moment.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"
    return f"{label} <time datetime='{moment.isoformat()}' title='{exact}'>{escape(ago(moment, now))}</time>"


def connections_page(
    *, email: str, connections: list[Connection], csrf: str, signout_csrf: str, now: dt.datetime
) -> HTMLResponse:
    items = []
    for c in connections:
        can = "".join(f"<li>{escape(DESCRIPTIONS.get(s, s))}</li>" for s in c.scopes)
        used = when("Last used", c.last_used_at, now) if c.last_used_at else "Not used yet"
        fields = hidden({"csrf_token": csrf, "client_id": c.client_id})
        items.append(
            f"<div class=connection><h2>{escape(c.client_name)}</h2><p>It can:</p><ul>{can}</ul>"
            f"<p class=muted>{when('Connected', c.connected_at, now)} · {used}</p>"
            f"<form method=post action=/connections>{fields}"
            f"<button type=submit name=action value=revoke>Disconnect</button></form></div>"
        )
    listed = "".join(items) or "<p>No assistant is connected to your data.</p>"
    body = f"""<h1>Assistants connected to your data</h1>
<p>Signed in as <strong>{escape(email)}</strong>. {signout_form(signout_csrf, "/connections")}</p>
<p class=muted>Each assistant below can use your rowscope data, and only yours. Disconnect one and it
loses access at once; to use it again you would approve it again.</p>{listed}"""
    return page("Connected assistants", body)


def error_page(title: str, message: str, status: int = 400) -> HTMLResponse:
    return page(title, f"<h1>{escape(title)}</h1><p>{escape(message)}</p>", status)


def too_large(limit: int) -> HTMLResponse:
    """A form post past ``limit`` bytes: 413, and the connection closed so the rest goes unread."""
    response = error_page("Request too large", f"This form sent more than {limit} bytes.", 413)
    response.headers["Connection"] = "close"
    return response
