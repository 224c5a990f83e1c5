"""Markdown tables of a benchmark result (docs/benchmark.md explains the columns)."""
from __future__ import annotations

from typing import Mapping, Sequence


def _num(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _ms(s: Mapping | None) -> str:
    """'median [q1–q3]' in ms."""
    if not s:
        return "—"
    return f"{s['median']:.1f} [{s['q1']:.1f}–{s['q3']:.1f}]"


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def latency_table(configs: Sequence[Mapping]) -> list[str]:
    rows = []
    for c in configs:
        for mode, rec in c.get("modes", {}).items():
            lat, m = rec["latency"], rec["metrics"]
            rate = m["gflops_per_s"]
            rows.append([f"`{c['cfg']}`", str(c["img_size"]), mode, _ms(lat.get("easy")), _ms(lat.get("hard")),
                         _ms(lat.get("plain")), _num(rate.get("easy")), _num(rate.get("hard")),
                         _num(rate.get("plain")), _num(m.get("routing_overhead"), 3),
                         _num(m.get("hard_vs_easy_gflops_per_s"), 3)])
    header = ["config", "img", "mode", "easy ms", "hard ms", "plain ms", "easy GFLOP/s", "hard GFLOP/s",
              "plain GFLOP/s", "routing overhead", "hard/easy GFLOP/s"]
    return ["## Latency, batch 1 (median [IQR] ms)", ""] + _table(header, rows) if rows else []


def mixed_table(configs: Sequence[Mapping]) -> list[str]:
    rows = []
    for c in configs:
        mb = c.get("mixed_batch")
        if mb:
            m = mb["metrics"]
            rows.append([f"`{c['cfg']}`", str(c["img_size"]), mb["mode"], f"{mb['batch']} ({mb['n_hard']} hard)",
                         _ms(mb["mixed"]), _ms(mb["easy_part"]), _ms(mb["hard_part"]), _num(m["ideal_ms"]),
                         _num(m["efficiency"], 3), _num(m["images_per_s"], 2)])
    header = ["config", "img", "mode", "batch", "mixed ms", "easy part ms", "hard part ms", "ideal ms",
              "efficiency", "images/s"]
    return ["## Mixed batch", ""] + _table(header, rows) if rows else []


def onnx_table(configs: Sequence[Mapping]) -> list[str]:
    rows, notes = [], []
    for c in configs:
        o = c.get("onnx")
        if not o:
            continue
        if o["status"] != "ok":
            notes.append(f"- `{c['cfg']}` @ {c['img_size']}: {o['status']}")
            continue
        for route in ("easy", "hard"):
            m = o["metrics"][route]
            rows.append([f"`{c['cfg']}`", str(c["img_size"]), route, _ms(o["eager"].get(route)),
                         _ms(o["ort"].get(f"dynamic_{route}")), _ms(o["ort"].get(f"static_{route}")),
                         _num(m["dynamic_vs_eager"], 3), _num(m["static_vs_eager"], 3),
                         _num(m["dynamic_vs_static"], 3), _num(m.get("dynamic_vs_fused_eager"), 3)])
    header = ["config", "img", "route", "eager ms", "ORT dynamic ms", "ORT static ms", "dynamic/eager",
              "static/eager", "dynamic/static", "dynamic/fused eager"]
    if not rows and not notes:
        return []
    return ["## ONNX Runtime, batch 1", ""] + (_table(header, rows) if rows else []) + ([""] + notes if notes else [])


def router_table(configs: Sequence[Mapping]) -> list[str]:
    rows, notes = [], []
    for c in configs:
        r = c.get("router_training")
        if not r:
            continue
        if r.get("status", "ok") != "ok":
            notes.append(f"`{c['cfg']}` @ {c['img_size']}: {r['status']}")
            continue
        m = r["metrics"]
        for b, s in r["steps"].items():
            rows.append([f"`{c['cfg']}`", str(r["img_size"]), str(b), _ms(s), _num(m["images_per_s"][b], 2),
                         _num(m["speedup_vs_batch1"][b], 2)])
        passes = m.get("collect_images_per_s") or {}
        if passes:
            rates = ", ".join(f"{_num(v, 2)} images/s at batch {b}" for b, v in passes.items())
            notes.append(f"`{c['cfg']}` @ {r['img_size']}: the one-off sample pass (frozen detectors and their "
                         f"losses, once per image) runs at {rates}.")
    header = ["config", "img", "batch", "step ms", "images/s", "vs batch 1"]
    if not rows and not notes:
        return []
    return ["## Router training", ""] + (_table(header, rows) if rows else []) + ([""] + notes if notes else [])


def peaks_table(peaks: Mapping | None) -> list[str]:
    """Measured GEMM peak per data type next to the theoretical one."""
    if not peaks:
        return []
    rows = []
    for dtype in ("fp32", "bf16", "int8"):
        p = peaks.get(dtype) or {}
        theory = p.get("theoretical") or {}
        rows.append([dtype, _num(p.get("measured")), p.get("backend") or "—", _num(theory.get("gflops")),
                     _pct(p.get("fraction_of_theoretical")), theory.get("formula", "—")])
    return [f"## Measured peak ({peaks.get('threads')} threads, {peaks.get('n')}² GEMM; GOP/s for int8)", ""] + \
        _table(["type", "measured GFLOP/s", "backend", "theoretical", "measured / theoretical", "theoretical ="], rows)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.0f}%"


def deploy_table(configs: Sequence[Mapping]) -> list[str]:
    """Per config, backend: ms per image per route and batch, GFLOP/s, fractions of peak, ratios."""
    lines: list[str] = []
    for c in configs:
        d = c.get("deploy") or {}
        m = d.get("metrics")
        if not m:
            continue
        batches = d["batches"]
        big = max(batches)
        header = ["backend"] + [f"b{b} {r} ms/img" for b in batches for r in ("easy", "hard")] + \
            ["b1 easy GFLOP/s", "of measured peak", "of theoretical", "vs fast path (b1 easy/hard)",
             "dynamic/static (worst)", f"mixed b{big} / ideal"]
        rows = []
        for name, r in m.items():
            if name == "vs_fast":
                continue
            e1 = r.get("b1_easy", {})
            vs = m["vs_fast"].get(name, {})
            dyn = [v["dynamic_vs_static"] for v in r.values() if isinstance(v, dict) and v.get("dynamic_vs_static")]
            rows.append([f"`{name}`"] + [_num(r.get(f"b{b}_{rt}", {}).get("ms_per_image"), 2)
                                         for b in batches for rt in ("easy", "hard")] +
                        [_num(e1.get("gflops_per_s")), _pct(e1.get("fraction_of_measured_peak")),
                         _pct(e1.get("fraction_of_theoretical_peak")),
                         "1" if name == "pt_fast" else f"{_num(vs.get('b1_easy'), 2)} / {_num(vs.get('b1_hard'), 2)}",
                         _num(max(dyn), 3) if dyn else "—", _num(r.get("mixed_efficiency"), 3)])
        lines += [f"## Deployment backends: `{c['cfg']}` @ {c['img_size']} (easy {c['gflops'].get('easy', 0):.1f}, "
                  f"hard {c['gflops'].get('hard', 0):.1f} GFLOPs)", ""] + _table(header, rows)
        notes = [f"`{k}`: {v}" for k, v in d.get("status", {}).items() if v != "ok"]
        lines += [""] + ["; ".join(notes)] if notes else []
        lines.append("")
    return lines


def goals_table(goals: Sequence[Mapping]) -> list[str]:
    rows = [[g["description"], f"`{g['cfg']}` @ {g['img_size']}", _num(g["value"], 3), g["target"],
             "yes" if g["met"] else "**no**"] for g in goals]
    return ["## Goals", ""] + _table(["goal", "config", "value", "target", "met"], rows) if rows else []


def markdown(result: Mapping) -> str:
    """The whole report: machine line, then one table per section that was measured."""
    meta, configs = result["meta"], result["configs"]
    lines = ["# Benchmark", "",
             f"{meta['cpu']}, {meta['cpu_count']} cores, {meta['torch_threads']} torch threads, device "
             f"{meta['device']}; torch {meta['torch']}, onnxruntime {meta.get('onnxruntime')}; git {meta.get('git')}; "
             f"{meta['time']}; load average before {meta.get('load_before')}, after {meta.get('load_after')}.", ""]
    if meta.get("cpu_flags"):
        lines += [f"CPU flags: {' '.join(meta['cpu_flags'])}.", ""]
    for section in (peaks_table(result.get("peaks")), latency_table(configs), mixed_table(configs),
                    onnx_table(configs), deploy_table(configs), router_table(configs),
                    goals_table(result.get("goals", []))):
        if section:
            lines += section + [""]
    return "\n".join(lines)
