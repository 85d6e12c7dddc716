"""``rowscope demo``: a small, realistic Spark data set to try every tool at once.

alice@example.com and bob@example.com share the team "Northwind Studio"; carol@example.com works
alone. Between them they have a private spark each, a spark shared with the team, and a spark
where another user is a member; every user owns portfolio items, chat sessions with messages, and
sparks with embedded knowledge. Loading again replaces the demo rows (fixed ids) and nothing else.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, insert

from rowscope.auth.passwords import set_password
from rowscope.db.models import (
    ChatMessage,
    ChatSession,
    PortfolioItem,
    Spark,
    SparkMember,
    Team,
    TeamMember,
    UserProfile,
)
from rowscope.embeddings.chunking import chunk_text
from rowscope.server.runtime import Runtime
from rowscope.tools.train import item_id_for


def _id(name: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"https://rowscope.invalid/demo/{name}")


ALICE, BOB, CAROL = _id("alice"), _id("bob"), _id("carol")
# The demo users sign in on rowscope's sign-in page with this password (demo data only).
DEMO_PASSWORD = "rowscope-demo"  # noqa: S105 (demo data, printed by `rowscope demo`)
TEAM = _id("team-northwind")

USERS = [
    {"id": ALICE, "email": "alice@example.com", "display_name": "Alice Moreau", "bio": "Brand strategist."},
    {"id": BOB, "email": "bob@example.com", "display_name": "Bob Okafor", "bio": "UX researcher."},
    {
        "id": CAROL,
        "email": "carol@example.com",
        "display_name": "Carol Jensen",
        "bio": "Independent gardener.",
    },
]

SPARKS: list[dict[str, Any]] = [
    {
        "id": _id("spark-alice-coach"),
        "user_id": ALICE,
        "team_id": None,
        "is_shared_with_team": False,
        "name": "Alice's Writing Coach",
        "description": "Private coach for Alice's essays.",
        "knowledge": [
            "Alice writes short paragraphs and prefers active voice. "
            "Every essay opens with a concrete scene.",
            "Alice's editing checklist: cut adverbs, replace jargon, read the draft aloud before sending.",
        ],
    },
    {
        "id": _id("spark-studio-voice"),
        "user_id": ALICE,
        "team_id": TEAM,
        "is_shared_with_team": True,
        "name": "Studio Brand Voice",
        "description": "Northwind Studio's tone of voice, shared with the team.",
        "knowledge": [
            "Northwind Studio speaks plainly and warmly. We never use exclamation marks in client emails.",
            "Our tagline is 'Design that stays out of the way'. Colours: slate blue and warm sand.",
        ],
    },
    {
        "id": _id("spark-bob-research"),
        "user_id": BOB,
        "team_id": TEAM,
        "is_shared_with_team": False,
        "name": "Bob's Research Assistant",
        "description": "Interview synthesis; Alice helps as an editor.",
        "knowledge": [
            "Usability interviews in March showed that users could not find the export button on mobile.",
            "Participants preferred onboarding checklists over video tutorials by a wide margin.",
        ],
        "members": [(ALICE, "editor")],
    },
    {
        "id": _id("spark-bob-private"),
        "user_id": BOB,
        "team_id": None,
        "is_shared_with_team": False,
        "name": "Bob's Private Journal",
        "description": "Bob's own reflections.",
        "knowledge": ["Bob is planning a cycling trip along the Danube in September."],
    },
    {
        "id": _id("spark-carol-garden"),
        "user_id": CAROL,
        "team_id": None,
        "is_shared_with_team": False,
        "name": "Carol's Garden Planner",
        "description": "Planting calendar and soil notes.",
        "knowledge": [
            "Tomatoes go into the raised beds after the last frost, usually mid May, spaced 60 cm apart.",
            "The north bed has clay soil; add compost and sand each autumn to keep it workable.",
        ],
        "members": [(BOB, "viewer")],
    },
]

PORTFOLIO = [
    (ALICE, "link", "Brand book 2026", "The studio's brand guidelines.", "https://example.com/brand-book"),
    (ALICE, "file", "Essay drafts", "Three essays on design restraint.", None),
    (BOB, "link", "Interview notes", "Raw notes from twelve interviews.", "https://example.com/interviews"),
    (BOB, "description", "Research method", "How Bob runs diary studies.", None),
    (CAROL, "file", "Seed inventory", "Every seed packet in the shed.", None),
    (CAROL, "link", "Soil test results", "Lab results for the north bed.", "https://example.com/soil"),
]

CHATS = [
    (
        ALICE,
        "spark-alice-coach",
        "Tightening the intro",
        [
            ("user", "Can you make my opening paragraph shorter?"),
            ("assistant", "Start with the scene in the workshop and drop the first two sentences."),
        ],
    ),
    (
        BOB,
        "spark-bob-research",
        "Export button findings",
        [
            ("user", "Summarise what users said about exporting."),
            ("assistant", "Most could not find export on mobile; three gave up entirely."),
        ],
    ),
    (
        CAROL,
        "spark-carol-garden",
        "When to plant tomatoes",
        [
            ("user", "When should the tomatoes go out?"),
            ("assistant", "After the last frost, usually mid May."),
        ],
    ),
]


async def load_demo(runtime: Runtime) -> str:
    await runtime.start()
    try:
        store = runtime.knowledge
        assert store is not None  # the bundled Spark policy has one
        chunk_rows: list[dict[str, Any]] = []
        for spark in SPARKS:
            for n, text in enumerate(spark["knowledge"]):
                item = item_id_for(spark["id"], text)
                chunks = chunk_text(text)
                vectors = await runtime.embedder.embed([c.text for c in chunks])
                for c, v in zip(chunks, vectors, strict=True):
                    chunk_rows.append(
                        store.row(
                            spark["id"],
                            c.text,
                            c.sha256,
                            "knowledge",
                            str(item),
                            v,
                            runtime.embedder.model,
                            {
                                "item_id": str(item),
                                "title": f"{spark['name']} note {n + 1}",
                                "chunk_index": c.index,
                                "chunk_count": len(chunks),
                            },
                        )
                    )
        async with runtime.database.service_transaction() as conn:
            # Deleting the users cascades to everything they own.
            await conn.execute(delete(UserProfile).where(UserProfile.id.in_([ALICE, BOB, CAROL])))
            await conn.execute(delete(UserProfile).where(UserProfile.email.in_([u["email"] for u in USERS])))
            await conn.execute(delete(Team).where(Team.id == TEAM))
            await conn.execute(insert(UserProfile), USERS)
            for demo_user in (ALICE, BOB, CAROL):
                await set_password(conn, demo_user, DEMO_PASSWORD)
            await conn.execute(insert(Team).values(id=TEAM, name="Northwind Studio", owner_id=ALICE))
            await conn.execute(
                insert(TeamMember),
                [
                    {"team_id": TEAM, "user_id": ALICE, "role": "owner"},
                    {"team_id": TEAM, "user_id": BOB, "role": "member"},
                ],
            )
            await conn.execute(
                insert(Spark),
                [{k: v for k, v in s.items() if k not in ("knowledge", "members")} for s in SPARKS],
            )
            members = [
                {"spark_id": s["id"], "user_id": user, "role": role}
                for s in SPARKS
                for user, role in s.get("members", [])
            ]
            await conn.execute(insert(SparkMember), members)
            await conn.execute(
                insert(PortfolioItem),
                [
                    {"user_id": u, "kind": k, "title": t, "description": d, "url": url}
                    for u, k, t, d, url in PORTFOLIO
                ],
            )
            for user, spark_key, title, messages in CHATS:
                session = _id(f"chat-{title}")
                await conn.execute(
                    insert(ChatSession).values(id=session, user_id=user, spark_id=_id(spark_key), title=title)
                )
                await conn.execute(
                    insert(ChatMessage),
                    [{"session_id": session, "role": r, "content": c} for r, c in messages],
                )
            await store.insert(conn, chunk_rows)
    finally:
        await runtime.close()
    return (
        f"demo loaded: {len(USERS)} users, {len(SPARKS)} sparks, {len(chunk_rows)} knowledge chunks "
        f"({runtime.embedder.model}).\n"
        f"The demo users sign in with the password {DEMO_PASSWORD!r}.\n"
        "Try: rowscope stdio --user alice@example.com   or   rowscope keys create --user alice@example.com"
    )
