"""Benchmark: library search on the store, SQLite (FTS5) and PostgreSQL (pg_trgm), on a catalog of N items.

    python -m loadtest.bench.library_search [--items 10000] [--rounds 200] [--json]
                                            [--postgres postgresql://postgres@127.0.0.1:5432/postgres | --no-postgres]

Results and caveats: docs/benchmarks.md.

What runs: the REAL catalog (``recorder.library.catalog.Library.search``, what ``GET /api/library`` awaits) on each
engine, filled with N published items of realistic Chinese titles, teachers, schools and curriculum fields (the
search index of each item made by the same code as a live item's: FTS5 rows on SQLite, ``search_text`` on
PostgreSQL). On PostgreSQL a database of its own is created on the given server (UTF-8, C.UTF-8 ctype, as
docs/deploy.md says) and dropped afterwards. Query kinds, interleaved round by round so that a noisy machine
hits every kind alike:

* ``get``: one item by id (the primary key) — the baseline, the cheapest read the catalog makes;
* ``zh-2``: a two-character Chinese substring found in ~10 % of titles (方程);
* ``zh-6``: a six-character one (一元一次方程);
* ``teacher``: a teacher's name, a few dozen items (王建国);
* ``latin``: a Latin prefix (pyth);
* ``filter``: no text, subject + grade filters (数学, 七年级);
* ``none``: a term nothing holds (量子隧穿).

Each search asks for the first page (20) and the total, as the library page does. Reported per kind and engine:
p50/p95 in ms and p50 as a multiple of the same engine's ``get``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy as sa

from recorder.library.catalog import PUBLISHED, Library, Viewer, _search_parts
from store import recordings, search_text, segment

QUERIES: dict[str, tuple[str, dict[str, str]]] = {
    "zh-2": ("方程", {}),
    "zh-6": ("一元一次方程", {}),
    "teacher": ("王建国", {}),
    "latin": ("pyth", {}),
    "filter": ("", {"subject": "数学", "grade": "七年级"}),
    "none": ("量子隧穿", {}),
}
SUBJECTS = {
    "数学": ["一元一次方程", "二元一次方程组", "勾股定理", "平行四边形的性质", "二次函数的图像", "相似三角形",
             "概率初步", "整式的乘法", "分式方程", "Pythagoras 定理的证明"],
    "语文": ["春", "背影", "岳阳楼记", "醉翁亭记", "藤野先生", "孔乙己", "故乡", "说和做"],
    "英语": ["Unit 3 How do you get to school", "Unit 5 Why do you like pandas", "Module 2 My family"],
    "物理": ["牛顿第一定律", "浮力", "欧姆定律", "光的折射", "电功率"],
    "化学": ["化学反应速率", "氧化还原反应", "酸和碱", "质量守恒定律"],
    "生物": ["细胞的结构", "光合作用", "遗传与变异"],
}
GRADES = ["七年级", "八年级", "九年级", "高一", "高二", "四年级", "五年级", "六年级"]
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = ["建国", "丽华", "秀英", "志强", "明", "静", "伟", "芳", "敏", "军", "洋", "磊", "婷", "海燕", "春梅"]
COUNTIES = ["凉山州", "昭通市", "毕节市", "定西市", "甘孜州", "怒江州", "临夏州", "黔东南州"]
EDITIONS = ["人教版", "北师大版", "苏教版", "部编版", "沪教版"]


def make_items(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    items = []
    for i in range(n):
        subject = rnd.choice(list(SUBJECTS))
        topic, grade = rnd.choice(SUBJECTS[subject]), rnd.choice(GRADES)
        teacher = rnd.choice(SURNAMES) + rnd.choice(GIVEN)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_700_000_000 + i * 600))
        items.append({
            "id": secrets.token_hex(8), "lesson_id": f"lesson-{i}", "file": f"recordings/{i}.webm",
            "state": PUBLISHED, "created_at": stamp, "updated_at": stamp, "teacher_sub": f"t-{teacher}",
            "title": f"{grade}{subject} · {topic}", "description": f"{teacher}老师的{topic}示范课，第{i % 12 + 1}课时",
            "teacher": teacher, "school": f"{rnd.choice(COUNTIES)}第{rnd.randint(1, 30)}中学", "language": "zh-CN",
            "date": stamp[:10], "license": "", "stage": "初中", "subject": subject, "grade": grade,
            "edition": rnd.choice(EDITIONS), "volume": rnd.choice(["上册", "下册"]), "unit": f"第{rnd.randint(1, 9)}单元",
            "chapter": topic, "duration_s": 2400.0, "size_bytes": 100_000_000,
        })
    return items


async def fill(lib: Library, items: list[dict[str, Any]]) -> float:
    """Insert the items and their search index in bulk (the same index text a live item gets); seconds."""
    t0 = time.perf_counter()
    await lib.open()
    async with lib.store.write() as db:
        if lib.sqlite:
            await db.execute(sa.insert(recordings), items)
            rows = (await db.execute(sa.text("SELECT rowid, * FROM recordings"))).mappings().all()
            await db.execute(sa.text("INSERT INTO recordings_fts (rowid, title, description, people, curriculum) "
                                     "VALUES (:rowid, :p0, :p1, :p2, :p3)"),
                             [{"rowid": r["rowid"], **{f"p{i}": segment(p) for i, p in enumerate(_search_parts(r))}}
                              for r in rows])
        else:
            await db.execute(sa.insert(recordings), [{**it, "search_text": search_text(_search_parts(it))}
                                                     for it in items])
            await db.execute(sa.text("ANALYZE recordings"))
    return time.perf_counter() - t0


async def measure(lib: Library, ids: list[str], rounds: int) -> dict[str, dict[str, float]]:
    viewer = Viewer.anonymous()
    times: dict[str, list[float]] = {k: [] for k in ("get", *QUERIES)}
    counts: dict[str, int] = {}
    rnd = random.Random(3)
    for _ in range(10):  # warm the caches and the pool
        await lib.search("方程", viewer=viewer)
    for _ in range(rounds):
        kinds = list(times)
        rnd.shuffle(kinds)
        for kind in kinds:
            t0 = time.perf_counter()
            if kind == "get":
                await lib.get(rnd.choice(ids))
            else:
                query, filters = QUERIES[kind]
                _, counts[kind] = await lib.search(query, filters, viewer=viewer)
            times[kind].append((time.perf_counter() - t0) * 1000)
    base = statistics.median(times["get"])
    out = {}
    for kind, t in times.items():
        t.sort()
        out[kind] = {"p50_ms": round(statistics.median(t), 3), "p95_ms": round(t[int(len(t) * 0.95) - 1], 3),
                     "x_get": round(statistics.median(t) / base, 1), "matches": counts.get(kind, 1)}
    return out


async def run_engine(name: str, url: str | None, items: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ketang-bench-") as tmp:
        lib = Library(Path(tmp), database_url=url, poster_maker=lambda src, dst: None)
        try:
            fill_s = await fill(lib, items)
            results = await measure(lib, [it["id"] for it in items], rounds)
        finally:
            await lib.close()
    return {"engine": name, "items": len(items), "fill_s": round(fill_s, 2), "queries": results}


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    items = make_items(args.items)
    reports = [await run_engine("sqlite", None, items, args.rounds)]
    if not args.no_postgres:
        admin = args.postgres
        name = f"ketang_bench_{secrets.token_hex(4)}"
        conn = await asyncpg.connect(admin)
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C.UTF-8' "
                           "LC_CTYPE 'C.UTF-8'")
        await conn.close()
        url = admin.replace("postgresql://", "postgresql+asyncpg://", 1).rsplit("/", 1)[0] + "/" + name
        try:
            reports.append(await run_engine("postgresql", url, items, args.rounds))
        finally:
            conn = await asyncpg.connect(admin)
            await conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
            await conn.close()
    return reports


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench.library_search", description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres",
                   help="a superuser URL of a PostgreSQL server to make a throwaway database on")
    p.add_argument("--no-postgres", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    reports = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(reports, ensure_ascii=False, indent=1))
        return 0
    for r in reports:
        print(f"{r['engine']}: {r['items']} items (filled in {r['fill_s']} s)")
        print(f"  {'kind':<8} {'matches':>8} {'p50 ms':>8} {'p95 ms':>8} {'p50 x get':>10}")
        for kind, q in r["queries"].items():
            print(f"  {kind:<8} {q['matches']:>8} {q['p50_ms']:>8.2f} {q['p95_ms']:>8.2f} {q['x_get']:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
