#!/usr/bin/env python3
"""Prints what bench/ab.sh measured: per workload, each build's runs and the ratio new / old.

    python3 bench/ab_report.py ab.jsonl
"""

import collections
import json
import sys


def main(path):
    runs = collections.defaultdict(lambda: collections.defaultdict(list))
    for line in open(path):
        row = json.loads(line)
        if row["report"] is not None:
            runs[row["label"]][row["build"]].append(row["report"])
    for label, builds in runs.items():
        old, new = builds.get("old", []), builds.get("new", [])
        if label == "idle":
            show(label, "server RSS per connection (B)", old, new, lambda r: r["server_rss_per_connection"])
            continue
        show(label, "published/s", old, new, lambda r: r["published_per_second"])
        show(label, "delivered per server CPU-s", old, new, lambda r: r["delivered_per_server_cpu_second"])
        show(label, "p50 ms", old, new, lambda r: r["latency_ms"]["p50"])
        show(label, "p99 ms", old, new, lambda r: r["latency_ms"]["p99"])
        lost = sum(r["lost"] + r["duplicated"] + r["reordered"] for r in old + new)
        print(f"{label:26} lost, duplicated or reordered: {lost}")


def show(label, metric, old, new, value):
    a, b = [value(r) for r in old], [value(r) for r in new]
    ratio = f"{sum(b) / sum(a):.2f}" if a and b and sum(a) else "-"
    print(f"{label:26} {metric:30} old {' / '.join(f'{v:,.3f}' for v in a):34} new {' / '.join(f'{v:,.3f}' for v in b):34} new/old {ratio}")


if __name__ == "__main__":
    main(sys.argv[1])
