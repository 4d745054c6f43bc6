"""Reports of a benchmark run: the JSON document, a markdown table and PNG plots next to it.

Two markers in the tables, each explained by a footnote: ``n/a†`` where the fastflow providers do no work
(``Case.work_free``: a speed-up there would compare something with nothing), and ``‡`` on a bandwidth above
the copy bandwidth measured in the same run (the data came from cache: the figure is suspect).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench import dispatch
from bench.harness import MODES

NOT_APPLICABLE = "n/a†"
ABOVE_COPY = "‡"

COLUMNS = (
    "case", "mode", "provider", "median ms", "GB/s", "% of copy BW",
    "speed-up vs reference", "speed-up vs compile", "peak MB",
)


def _number(value: object, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table_rows(rows: Sequence[Mapping[str, object]]) -> list[tuple[str, ...]]:
    """One row per measured (case, mode, provider), grouped by case (in the order run) then mode."""
    measured = [row for row in rows if "median_ms" in row]
    cases = dict.fromkeys((row["op"], row["case"]) for row in measured)
    case_order = {key: index for index, key in enumerate(cases)}
    mode_order = {mode: index for index, mode in enumerate(MODES)}
    measured.sort(key=lambda row: (case_order[row["op"], row["case"]], mode_order[row["mode"]]))
    lines = []
    for row in measured:
        fraction = row.get("copy_fraction")
        peak = row.get("peak_bytes")
        if "work_free" in row:
            gbps = percent = vs_reference = vs_compile = NOT_APPLICABLE
        else:
            flag = ABOVE_COPY if row.get("above_copy_bandwidth") else ""
            gbps = _number(row.get("gbps"), ".1f") + (flag if "gbps" in row else "")
            percent = _number(None if fraction is None else 100 * fraction, ".0f") + (flag if fraction else "")
            vs_reference = _number(row.get("speedup_vs_reference"), ".2f")
            vs_compile = _number(row.get("speedup_vs_compile"), ".2f")
        lines.append((
            f"{row['op']}/{row['case']}",
            row["mode"],
            row["provider"],
            _number(row["median_ms"], ".3f"),
            gbps,
            percent,
            vs_reference,
            vs_compile,
            _number(None if peak is None else peak / 2**20, ".1f"),
        ))
    return lines


def footnotes(document: Mapping[str, object]) -> list[str]:
    """The explanations of the markers that the table uses (none if it uses none)."""
    rows = [row for row in document["results"] if "median_ms" in row]
    lines = []
    work_free: dict[str, list[str]] = {}
    for row in rows:
        if "work_free" in row:
            names = work_free.setdefault(str(row["work_free"]), [])
            label = f"{row['op']}/{row['case']} {row['mode']}"
            if label not in names:
                names.append(label)
    for reason, labels in work_free.items():
        lines.append(f"{NOT_APPLICABLE[-1]} n/a: the fastflow providers do no work in {', '.join(labels)}: {reason}. "
                     "Their time is shown, but a speed-up or a bandwidth of doing nothing means nothing.")
    if any(row.get("above_copy_bandwidth") for row in rows):
        copy = document["copy_bandwidth"]["gbps"]
        cache = document.get("cache") or {}
        where = ""
        if cache.get("bytes"):
            where = (f" (the inputs rotated among at most {document.get('max_input_sets', '?')} sets; "
                     f"the {cache.get('level', '')} cache holds {cache['bytes'] / 2**20:.0f} MiB)")
        lines.append(f"{ABOVE_COPY} above the copy bandwidth measured in this run ({copy:.1f} GB/s): the data came "
                     f"from cache, not memory{where}, so this figure is suspect as a bandwidth.")
    return lines


def not_measured(rows: Sequence[Mapping[str, object]]) -> list[str]:
    """One line per provider and reason it was skipped or failed (deduplicated across cases and modes)."""
    seen: dict[tuple[str, str, str], list[str]] = {}
    for row in rows:
        for status in ("skipped", "error"):
            if status in row:
                key = (row["provider"], status, str(row[status]))
                seen.setdefault(key, [])
                if row["case"] not in seen[key]:
                    seen[key].append(row["case"])
    lines = []
    for (provider, status, reason), case_names in seen.items():
        label = "skipped" if status == "skipped" else "FAILED"
        lines.append(f"{provider} {label} ({len(case_names)} case(s)): {reason}")
    return lines


def markdown(document: Mapping[str, object]) -> str:
    copy = document["copy_bandwidth"]
    paragraphs = [
        f"# Benchmarks on {document['device_name']} ({document['date']})",
        f"torch {document['versions']['torch']}, {document['threads']} thread(s); copy bandwidth "
        f"{copy['gbps']:.1f} GB/s (read + written); median of the per-call time; GB/s from each case's byte "
        "count (each input read once, each output written once; — where no count applies); peak MB allocated "
        "by one call above what was live before it.",
    ]
    rates = document["matmul_tflops"]
    paragraphs += [f"matmul rate {dtype}: {rate:.2f} TFLOP/s" for dtype, rate in rates.items()]
    load = document.get("load_average")
    cpus = document.get("cpu_count") or 0
    # The load before the run says whether something else was running; the load after includes the run itself.
    if load and cpus and load[0] > 0.5 * cpus:
        paragraphs.append(
            f"**Warning**: the machine was busy (1-minute load {load[0]:.1f} before the run, {load[1]:.1f} after "
            f"it, itself included, {cpus} CPUs): absolute times are noisy; the providers of a case took turns, "
            "so their ratios suffer less."
        )
    lines = [line for paragraph in paragraphs for line in (paragraph, "")]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "|".join("---" if index < 3 else "---:" for index in range(len(COLUMNS))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(document["results"])]
    notes = footnotes(document)
    if notes:
        lines += [""] + [line for note in notes for line in (note, "")][:-1]
    missing = not_measured(document["results"])
    if missing:
        lines += ["", "Not measured:", ""] + [f"- {line}" for line in missing]
    if document.get("dispatch"):
        lines += ["", dispatch.markdown(document["dispatch"]).rstrip()]
    return "\n".join(lines) + "\n"


# The compact tables (README): the providers a user chooses between, in this order, when measured.
SUMMARY_PROVIDERS = ("reference", "plain", "lu-reference", "compile", "cpu", "cuda", "triton", "fastflow+compile")
SUMMARY_RATIOS = (("cpu", "reference"), ("cpu", "compile"), ("triton", "reference"), ("triton", "compile"),
                  ("fastflow+compile", "reference"), ("fastflow+compile", "compile"))


def _summary_cell(row: Mapping[str, object] | None, copy_gbps: float) -> str:
    if row is None:
        return "—"
    above = "gbps" in row and row["gbps"] > copy_gbps and not row.get("work_free")
    return f"{row['median_ms']:.3f}{'‡' if above else ''}"


def summary(document: Mapping[str, object]) -> str:
    """One compact markdown table per op: median ms per provider and the speed-ups a user weighs (a work-free
    mode's speed-ups read n/a†, a time whose bandwidth exceeds the copy bandwidth carries ‡)."""
    measured = [row for row in document["results"] if "median_ms" in row]
    copy_gbps = document["copy_bandwidth"]["gbps"]
    by_key = {(row["op"], row["case"], row["mode"], row["provider"]): row for row in measured}
    out = []
    for op in dict.fromkeys(row["op"] for row in measured):
        rows = [row for row in measured if row["op"] == op]
        providers = [p for p in SUMMARY_PROVIDERS if any(row["provider"] == p for row in rows)]
        ratios = [(a, b) for a, b in SUMMARY_RATIOS if a in providers and b in providers]
        header = ["case", "mode"] + [f"{p} ms" for p in providers] + [f"{a} vs {b}" for a, b in ratios]
        out += [f"**{op}**", "", "| " + " | ".join(header) + " |",
                "|---|---|" + "---:|" * (len(header) - 2)]
        for case, mode in dict.fromkeys((row["case"], row["mode"]) for row in rows):
            cells = [case, mode] + [_summary_cell(by_key.get((op, case, mode, p)), copy_gbps) for p in providers]
            for a, b in ratios:
                fast, base = by_key.get((op, case, mode, a)), by_key.get((op, case, mode, b))
                if fast is None or base is None:
                    cells.append("—")
                elif fast.get("work_free"):
                    cells.append("n/a†")
                else:
                    cells.append(f"{base['median_ms'] / fast['median_ms']:.2f}×")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def plain_table(document: Mapping[str, object]) -> str:
    rows = [COLUMNS] + table_rows(document["results"])
    widths = [max(len(row[index]) for row in rows) for index in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) if index < 3 else cell.rjust(width)
                       for index, (cell, width) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    notes = footnotes(document)
    missing = not_measured(document["results"])
    lines += ([""] + notes if notes else []) + ([""] + missing if missing else [])
    if document.get("dispatch"):
        lines += ["", dispatch.plain(document["dispatch"])]
    return "\n".join(lines)


def plot(document: Mapping[str, object], path_stem: Path) -> list[Path]:
    """Per op: achieved GB/s (top, the copy bandwidth dashed) and speed-up vs reference (bottom) per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [row for row in document["results"] if "median_ms" in row]
    written = []
    for op in sorted({row["op"] for row in measured}):
        op_rows = [row for row in measured if row["op"] == op]
        case_names = list(dict.fromkeys(row["case"] for row in op_rows))
        providers = list(dict.fromkeys(row["provider"] for row in op_rows))
        figure, axes = plt.subplots(2, len(MODES), figsize=(6 * len(MODES), 2 + 0.5 * len(case_names) * 2),
                                    squeeze=False)
        width = 0.8 / max(1, len(providers))
        for column, mode in enumerate(MODES):
            by_key = {(row["case"], row["provider"]): row for row in op_rows if row["mode"] == mode}
            for metric_row, (metric, label) in enumerate((("gbps", "GB/s"), ("speedup_vs_reference",
                                                                            "speed-up vs reference"))):
                axis = axes[metric_row][column]
                for index, provider in enumerate(providers):
                    cells = [by_key.get((name, provider), {}) for name in case_names]
                    values = [cell.get(metric) or 0.0 for cell in cells]
                    offset = (index - (len(providers) - 1) / 2) * width
                    positions = [position + offset for position in range(len(case_names))]
                    axis.barh(positions, values, height=width, label=provider)
                    for position, value, cell in zip(positions, values, cells, strict=True):
                        # No bar for a path that does no work, a marker on a bandwidth that came from cache.
                        if "work_free" in cell:
                            axis.text(0, position, f" n/a ({provider})", va="center", fontsize=6)
                        elif metric == "gbps" and cell.get("above_copy_bandwidth"):
                            axis.text(value, position, f" {ABOVE_COPY}", va="center", fontsize=6)
                if metric == "gbps":
                    axis.axvline(document["copy_bandwidth"]["gbps"], color="k", linestyle="--", linewidth=1,
                                 label="copy")
                else:
                    axis.axvline(1.0, color="k", linewidth=1)
                axis.set_yticks(range(len(case_names)))
                axis.set_yticklabels(case_names if column == 0 else [""] * len(case_names), fontsize=7)
                axis.set_title(f"{op} {mode}: {label}", fontsize=9)
                axis.invert_yaxis()
        axes[0][0].legend(fontsize=7)
        title = f"{document['device_name']} {document['date']}"
        if any(row.get("above_copy_bandwidth") for row in op_rows):
            title += f"   {ABOVE_COPY}: above the copy bandwidth (data from cache)"
        figure.suptitle(title, fontsize=9)
        figure.tight_layout()
        path = path_stem.with_name(f"{path_stem.name}-{op}.png")
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def write_results(document: Mapping[str, object], out_dir: Path, suffix: str = "") -> list[Path]:
    """Write ``<device>-<date><suffix>.json``, ``.md``, ``-summary.md`` (the compact tables of the README) and
    ``-<op>.png`` in ``out_dir``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{document['device']}-{document['date'][:10]}{suffix}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    summary_path = stem.parent / f"{stem.name}-summary.md"
    json_path.write_text(json.dumps(document, indent=1, default=str) + "\n")
    md_path.write_text(markdown(document))
    summary_path.write_text(summary(document))
    return [json_path, md_path, summary_path] + plot(document, stem)
