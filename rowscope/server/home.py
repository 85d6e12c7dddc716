"""``GET /``: a small page for whoever opens the server's address in a browser, in place of a 404:
what this is, the URL to give an assistant, and where connected apps are managed."""

from __future__ import annotations

from html import escape

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rowscope import __version__
from rowscope.auth.pages import page
from rowscope.server.settings import Settings


def routes(settings: Settings) -> list[Route]:
    mcp_url = escape(settings.resource_url)
    body = f"""<h1>rowscope</h1>
<p>This is an MCP server. It lets an AI assistant work with your own data in this application,
and nothing else: every call runs as you, and each of your rows is checked twice.</p>
<p>To connect an assistant (Claude, ChatGPT, the MCP Inspector), give it this URL:</p>
<p><code>{mcp_url}</code></p>
<p>It will ask you to sign in here and to approve it. You can see and revoke the apps you
connected on the <a href=/connections>connections page</a>.</p>
<p class=muted>rowscope {escape(__version__)}</p>"""

    async def home(_: Request) -> Response:
        return page("MCP server", body)

    return [Route("/", home, methods=["GET", "HEAD"])]
