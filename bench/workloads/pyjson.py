"""Python workload: JSON round trips, dict and str churn, regular expressions.

Run by bench/run.py as `python3 pyjson.py ROUNDS` under each allocator mode.
Deterministic: the same objects are built on every run.
"""

import json
import re
import sys

WORD = re.compile(r"[a-z]+_(\d+)")


def records(n: int) -> list[dict]:
    return [
        {
            "id": i,
            "name": f"user_{i}",
            "tags": [f"tag_{i % 7}", f"tag_{i % 11}"],
            "score": (i * 37) % 101 / 7.0,
            "address": {"street": f"{i} Main St", "zip": f"{i % 99999:05d}"},
        }
        for i in range(n)
    ]


def one_round(n: int) -> int:
    text = json.dumps(records(n))
    data = json.loads(text)
    index: dict[str, list[int]] = {}
    for rec in data:
        for tag in rec["tags"]:
            index.setdefault(tag, []).append(rec["id"])
    total = sum(int(m.group(1)) for m in WORD.finditer(text))
    words = sorted({w for rec in data for w in rec["name"].split("_")})
    return len(index) + total + len(words)


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    check = 0
    for _ in range(rounds):
        check += one_round(2000)
    print(check)
    return 0


if __name__ == "__main__":
    sys.exit(main())
