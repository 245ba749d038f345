#!/usr/bin/env python3
"""Turns the JSON lines of `bench/compare.sh` into docs/benchmarks.md and an SVG plot.

Standard library only, so the comparison runs on a bare machine."""

import argparse
import datetime
import json
import os
import platform
import subprocess

SERVERS = ["herald", "nchan", "floor"]
COLORS = {"herald": "#d9480f", "nchan": "#1c7ed6", "floor": "#868e96"}
# bench/floor_hub.py: one write per subscriber and nothing else, the machine's own floor.
LABELS = {"herald": "herald", "nchan": "nchan", "floor": "floor hub"}
# The repeated 50 publishes/s workload the latency target is judged on.
AT50 = "1x1000@50-fresh"


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f"{kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} × {model}, {mem}, Linux {platform.release()}"


def fmt_int(x):
    return f"{x:,.0f}"


def fmt_ms(x):
    return f"{x:.2f}"


def per_cpu(run):
    return run["report"].get("delivered_per_server_cpu_second") or 0


def p99(run):
    return run["report"]["latency_ms"]["p99"]


def median_key(run):
    """At a fixed publish rate the runs are compared by latency; flat out, by CPU."""
    rate = run["report"].get("rate")
    return p99 if rate else per_cpu


def run_range(runs, key):
    """`lowest–highest` of `key` (`p99` or `per_cpu`) over `runs`, formatted for it."""
    fmt = fmt_ms if key is p99 else fmt_int
    return f"{fmt(min(map(key, runs)))}–{fmt(max(map(key, runs)))}"


def sweep_rate(workload):
    """`20` or `max` for the rate sweep's workloads (`1x1000@20`), else None."""
    if not workload.startswith("1x1000@"):
        return None
    rate = workload.split("@", 1)[1]
    return rate if rate == "max" or rate.isdigit() else None


def load(path):
    """Every run, keyed by server and workload. A workload run several times is represented by
    its median run (by p99 at a fixed publish rate, by delivered events per server CPU-second
    flat out; see `median_key`); all of them stay in `ALL`."""
    grouped = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                run = json.loads(line)
                grouped.setdefault((run["server"], run["workload"]), []).append(run)
    ALL.clear()
    ALL.update(grouped)
    return {key: sorted(rs, key=median_key(rs[0]))[(len(rs) - 1) // 2] for key, rs in grouped.items()}


# Every run of each (server, workload), for the spread of repeated workloads.
ALL = {}


def fanout_row(server, run):
    r = run["report"]
    rate = "max" if r["rate"] == 0 else f"{r['rate']:g}/s"
    per_cpu = r.get("delivered_per_server_cpu_second")
    cpu = r.get("server_cpu") or {}
    return (
        f"| {LABELS.get(server, server)} | {rate} | {fmt_int(r['published_per_second'])} | {fmt_int(r['delivered_per_second'])} "
        f"| {fmt_ms(r['latency_ms']['p50'])} | {fmt_ms(r['latency_ms']['p99'])} | {fmt_ms(r['latency_ms']['p999'])} "
        f"| {fmt_ms(r['latency_ms']['max'])} | {r['lost']} / {r['duplicated']} / {r['reordered']} "
        f"| {cpu.get('user_s', 0):.2f} + {cpu.get('system_s', 0):.2f} | {fmt_int(per_cpu) if per_cpu else '–'} |"
    )


FANOUT_HEAD = (
    "| server | publish rate | published/s | delivered/s | p50 ms | p99 ms | p99.9 ms | max ms "
    "| lost / dup / reordered | server CPU s (user + sys) | delivered per server CPU-s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def ratio(runs, workload):
    h, n = runs.get(("herald", workload)), runs.get(("nchan", workload))
    if not h or not n:
        return None
    a, b = h["report"].get("delivered_per_server_cpu_second"), n["report"].get("delivered_per_server_cpu_second")
    return a / b if a and b else None


def fanout_section(md, runs, workload, title, intro=None):
    """A table of both servers on one workload, and Herald's ratio per server CPU-second."""
    md.append(f"## {title}\n")
    if intro:
        md.append(intro + "\n")
    md.append(FANOUT_HEAD)
    for s in SERVERS:
        run = runs.get((s, workload))
        if run:
            md.append(fanout_row(s, run))
    md.append("")
    r = ratio(runs, workload)
    reps = [(s, ALL[(s, workload)]) for s in SERVERS if len(ALL.get((s, workload), [])) > 1]
    if reps:
        key = median_key(reps[0][1][0])
        shown, unit = (("the run with the median p99. p99", " ms") if key is p99
                       else ("the median run. Delivered per server CPU-second", ""))
        spread = "; ".join(f"{LABELS[s]} {run_range(x, key)}{unit}" for s, x in reps)
        md.append(
            f"Each server ran this {len(reps[0][1])} times, a fresh server each time, the servers taking turns; "
            f"the table shows {shown} over the runs: {spread}.\n"
        )
    if r and workload != AT50:
        md.append(f"Herald delivers **{r:.1f}×** Nchan's events per server CPU-second here (medians).\n")


def targets_section(md, runs, big):
    """The performance issue's targets against this run's figures, one line each."""
    def rep(server, workload):
        run = runs.get((server, workload))
        return run["report"] if run else None

    def lossless(*workloads):
        # Every run of the workload, not only the median one.
        reps = [run["report"] for w in workloads for run in ALL.get(("herald", w), [])]
        return bool(reps) and all(r["lost"] == 0 and r["duplicated"] == 0 and r["reordered"] == 0 for r in reps)

    def times(workload):
        r = ratio(runs, workload)
        return f"{r:.1f}×" if r else "–"

    rows = []
    idle = rep("herald", "idle")
    if idle:
        per = idle.get("server_rss_per_connection") or 0
        rows.append(("idle: at most 4 KiB of server RSS per connection at 19,000",
                     f"{fmt_int(per)} bytes at {fmt_int(idle['connections'])} connections", per <= 4096))
    for w, label in (("1x1000@max1", "1 publisher"), ("1x1000@max4", "4 publishers"), ("1x1000@max16", "16 publishers")):
        r = ratio(runs, w)
        if r:
            rows.append((f"1 × 1,000, as fast as possible ({label}): at least 10× Nchan per server CPU-second, no loss",
                         f"{times(w)}, {'no loss' if lossless(w) else 'LOSS'}", r >= 10 and lossless(w)))
    at50_name = AT50 if rep("herald", AT50) else "1x1000@50"
    at50 = rep("herald", at50_name)
    if at50:
        got = at50["latency_ms"]["p99"]
        text = f"{fmt_ms(got)} ms"
        runs_at50 = ALL.get(("herald", at50_name), [])
        if len(runs_at50) > 1:
            text += f" (median of {len(runs_at50)} runs, {run_range(runs_at50, p99)})"
        floor, nchan = rep("floor", at50_name), rep("nchan", at50_name)
        if nchan:
            text += f"; Nchan {fmt_ms(nchan['latency_ms']['p99'])} ms"
        if floor:
            text += f"; the floor hub {fmt_ms(floor['latency_ms']['p99'])} ms"
            if got >= 10 and floor["latency_ms"]["p99"] >= 10:
                text += (": out of reach in this run, since a hub that does nothing but one write per subscriber "
                         "did not meet it either (see below)")
        rows.append(("1 × 1,000 at 50 publishes/s: p99 publish-to-receive under 10 ms", text,
                     got < 10 and lossless(at50_name)))
    r = ratio(runs, "1000x10@max16")
    if r:
        text = f"{times('1000x10@max16')}, {'no loss' if lossless('1000x10@max16') else 'LOSS'}"
        kernel = kernel_floor(10_000)
        nchan = rep("nchan", "1000x10@max16")
        herald = rep("herald", "1000x10@max16")
        if kernel and nchan and herald:
            ceiling = kernel["writes_per_cpu_second"]
            over_nchan = ceiling / nchan["delivered_per_server_cpu_second"]
            text += (f". Every delivery is its own write here, and the kernel alone allows at most {fmt_int(ceiling)} "
                     f"one-write deliveries per CPU-second over {fmt_int(kernel['connections'])} connections in this run (see below), "
                     f"{over_nchan:.1f}× Nchan's figure")
            if over_nchan < 10:
                text += ": 10× is out of reach for any hub"
            text += f". Herald reaches {herald['delivered_per_server_cpu_second'] / ceiling:.0%} of that ceiling"
        rows.append(("1,000 × 10, 16 publishers: at least 10× Nchan per server CPU-second, no loss",
                     text, r >= 10 and lossless("1000x10@max16")))
    for w in big:
        r = rep("herald", w)
        if r:
            rows.append((f"1 × {int(w.split('@')[0].split('x')[1]):,} subscribers at 50/s: nothing lost, p99 reported",
                         f"lost {r['lost']}, p99 {fmt_ms(r['latency_ms']['p99'])} ms", lossless(w)))
    if not rows:
        return
    md.append("## Against the targets\n")
    md.append("| target | this run (Herald) | met |\n|---|---|---|")
    for target, got, met in rows:
        md.append(f"| {target} | {got} | {'yes' if met else 'no'} |")
    md.append("")


PROTOCOLS = [
    ("herald", "HTTP/1.1"),
    ("herald-tls", "HTTP/1.1 over TLS"),
    ("herald-h2", "HTTP/2 over TLS (ALPN)"),
    ("herald-h2c", "HTTP/2 without TLS"),
]


def protocols_section(md, runs):
    """Herald's fan-out and idle memory over TLS and HTTP/2, beside plain HTTP/1.1 measured in
    the same rounds."""
    plain = {w: runs.get(("herald", w)) for w in ("proto-1x1000@max4", "proto-1000x10@max16")}
    if not any(plain.values()):
        return
    md.append("## Over TLS and HTTP/2\n")
    md.append(
        "Herald with `tls.enabled = true` (a temporary certificate), the subscribers over HTTP/1.1 "
        "through TLS, over HTTP/2 through TLS (as browsers connect), and over HTTP/2 without TLS; "
        "publishers on HTTP/1.1 (through TLS where it is on). HTTP/2 streams are opened 100 to a "
        "connection. Plain HTTP/1.1 ran in the same rounds; medians of the rounds, ratios to it.\n"
    )
    md.append("| subscribers over | idle: server RSS per stream | 1 × 1,000, 4 publishers: delivered per server CPU-s | p99 ms | 1,000 × 10, 16 publishers: delivered per server CPU-s | p99 ms |")
    md.append("|---|---|---|---|---|---|")
    base_idle = runs.get(("herald", "proto-idle"))
    for server, label in PROTOCOLS:
        cells = [label]
        idle = runs.get((server, "proto-idle"))
        per = idle and idle["report"].get("server_rss_per_connection")
        cells.append(f"{fmt_int(per)} B" if per else "—")
        for w in ("proto-1x1000@max4", "proto-1000x10@max16"):
            run, base = runs.get((server, w)), plain.get(w)
            if not run:
                cells += ["—", "—"]
                continue
            got = per_cpu(run)
            rel = f" ({got / per_cpu(base):.2f}×)" if base and per_cpu(base) and server != "herald" else ""
            lost = run["report"]["lost"] + run["report"]["duplicated"] + run["report"]["reordered"]
            flag = f", {lost} lost/dup/reordered" if lost else ""
            cells += [f"{fmt_int(got)}{rel}{flag}", fmt_ms(p99(run))]
        md.append("| " + " | ".join(cells) + " |")
    md.append("")
    if base_idle:
        md.append("Idle memory is the server's RSS growth divided by the streams held (HTTP/2: per stream, "
                  "with 100 streams sharing each connection's TLS session and buffers).\n")


def kernel_floor(connections):
    """The kernel floor measured in this run over the most connections up to `connections`: of
    those measurements, the one allowing the most writes per CPU-second (the ceiling most
    favourable to the servers)."""
    found = [run["report"] for run in ALL.get(("kernel", "floor"), [])]
    sizes = [r["connections"] for r in found if r["connections"] <= connections]
    if not sizes:
        return None
    widest = [r for r in found if r["connections"] == max(sizes)]
    return max(widest, key=lambda r: r["writes_per_cpu_second"])


def floor_section(md, runs):
    """What the machine itself allows: the kernel's cost per write, and the floor hub at 50/s."""
    found = [run["report"] for run in ALL.get(("kernel", "floor"), [])]
    if not found:
        return
    md.append("## The machine's floor, measured in this run\n")
    md.append(
        "`bench/kernel_floor.py` writes a 129-byte frame to each of N loopback connections in turn, round after round, "
        "from a process pinned to CPU 0, while a reader on CPU 1 drains them; no server is involved. On loopback the "
        "receiving side's TCP processing runs in the writer's system call, so this is what the kernel charges a "
        "server per delivered event when every event is its own write. A write costs more the more connections "
        "it is spread over (the kernel's per-socket state stops fitting in the caches), so it runs over 1,000 "
        "connections, as in the 1 × 1,000 workloads, and over 9,000, as near to the 1,000 × 10 workload's 10,000 "
        "as the open-file limit allows (the script holds both ends of every connection). It ran at the start and "
        "at the end of the comparison:\n"
    )
    md.append("| measurement | connections | writes | system CPU s | µs per write | one-write deliveries per CPU-second, at most |\n|---|---|---|---|---|---|")
    half = (len(found) + 1) // 2
    for k, r in enumerate(found):
        md.append(f"| {'start' if k < half else 'end'} | {fmt_int(r['connections'])} | {fmt_int(r['writes'])} | {r['system_s']:.2f} | {r['us_per_write']:.2f} | {fmt_int(r['writes_per_cpu_second'])} |")
    md.append("")
    md.append(
        "`bench/floor_hub.py` is the least a hub can do: it answers subscriptions with an event-stream head and, "
        "for each publish, sends `data: <body>` to every subscriber with one `send()` each in a plain loop. No "
        "history, no ids, no scheduler. It runs the 50 publishes/s workload below beside Herald and Nchan, "
        "pinned the same way and measured by the same `herald bench`. At that rate one event means 1,000 writes "
        "on one core, so the last subscriber is served at least 1,000 writes after the first: its p99 is the "
        "machine's latency floor for this workload, within the few tenths of a microsecond per write that Python "
        "adds.\n"
    )


def svg_plot(runs, rates, path):
    """Two panels over the same x axis (publish rate): delivered events/s, and p99 latency."""
    width, height, pad_l, pad_r, pad_t, pad_b, gap = 760, 330, 70, 20, 40, 50, 80
    panel_w = (width - pad_l - pad_r - gap) / 2
    panel_h = height - pad_t - pad_b
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    panels = [
        ("delivered events/s", lambda r: r["delivered_per_second"], False),
        ("p99 publish-to-receive latency (ms, log)", lambda r: max(r["latency_ms"]["p99"], 0.01), True),
    ]
    import math

    for pi, (title, value, log) in enumerate(panels):
        x0 = pad_l + pi * (panel_w + gap)
        series = {}
        for s in SERVERS:
            pts = []
            for i, rate in enumerate(rates):
                run = runs.get((s, f"1x1000@{rate}"))
                if run:
                    pts.append((i, value(run["report"])))
            series[s] = pts
        values = [v for pts in series.values() for _, v in pts] or [1]
        if log:
            lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
            hi = max(hi, lo + 1)
            ys = lambda v: pad_t + panel_h - (math.log10(v) - lo) / (hi - lo) * panel_h
            ticks = [10**e for e in range(lo, hi + 1)]
        else:
            hi = max(values) * 1.1
            ys = lambda v: pad_t + panel_h - v / hi * panel_h
            step = 10 ** math.floor(math.log10(hi)) if hi > 0 else 1
            while hi / step < 4:
                step /= 2
            ticks = [k * step for k in range(int(hi / step) + 1)]
        xs = lambda i: x0 + (i + 0.5) / len(rates) * panel_w
        out.append(f'<text x="{x0 + panel_w / 2}" y="{pad_t - 15}" text-anchor="middle" font-weight="bold">{title}</text>')
        out.append(f'<rect x="{x0}" y="{pad_t}" width="{panel_w}" height="{panel_h}" fill="none" stroke="#888"/>')
        for t in ticks:
            y = ys(t)
            label = f"{t:g}" if log else (f"{t / 1000:g}k" if t >= 1000 else f"{t:g}")
            out.append(f'<line x1="{x0}" x2="{x0 + panel_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{x0 - 5}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
        for i, rate in enumerate(rates):
            out.append(f'<text x="{xs(i):.1f}" y="{pad_t + panel_h + 18}" text-anchor="middle">{rate}</text>')
        out.append(
            f'<text x="{x0 + panel_w / 2}" y="{pad_t + panel_h + 38}" text-anchor="middle">publishes/s (1 channel × 1,000 subscribers)</text>'
        )
        for s, pts in series.items():
            if not pts:
                continue
            path_d = " ".join(f"{'M' if k == 0 else 'L'}{xs(i):.1f},{ys(v):.1f}" for k, (i, v) in enumerate(pts))
            out.append(f'<path d="{path_d}" fill="none" stroke="{COLORS[s]}" stroke-width="2"/>')
            for i, v in pts:
                out.append(f'<circle cx="{xs(i):.1f}" cy="{ys(v):.1f}" r="3" fill="{COLORS[s]}"/>')
    for k, s in enumerate(["herald", "nchan"]):
        out.append(f'<rect x="{pad_l + 10}" y="{pad_t + 12 + k * 16}" width="12" height="4" fill="{COLORS[s]}"/>')
        out.append(f'<text x="{pad_l + 26}" y="{pad_t + 18 + k * 16}">{s}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("out_dir")
    ap.add_argument("--herald-version", default="")
    ap.add_argument("--nchan-version", default="")
    ap.add_argument("--quick", default="0")
    a = ap.parse_args()
    runs = load(a.results)
    rates = []
    for (_, w) in runs:
        rate = sweep_rate(w)
        if rate and rate not in rates:
            rates.append(rate)
    rates.sort(key=lambda r: float("inf") if r == "max" else float(r))
    big = sorted({w for (_, w) in runs if w.startswith("1x") and not w.startswith("1x1000@")})

    md = []
    md.append("# Benchmarks: Herald and Nchan, side by side, and the machine's floor\n")
    md.append(
        "Generated by `bash bench/compare.sh` (do not edit by hand: run it again). Every figure below comes from "
        "`herald bench` runs made in one session, against both servers, with the exact commands listed at the end.\n"
    )
    if a.quick == "1":
        md.append("**QUICK=1 run: short durations and fewer connections; not the figures to quote.**\n")
    git = subprocess.run(["git", "log", "-1", "--format=%cs"], capture_output=True, text=True).stdout.strip()
    md.append(f"- Date: {datetime.date.today().isoformat()} (Herald commit of {git})")
    md.append(f"- Machine: {machine()}")
    md.append(f"- Herald: {a.herald_version}, `history.store = \"memory\"`, `history.size = 10000`, `--workers 1`")
    md.append(
        f"- Nchan: {a.nchan_version}, `worker_processes 1`, `nchan_message_buffer_length 10000`, config in `bench/nchan.conf`"
    )
    md.append(
        "- Each server pinned to CPU 0 with `taskset`, the load generator to CPU 1. Loopback only. "
        "The open-file limit here is 20,000 per process, so idle runs stop at 19,000 connections per server."
    )
    md.append(
        "- Server CPU is read from `/proc/PID/stat` (user + system, all threads; for Nchan master and worker) "
        "from the first publish to the last delivery, so **delivered events per server CPU-second** compares the "
        "servers even where the single-core load generator, not the server, sets the pace.\n"
    )

    targets_section(md, runs, big)
    floor_section(md, runs)
    fanout_section(
        md,
        runs,
        AT50,
        "1 channel × 1,000 subscribers at 50 publishes/s, beside the floor hub",
        "The latency target's workload: one publisher at 50 events/s, 100-byte events, each server fresh.",
    )

    md.append("## Idle subscribers\n")
    md.append("| server | connections held | failed | server RSS before | after | per connection |\n|---|---|---|---|---|---|")
    for s in SERVERS:
        run = runs.get((s, "idle"))
        if run:
            r = run["report"]
            per = r.get("server_rss_per_connection")
            md.append(
                f"| {s} | {fmt_int(r['connections'])} | {fmt_int(r['failed'])} | {r['server_rss_before'] / 2**20:.1f} MiB "
                f"| {r['server_rss_after'] / 2**20:.1f} MiB | {fmt_int(per)} bytes ({per / 1024:.2f} KiB) |"
            )
    md.append("")

    md.append("## 1 channel × 1,000 subscribers, 100-byte events, publish rate sweep\n")
    md.append("One publisher connection; `max` publishes as fast as the answers come.\n")
    md.append("![delivered events/s and p99 latency against publish rate](benchmarks-fanout.svg)\n")
    md.append(
        "The x axis is the rate asked for. Where a server answers publishes more slowly than that, its "
        "publisher falls behind: compare the `published/s` column, since a server that publishes fewer "
        "events also has fewer queued, and so a lower latency.\n"
    )
    md.append(FANOUT_HEAD)
    for rate in rates:
        for s in SERVERS:
            run = runs.get((s, f"1x1000@{rate}"))
            if run:
                md.append(fanout_row(s, run))
    md.append("")
    r = ratio(runs, "1x1000@max")
    if r:
        md.append(f"At saturation Herald delivers **{r:.1f}×** Nchan's events per server CPU-second.\n")

    fanout_section(
        md,
        runs,
        "1x1000@max1",
        "1 channel × 1,000 subscribers, 1 publisher connection, as fast as possible",
        "The sweep's `max` again, on a fresh server each time.",
    )
    fanout_section(
        md,
        runs,
        "1x1000@max4",
        "1 channel × 1,000 subscribers, 4 publisher connections, as fast as possible",
        "Several backends publishing to one busy channel. Each publisher numbers its own events, and order "
        "is checked per publisher.",
    )
    fanout_section(
        md,
        runs,
        "1x1000@max16",
        "1 channel × 1,000 subscribers, 16 publisher connections, as fast as possible",
        "As many publisher connections as the 1,000 × 10 workload below uses.",
    )
    fanout_section(md, runs, "1000x10@max16", "1,000 channels × 10 subscribers, 16 publisher connections, as fast as possible")

    for w in big:
        n = w.split("@")[0].split("x")[1]
        fanout_section(md, runs, w, f"1 channel × {int(n):,} subscribers at 50 publishes/s")

    protocols_section(md, runs)

    md.append("## Commands\n")
    md.append("Servers (started by the script; `$WORK` is a temporary directory):\n")
    md.append("```")
    md.append("HERALD_HISTORY__STORE=memory HERALD_HISTORY__SIZE=10000 taskset -c 0 herald serve --listen 127.0.0.1:18400 --workers 1 --log-level warn")
    md.append("taskset -c 0 nginx -p $WORK/nchan -c $WORK/nchan/nginx.conf   # bench/nchan.conf with port and paths filled in")
    md.append("taskset -c 0 python3 bench/floor_hub.py 18402")
    md.append("```\n")
    md.append("Load, one line per run:\n")
    md.append("```")
    for (s, w), rs in ALL.items():
        for run in rs:
            md.append(run["command"])
    md.append("```\n")
    md.append("See [performance.md](performance.md) for how Herald's hot path is built and what each change measured.\n")

    os.makedirs(a.out_dir, exist_ok=True)
    with open(os.path.join(a.out_dir, "benchmarks.md"), "w") as f:
        f.write("\n".join(md))
    svg_plot(runs, rates, os.path.join(a.out_dir, "benchmarks-fanout.svg"))
    print(f"wrote {a.out_dir}/benchmarks.md and {a.out_dir}/benchmarks-fanout.svg")


if __name__ == "__main__":
    main()
