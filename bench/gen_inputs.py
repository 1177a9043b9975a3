#!/usr/bin/env python3
"""Generate the inputs of bench/run.py's real-program workloads.

Deterministic text, written into a directory (default bench/results/inputs):

* workload.sql: a sqlite3 script (tables, inserts, an index, joins, group by)
* workload.c:   a large C translation unit for gcc -O2 -c
* workload.cpp: a C++ translation unit with templates and standard containers
* workload.json: a JSON array of records for jq

    python bench/gen_inputs.py [--out DIR] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

log = logging.getLogger("gen_inputs")

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "inputs"


def sql_script(rows: int) -> str:
    rng = random.Random(1)
    out = [
        "PRAGMA journal_mode=OFF;",
        "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, city TEXT, age INT);",
        "CREATE TABLE orders(id INTEGER PRIMARY KEY, user_id INT, item TEXT, price REAL);",
        "BEGIN;",
    ]
    cities = [f"city_{i}" for i in range(50)]
    for i in range(rows):
        out.append(f"INSERT INTO users VALUES({i}, 'user_{i}', '{rng.choice(cities)}', "
                   f"{rng.randint(18, 90)});")
        out.append(f"INSERT INTO orders(user_id, item, price) VALUES({rng.randrange(rows)}, "
                   f"'item_{rng.randrange(1000)}', {rng.random() * 100:.2f});")
    out += [
        "COMMIT;",
        "CREATE INDEX orders_user ON orders(user_id);",
        "SELECT city, count(*), avg(age) FROM users GROUP BY city ORDER BY 2 DESC LIMIT 5;",
        "SELECT u.city, sum(o.price) FROM users u JOIN orders o ON o.user_id = u.id "
        "GROUP BY u.city ORDER BY 2 DESC LIMIT 5;",
        "SELECT item, count(*) FROM orders GROUP BY item HAVING count(*) > 1 "
        "ORDER BY 2 DESC LIMIT 5;",
        "SELECT group_concat(name, ',') IS NOT NULL FROM (SELECT name FROM users "
        "ORDER BY name DESC LIMIT 20000);",
    ]
    return "\n".join(out) + "\n"


def c_source(functions: int) -> str:
    out = ["#include <stddef.h>", "#include <string.h>", ""]
    out.append("struct rec { int id; double score; char name[32]; struct rec *next; };")
    for i in range(functions):
        out.append(f"""
static int helper_{i}(const int *v, size_t n, int k)
{{
	int acc = {i};
	for (size_t j = 0; j < n; j++) {{
		if ((v[j] ^ k) & {1 + i % 7})
			acc += v[j] * {i % 13 + 1};
		else
			acc -= (v[j] >> {i % 5}) + k;
		switch ((acc + (int)j) & 3) {{
		case 0: acc ^= {i * 31 % 1000}; break;
		case 1: acc += k * {i % 17}; break;
		case 2: acc -= (int)j; break;
		default: acc = acc * 3 + 1; break;
		}}
	}}
	return acc;
}}

double func_{i}(struct rec *r, const int *v, size_t n)
{{
	double s = 0;
	for (; r; r = r->next) {{
		s += r->score * helper_{i}(v, n, r->id);
		if (memcmp(r->name, "rec_{i}", {len(str(i)) + 4}) == 0)
			s /= 2;
	}}
	return s;
}}""")
    return "\n".join(out) + "\n"


def cpp_source(classes: int) -> str:
    out = [
        "#include <algorithm>", "#include <map>", "#include <memory>", "#include <string>",
        "#include <unordered_map>", "#include <vector>", "",
        "template <typename T> struct Box { T value; bool operator<(const Box &o) const "
        "{ return value < o.value; } };",
    ]
    for i in range(classes):
        out.append(f"""
struct Shape{i} {{
	virtual ~Shape{i}() = default;
	virtual double area() const {{ return {i}.5; }}
	std::map<std::string, std::vector<Box<int>>> parts;
	std::unordered_map<int, std::shared_ptr<std::string>> names;
}};

double use{i}(int n)
{{
	Shape{i} s;
	std::vector<Box<double>> v;
	for (int k = 0; k < n; k++) {{
		s.parts["p" + std::to_string(k % {i % 9 + 2})].push_back(Box<int>{{k}});
		s.names[k] = std::make_shared<std::string>(std::to_string(k * {i + 1}));
		v.push_back(Box<double>{{s.area() * k}});
	}}
	std::sort(v.begin(), v.end());
	auto it = std::find_if(v.begin(), v.end(), [](const Box<double> &b) {{
		return b.value > {i};
	}});
	return it == v.end() ? 0.0 : it->value + s.parts.size() + s.names.size();
}}""")
    return "\n".join(out) + "\n"


def json_records(count: int) -> str:
    rng = random.Random(2)
    data = [
        {
            "id": i,
            "user": f"user_{rng.randrange(count // 10 + 1)}",
            "kind": rng.choice(["click", "view", "buy", "share"]),
            "value": round(rng.random() * 1000, 3),
            "tags": [f"t{rng.randrange(40)}" for _ in range(rng.randrange(1, 5))],
            "meta": {"ok": rng.random() < 0.9, "ms": rng.randrange(5000)},
        }
        for i in range(count)
    ]
    return json.dumps(data)


def generate(out: Path, scale: float = 1.0) -> dict[str, Path]:
    """Write every input (if missing or generated at another scale); return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / "scale"
    fresh = not stamp.exists() or stamp.read_text().strip() != str(scale)
    files = {
        "sql": (out / "workload.sql", lambda: sql_script(int(30_000 * scale))),
        "c": (out / "workload.c", lambda: c_source(int(40 * scale))),
        "cpp": (out / "workload.cpp", lambda: cpp_source(int(5 * scale))),
        "json": (out / "workload.json", lambda: json_records(int(30_000 * scale))),
    }
    for path, make in files.values():
        if fresh or not path.exists():
            log.info("writing %s", path)
            path.write_text(make())
    stamp.write_text(f"{scale}\n")
    return {key: path for key, (path, _) in files.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    for path in generate(args.out, args.scale).values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
