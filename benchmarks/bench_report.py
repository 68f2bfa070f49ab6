"""The benchmark results as markdown tables."""

from __future__ import annotations

import math
from typing import Any


def fmt(value, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


TARGETS = (
    # (name, unit, goal, where to look)
    ("training, peer sizes, batch 32: x peer design (fp32) >= 3.5", "x", 3.5, ("training", "peer", 32)),
    ("greedy decoding, batch 1000: x peer design >= 2.5", "x", 2.5, ("decoding", "greedy/batch1000", "ratio_vs_peer")),
    (
        "greedy decoding, batch 1000, mixed output layer (the float32 sequences): x peer design >= 2.5",
        "x",
        2.5,
        ("decoding", "greedy/batch1000", "mixed_ratio_vs_peer"),
    ),
    ("beam 5, batch 64: x peer design >= 2", "x", 2.0, ("decoding", "beam5/batch64", "ratio_vs_peer")),
    (
        "beam 5, batch 64, mixed output layer (the float32 sequences): x peer design >= 2",
        "x",
        2.0,
        ("decoding", "beam5/batch64", "mixed_ratio_vs_peer"),
    ),
    (
        "greedy decoding, batch 512: >= 70 % of the fp32 matmul bound",
        "%",
        0.7,
        ("decoding", "greedy/batch512", "fraction_of_matmul_bound"),
    ),
    (
        "greedy decoding, batch 1: x the previous revision >= 1",
        "x",
        1.0,
        ("decoding", "greedy/batch1", "ratio_vs_previous"),
    ),
)


def target_ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets `make bench` reports, each with its measured value (None where this run did not measure it)."""
    found = []
    for name, unit, goal, where in TARGETS:
        measured = reps = load = None
        if where[0] == "training":
            for entry in results.get("training", []):
                if entry.get("size") == where[1] and entry["batch_size"] == where[2] and "fp32" in entry["arms"]:
                    arm = entry["arms"]["fp32"]
                    measured, reps, load = arm.get("ratio_vs_peer"), arm.get("repetitions"), arm["load_median"]
        else:
            arm = (results.get("decoding") or {}).get("arms", {}).get(where[1])
            if arm is not None:
                measured, reps, load = arm.get(where[2]), arm.get("repetitions"), arm["load_median"]
        found.append({"name": name, "unit": unit, "goal": goal, "measured": measured, "reps": reps, "load": load})
    return found if results.get("training") or results.get("decoding") else []


def render_markdown(results: dict[str, Any]) -> str:
    lines = []
    machine = results["machine"]
    lines.append(f"Command: `{results['command']}`  ")
    cap = machine.get("onednn_max_cpu_isa")
    lines.append(
        f"Machine: {machine['cpu_model']}, {machine['logical_cpus']} logical CPUs ({', '.join(machine['isa'])}), "
        f"torch {machine['torch']}; oneDNN ISA: {machine.get('onednn_isa', 'unknown')}"
        f"{f' (ONEDNN_MAX_CPU_ISA={cap})' if cap else ''}; load average at start {machine['load_average_start']}, "
        f"at end {machine.get('load_average_end')}.  "
    )
    lines.append(f"Data: {results['data']['source']} ({results['data']['train_sentences']} training sentences).")
    lines.append("")
    for entry in results["training"]:
        lines.append(
            f"Training, {entry['size']} size (FLOPs/token {fmt(entry['flops_per_token'] / 1e6, 1)} M), "
            f"batch {entry['batch_size']}, {entry['steps_per_run']} steps per run:"
        )
        lines.append("")
        lines.append(
            "| arm | threads | tokens/s | x fp32 | x peer design | x padded-to-longest baseline | GFLOP/s "
            "| matmul GFLOP/s | % of matmul | % of matmul (CPU time) | CPU/wall | peak RSS MB | load |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, arm in entry["arms"].items():
            kind = "bf16" if arm["arm"]["bf16"] else "fp32"
            lines.append(
                f"| {name} | {arm['arm']['threads']} | {fmt(arm['tokens_per_second'])} | {fmt(arm['ratio_vs_fp32'], 2)} "
                f"| {fmt(arm.get('ratio_vs_peer'), 2)} | {fmt(arm['ratio_vs_baseline'], 2)} "
                f"| {fmt(arm['achieved_gflops'], 1)} "
                f"| {fmt(arm['matmul_gflops'], 0)} ({kind}) | {fmt(100 * arm['fraction_of_matmul'], 0, '%')} "
                f"| {fmt(100 * arm['fraction_of_matmul_cpu_time'], 0, '%')} | {fmt(arm['cpu_over_wall'], 2)} "
                f"| {fmt(arm.get('peak_rss_mb'), 0)} | {fmt(arm['load_median'], 1)} |"
            )
        lines.append("")
    if results.get("allocator_env"):
        lines.append("glibc allocator settings (fp32 + fused Adam, fresh processes run alternately):")
        lines.append("")
        lines.append("| size | batch | setting | tokens/s | x default | x default (CPU time) | minor faults/step |")
        lines.append("|---|---|---|---|---|---|---|")
        for row in results["allocator_env"]:
            env = " ".join(f"{k}={v}" for k, v in row["env"].items()) or "(none)"
            lines.append(
                f"| {row['size']} | {row['batch_size']} | {row['setting']}: `{env}` | {fmt(row['tokens_per_second'])} "
                f"| {fmt(row['ratio_vs_default'], 2)} | {fmt(row['ratio_vs_default_cpu_time'], 2)} "
                f"| {fmt(row['minor_faults_per_step'])} |"
            )
        lines.append("")
    if results.get("bf16_loss"):
        b = results["bf16_loss"]
        v = b["validation_fp32_eval"]
        lines.append(
            f"bf16 autocast vs fp32, same init, batches and noise, {b['steps']} steps of batch {b['batch_size']}: "
            f"mean |loss difference| per step {b['mean_abs_step_loss_difference']:.4f} nats/sentence "
            f"({100 * b['mean_relative_step_loss_difference']:.3f}%), max {b['max_abs_step_loss_difference']:.4f}; "
            f"training loss over the last {b['window']} steps fp32 {b['train_loss_last_window']['fp32']:.3f}, "
            f"bf16 {b['train_loss_last_window']['bf16']:.3f}; validation bound (fp32 evaluation) "
            f"fp32 {v['fp32']['validation_loss']:.3f}, bf16 {v['bf16']['validation_loss']:.3f} nats/sentence; "
            f"bf16/fp32 time {b['time_ratio_bf16_over_fp32']:.2f} (every step a new batch, the training loop's Adam: "
            f"fp32 {b['tokens_per_second']['fp32']:,.0f} tokens/s, bf16 {b['tokens_per_second']['bf16']:,.0f})."
        )
        lines.append("")
    if results.get("decoding"):
        d = results["decoding"]
        lines.append(
            f"Decoding from prior samples (max {d['max_new_tokens']} tokens; model: {d.get('model')}; sentences/s, "
            "ratios pair by pair within each repetition):"
        )
        if d.get("peer_skipped"):
            lines.append(f"(peer design left out: {d['peer_skipped']})")
        lines.append("")
        previous = d.get("compare_rev")
        head = "| decoding | ours | x peer design | bf16 output layer | bf16 x peer design | mixed output layer "
        head += "| mixed x peer design | mixed same as ours | same as peer "
        head += f"| x {previous} | same as {previous} " if previous else ""
        head += "| ms/sentence-step | % of fp32 matmul bound | mean length | load | reps |"
        lines.append(head)
        lines.append("|" + "---|" * (head.count("|") - 1))
        for key, arm in d["arms"].items():
            same = arm.get("same_sequences", {})
            impl = arm.get("implementations", {})
            row = (
                f"| {key} | {fmt(arm['sentences_per_second'], 1)} | {fmt(arm.get('ratio_vs_peer'), 2)} "
                f"| {fmt(impl.get('ours, bf16 output layer'), 1)} | {fmt(arm.get('bf16_ratio_vs_peer'), 2)} "
                f"| {fmt(impl.get('ours, mixed output layer'), 1)} | {fmt(arm.get('mixed_ratio_vs_peer'), 2)} "
                f"| {fmt(_percent(same.get('ours, mixed output layer')), 1, '%')} "
                f"| {fmt(_percent(same.get('peer design')), 1, '%')} "
            )
            if previous:
                row += (
                    f"| {fmt(arm.get('ratio_vs_previous'), 2)} "
                    f"| {fmt(_percent(same.get('previous revision')), 1, '%')} "
                )
            row += (
                f"| {fmt(arm['ms_per_sentence_step'], 4)} | {fmt(_percent(arm.get('fraction_of_matmul_bound')), 0, '%')} "
                f"| {fmt(arm['mean_length'], 1)} | {fmt(arm['load_median'], 1)} | {arm.get('repetitions', '-')} |"
            )
            lines.append(row)
        lines.append("")
    if results.get("isa"):
        lines.append("bf16 by oneDNN instruction set (fresh process per ONEDNN_MAX_CPU_ISA; one thread):")
        lines.append("")
        lines.append(
            "| ONEDNN_MAX_CPU_ISA | oneDNN ISA | fp32 GEMM GFLOP/s | bf16 GEMM GFLOP/s | training bf16 / fp32 "
            "| greedy bf16 output layer / fp32 | greedy mixed output layer / fp32 | load |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for row in results["isa"]:
            if "error" in row:
                lines.append(f"| {row['onednn_max_cpu_isa']} | failed: {row['error'][-200:]} | | | | | | |")
                continue
            rates = row["matmul_gflops"]
            lines.append(
                f"| {row['onednn_max_cpu_isa']} | {row['onednn_isa']} | {fmt(rates['float32'])} | {fmt(rates['bfloat16'])} "
                f"| {fmt(row['training_bf16_over_fp32'], 2)} | {fmt(row.get('greedy_bf16_over_fp32'), 2)} "
                f"| {fmt(row.get('greedy_mixed_over_fp32'), 2)} "
                f"| {fmt(row['load_start'], 1)} |"
            )
        lines.append("")
    targets = target_ratios(results)
    if targets:
        lines.append("Targets (ratios in one run, one thread; median over the repetitions):")
        lines.append("")
        lines.append("| target | measured | reps | load | met |")
        lines.append("|---|---|---|---|---|")
        for t in targets:
            met = "-" if t["measured"] is None else ("yes" if t["measured"] >= t["goal"] else "no")
            shown = fmt(t["measured"], 2) if t["unit"] == "x" else fmt(_percent(t["measured"]), 0, "%")
            lines.append(f"| {t['name']} | {shown} | {t['reps'] or '-'} | {fmt(t['load'], 1)} | {met} |")
        lines.append("")
    if results.get("decoding_memory"):
        m = results["decoding_memory"]
        if "error" in m:
            lines.append(f"Streamed decoding probe failed: {m['error'][-300:]}")
        else:
            lines.append(
                f"Streamed greedy decoding of {m['sentences']:,} sentences in batches of {m['batch_size']}: peak RSS "
                f"{m['peak_rss_mb']:.0f} MB ({m['rss_before_decoding_mb']:.0f} MB before decoding), "
                f"{m['sentences_per_second']:.0f} sentences/s, mean length {m['mean_length']:.1f}."
            )
        lines.append("")
    imputation = results.get("imputation")
    if imputation and "arms" in imputation:
        lines.append(f"ICM imputation of validation sentences ({imputation['setting']}):")
        lines.append("")
        lines.append("| imputation | sentences/s | per-sentence x batch 1 | load |")
        lines.append("|---|---|---|---|")
        for key, arm in imputation["arms"].items():
            lines.append(
                f"| {key} | {fmt(arm['sentences_per_second'], 1)} | {fmt(arm['per_sentence_speedup_vs_batch1'], 1)} "
                f"| {fmt(arm['load_median'], 1)} |"
            )
        lines.append("")
    elif imputation:
        lines.append(f"ICM imputation: {imputation}")
        lines.append("")
    for prof in results.get("profiles", []):
        lines.append(
            f"Profile, {prof['size']} size, {prof['arm']}, batch {prof['batch_size']} "
            f"({prof['ms_per_step']:.0f} ms/step under the profiler, load {prof['load']}):"
        )
        lines.append("")
        lines.append("| op | ms/step | % | calls/step |")
        lines.append("|---|---|---|---|")
        for op in prof["top_ops"]:
            lines.append(f"| {op['op']} | {op['ms_per_step']:.1f} | {op['percent']:.1f} | {op['calls_per_step']:.0f} |")
        lines.append("")
    return "\n".join(lines)
