"""rowscope's HTML pages: sign-in, consent, connections and errors. Plain server-rendered
forms with every value escaped; never framed (``frame-ancestors 'none'``, ``X-Frame-Options``)."""

from __future__ import annotations

from html import escape
from urllib.parse import urlencode, urlsplit

from starlette.responses import HTMLResponse

from rowscope.auth.scopes import DESCRIPTIONS

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


def signin_page(
    *,
    csrf: str,
    return_to: str,
    error: str | None = None,
    email: str = "",
    oidc_name: str | None = None,
    status: int | None = None,
) -> HTMLResponse:
    problem = f"<p class=error role=alert>{escape(error)}</p>" if error else ""
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
    *, client_name: str, redirect_uri: str, scopes: list[str], email: str, csrf: str, params: dict[str, str]
) -> HTMLResponse:
    host = urlsplit(redirect_uri).hostname or redirect_uri
    items = "".join(f"<li>{escape(DESCRIPTIONS.get(s, s))}</li>" for s in scopes)
    body = f"""<h1>Allow {escape(client_name)} to use your rowscope data?</h1>
<p>Signed in as <strong>{escape(email)}</strong>.</p>
<p><strong>{escape(client_name)}</strong> is asking to:</p><ul>{items}</ul>
<p class=muted>After you decide you will be sent to <strong>{escape(host)}</strong>.
It only ever sees your own data. You can withdraw access at any time on the
<a href=/connections>connections page</a>.</p>
<form method=post action=/authorize>{hidden({**params, "csrf_token": csrf})}
<button type=submit name=action value=approve>Allow</button>
<button type=submit name=action value=deny>Deny</button></form>"""
    return page("Authorize", body)


def connections_page(*, email: str, connections: list[dict[str, str]], csrf: str) -> HTMLResponse:
    rows = "".join(
        f"<tr><td><strong>{escape(c['client_name'])}</strong><br><span class=muted>{escape(c['scope'])}</span></td>"
        f"<td><form method=post action=/connections>{hidden({'csrf_token': csrf, 'client_id': c['client_id']})}"
        f"<button type=submit name=action value=revoke>Revoke</button></form></td></tr>"
        for c in connections
    )
    table = f"<table>{rows}</table>" if rows else "<p>No connected apps.</p>"
    body = f"<h1>Connected apps</h1><p>Signed in as <strong>{escape(email)}</strong>.</p>{table}"
    return page("Connected apps", body)


def error_page(title: str, message: str, status: int = 400) -> HTMLResponse:
    return page(title, f"<h1>{escape(title)}</h1><p>{escape(message)}</p>", status)
