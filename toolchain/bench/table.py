"""The bench report as a table and as JSON."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.files import write_text
from ..core.formatting import percent


def _ratio(x: float) -> str:
    return f"{x:.1f}" if x >= 1 else f"{x:.2g}"


def format_table(report: dict) -> str:
    lines = [f"{'case':<30}{'backend':<12}{'batch':>6}{'steps/s':>10}{'x stock':>9}{'x lava':>9}{'build s':>9}"
             f"{'1st frame s':>12}{'peak PSS MB':>13}"]
    for case in report["cases"]:
        head = (f"{case['case']} T={case['time_steps']}" + ("" if case["trained"] else " (untrained)"))
        lines.append(f"{head}: {case['neurons']:,} neurons, {case['synapses']:,} synapses")
        for r in case["rows"]:
            speed = ("<" if r.get("upper_bound") else "") + f"{r['steps_per_s']:.3g}"
            ratios = [(">=" if r[f"{k}_ratio_is_bound"] else "") + _ratio(r[f"ratio_{k}"]) for k in ("stock", "lava")]
            if r["backend"] == "lava-stock" and r.get("upper_bound"):
                ratios[1] = "<" + ratios[1]
            lines.append(f"{'':<30}{r['backend']:<12}{r['batch']:>6}{speed:>10}{ratios[0]:>9}{ratios[1]:>9}"
                         f"{r['build_s']:>9.2f}{r['first_frame_s']:>12.2f}{r['peak_pss_mb']:>13.0f}")
        stock, lava = case["rows"][:2]
        if stock.get("estimated"):
            lines.append(f"{'':<30}(lava-stock: not run; its steps/s is an upper bound: Lava's conv alone needs "
                         f"{stock['conv_cpu_s_per_step']:.0f} CPU s per step here, over {report['cpus']} cores)")
        else:
            lines.append(f"{'':<30}(lava-stock: Lava as released: its RingBuffer source, an Extractor per "
                         f"layer, its own models and default channels; build time is in 1st frame)")
        if lava.get("timed_out"):
            lines.append(f"{'':<30}(lava: only frame 0 finished in {case['lava_limit_s']:.0f} s; its steps/s is an "
                         f"upper bound)")
        spikes = case["compared_spikes"]
        others = [f"{k} {v}" for k, v in case["frames_compared"].items() if k != f"{case['reference']} batch 1"]
        lines.append(f"{'':<30}(frames 1..{case['timed_frames']} timed on every row; frames equal to "
                     f"{case['reference']}'s in the readout and every layer's spike trains: {', '.join(others)})")
        lines.append(f"{'':<30}(on those frames every layer spikes, {min(spikes.values()):,} to "
                     f"{max(spikes.values()):,} spikes per layer; readout {case['compared_readout'][0]:,} to "
                     f"{case['compared_readout'][1]:,})")
    t = report["training"]
    lines.append(f"training step ({t['model']} {t['height']}x{t['width']} T={t['time_steps']}, batch {t['batch']}, "
                 f"qat={t['qat']}): toolchain {t['toolchain_samples_per_s']:.2f} samples/s, plain PyTorch "
                 f"{t['plain_torch_samples_per_s']:.2f} samples/s, ratio {t['ratio']:.2f}")
    p = report.get("predict")
    if p:
        real_time = 1000 / p["window_ms"]
        lines.append(f"predict ({p['model']} {p['height']}x{p['width']} T={p['time_steps']}, emulator, batch "
                     f"{p['batch']}, maps, overlays and GIF): {p['windows']} windows of {p['window_ms']:g} ms in "
                     f"{p['seconds']:.2f} s, {p['windows_per_second']:.1f} windows/s "
                     f"({p['windows_per_second'] / real_time:.2f}x real time)")
    e = report["evaluation"]
    lines.append(f"test split on the emulator: {e['frames']} frames in {e['wall_s']:.2f} s "
                 f"({e['steps_per_s']:.1f} steps/s), mIoU {percent(e['miou'])}%")
    lines.append(f"load average {report['load_avg_start']:.1f} -> {report['load_avg_end']:.1f} "
                 f"on {report['cpus']} CPUs")
    return "\n".join(lines)


def write_report(report: dict, path: str | Path) -> None:
    write_text(path, json.dumps(report, indent=2))
