#!/usr/bin/env python3
"""Plots a soak run of `testmesh chaos --sample-every 10s` as one SVG (no dependencies) and
prints the trend of each curve.

    python3 bench/plot_soak.py RUN_DIR OUT.svg

RUN_DIR holds samples.csv and history.jsonl. Four panels: resident memory, open files and data
dir size per node, and the submit latency (p50, p99) of each interval; grey lines mark the
faults. The trend is a least-squares slope over the second half of the run, per hour.
"""

import csv
import json
import sys


def slope(xs, ys):
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den


def main(run, out):
    rows = list(csv.DictReader(open(f"{run}/samples.csv")))
    faults = []
    try:
        history = open(f"{run}/history.jsonl")
    except FileNotFoundError:  # the run is still going: it writes its history at the end
        history = []
    for line in history:
        e = json.loads(line)
        if e.get("op") == "fault" and e["kind"] == "invoke":
            faults.append(e["t"] / 1000.0)
    nodes = sorted({r["node"] for r in rows})
    t_max = max(float(r["t_s"]) for r in rows)
    panels = [
        ("resident memory (MiB)", "rss_bytes", 1 / (1 << 20)),
        ("open files", "open_fds", 1),
        ("data dir (MiB)", "data_dir_bytes", 1 / (1 << 20)),
    ]
    W, H, PAD, GAP = 900, 170, 60, 40
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{4 * (H + GAP) + 20}" '
        'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
    ]

    def panel(i, title, series):
        y0 = 20 + i * (H + GAP)
        top = max((max(v for _, v in pts) for _, pts, _ in series if pts), default=1) or 1
        top *= 1.1
        svg.append(f'<text x="{PAD}" y="{y0 - 5}" font-weight="bold">{title}</text>')
        svg.append(
            f'<rect x="{PAD}" y="{y0}" width="{W - 2 * PAD}" height="{H}" fill="none" stroke="#999"/>'
        )
        for f in faults:
            x = PAD + (W - 2 * PAD) * f / t_max
            svg.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + H}" stroke="#ddd"/>')
        for k in range(5):
            v = top * k / 4
            y = y0 + H - H * k / 4
            svg.append(f'<text x="{PAD - 5}" y="{y + 4:.1f}" text-anchor="end">{v:.0f}</text>')
        for k in range(7):
            t = t_max * k / 6
            x = PAD + (W - 2 * PAD) * k / 6
            svg.append(f'<text x="{x:.1f}" y="{y0 + H + 14}" text-anchor="middle">{t / 60:.0f} min</text>')
        for j, (name, pts, color) in enumerate(series):
            path = " ".join(
                f"{PAD + (W - 2 * PAD) * t / t_max:.1f},{y0 + H - H * v / top:.1f}" for t, v in pts
            )
            svg.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.2"/>')
            svg.append(
                f'<text x="{W - PAD + 5}" y="{y0 + 14 + 14 * j}" fill="{color}">{name}</text>'
            )

    trends = []
    for i, (title, col, scale) in enumerate(panels):
        series = []
        for j, n in enumerate(nodes):
            pts = [
                (float(r["t_s"]), float(r[col]) * scale)
                for r in rows
                if r["node"] == n and r["pid"] != "0"
            ]
            series.append((f"node {n}", pts, colors[j % len(colors)]))
            half = [p for p in pts if p[0] >= t_max / 2]
            trends.append(
                (title, n, slope([p[0] for p in half], [p[1] for p in half]) * 3600,
                 min((p[1] for p in pts), default=0), max((p[1] for p in pts), default=0))
            )
        panel(i, title, series)
    lat = [r for r in rows if r["node"] == nodes[0]]
    panel(
        3,
        "submit latency of each interval (ms)",
        [
            ("p50", [(float(r["t_s"]), float(r["submit_ms_p50"])) for r in lat], "#1f77b4"),
            ("p99", [(float(r["t_s"]), float(r["submit_ms_p99"])) for r in lat], "#d62728"),
        ],
    )
    svg.append("</svg>")
    open(out, "w").write("\n".join(svg))
    print("curve | node | slope per hour (second half) | min | max")
    for title, n, s, lo, hi in trends:
        print(f"{title} | {n} | {s:+.2f} | {lo:.1f} | {hi:.1f}")
    # A leader kill restarts a node: growth is judged within each process's life.
    print("per process life of 10 min or more: node | pid | minutes | RSS MiB first→last, slope/h | open files min–max")
    for n in nodes:
        by_pid = {}
        for r in rows:
            if r["node"] == n and r["pid"] != "0":
                by_pid.setdefault(r["pid"], []).append(r)
        for pid, rs in by_pid.items():
            t = [float(r["t_s"]) for r in rs]
            if t[-1] - t[0] < 600:
                continue
            rss = [float(r["rss_bytes"]) / (1 << 20) for r in rs]
            fds = [int(r["open_fds"]) for r in rs]
            print(
                f"{n} | {pid} | {(t[-1] - t[0]) / 60:.0f} | {rss[0]:.0f}→{rss[-1]:.0f}, "
                f"{slope(t, rss) * 3600:+.1f} | {min(fds)}–{max(fds)}"
            )
    p50 = sorted(float(r["submit_ms_p50"]) for r in lat if int(r["submits_ok"]) > 0)
    p99 = sorted(float(r["submit_ms_p99"]) for r in lat if int(r["submits_ok"]) > 0)
    if p50:
        print(
            f"submit p50 per interval: median {p50[len(p50) // 2]:.0f} ms; "
            f"p99 per interval: median {p99[len(p99) // 2]:.0f} ms, max {p99[-1]:.0f} ms; "
            f"faults: {len(faults)}"
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
