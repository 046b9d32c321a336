"""`python -m bench.pages`: how long the web pages take to render (issue 14: ≤ 200 ms
server-side with 1,000 releases in the store).

    python -m bench.pages                       # 1,000 releases, SQLite in a temp dir
    python -m bench.pages --releases 10000 --rounds 10

Releases are seeded through the record's write API (bench/record.py: 3 stages, one in
ten waiting for bob's approval), over two pipelines. Each page is asked for by bob,
signed in with a session, through the real app in this process (httpx's ASGI
transport: no network, no client start-up), so the time is the server's: the route,
its record queries, the live view's question to Temporal (a dev server started here,
on a free port, stopped by its PID; it knows none of the seeded releases, so the
question is one describe call) and the template. Median and p90 of --rounds requests
per page after one warm-up; JSON to bench/results/pages.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from activities.record import default_database_url, open_database, open_session, upgrade
from activities.record.identity import add_user
from bench.record import seed_releases
from starter.api.app import create_app
from starter.web.session import COOKIE
from worker.devserver import free_port, start_dev_server, stop_process, wait_for_server
from worker.settings import Settings, connect

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_MS = 200.0


async def run(releases: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="stageflow-bench-pages-") as temp:
        data = Path(temp)
        url = default_database_url(data)
        await upgrade(url)
        db = open_database(url)
        port = free_port()
        server = start_dev_server(data / "temporal", port, headless=True)
        try:
            await wait_for_server(f"127.0.0.1:{port}", timeout=60, process=server)
            started = time.perf_counter()
            await seed_releases(db, releases, pipelines=("shop", "billing"))
            print(f"seeded {releases} releases in {time.perf_counter() - started:.1f} s")
            await add_user(db, "bob", admin=True)
            session = await open_session(db, user="bob", via="token bench", is_admin=True)
            settings = Settings.from_env(
                {"STAGEFLOW_DATA_DIR": str(data), "TEMPORAL_ADDRESS": f"127.0.0.1:{port}"}
            )
            app = create_app(settings, db=db, client=await connect(settings))
            middle = releases // 2 + (releases // 2) % 2  # a release of `shop`
            pages = {
                "dashboard (/)": "/",
                "approvals inbox (/approvals)": "/approvals",
                "release page (/releases/P/N)": f"/releases/shop/{middle}",
                "release stages, live refresh": f"/releases/shop/{middle}/stages",
                "pipeline page (/pipelines/P)": "/pipelines/shop",
            }
            figures = []
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(
                    transport=transport,
                    base_url="http://pages",
                    cookies={COOKIE: session.cookie.get_secret_value()},
                ) as client:
                    for name, path in pages.items():
                        times = await _times(client, path, rounds)
                        figure = {
                            "page": name,
                            "path": path,
                            "p50_ms": round(statistics.median(times), 1),
                            "p90_ms": round(_p90(times), 1),
                            "target_ms": TARGET_MS,
                        }
                        figures.append(figure)
                        met = "yes" if figure["p50_ms"] <= TARGET_MS else "NO"
                        print(
                            f"  {name:<34} p50 {figure['p50_ms']:7.1f} ms  "
                            f"p90 {figure['p90_ms']:7.1f} ms  ≤ {TARGET_MS:.0f} ms: {met}",
                            flush=True,
                        )
        finally:
            await db.close()
            stop_process(server)
    return {"releases": releases, "rounds": rounds, "figures": figures}


async def _times(client: httpx.AsyncClient, path: str, rounds: int) -> list[float]:
    warm = await client.get(path)
    if warm.status_code != 200:
        raise SystemExit(f"{path}: {warm.status_code} {warm.text[:300]}")
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        answer = await client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, (path, answer.status_code)
    return times


def _p90(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pages", description=__doc__)
    parser.add_argument("--releases", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS / "pages.json")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.releases, args.rounds))
    result["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
