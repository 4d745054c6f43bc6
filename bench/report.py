"""Reports of a benchmark run: the JSON document, the markdown tables and one PNG of plots next to it.

``write_results`` writes four files, ``<device>-<date>[-quick]`` ``.json``, ``.md``, ``-summary.md`` and
``.png`` (a panel per op), none over :data:`MAX_FILE_BYTES`: a GPU check that keeps at most 8 files of at most
16 MB can store them beside its own log.

Two markers in the tables, each explained by a footnote: ``n/a†`` where the fastflow providers do no work
(``Case.work_free``: a speed-up there would compare something with nothing), and ``‡`` on a bandwidth above
the copy bandwidth measured in the same run (the data came from cache: the figure is suspect). What a time
budget left out is listed under "Not measured for lack of time".
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench import dispatch
from bench.harness import BASELINES, MODES

NOT_APPLICABLE = "n/a†"
ABOVE_COPY = "‡"
MAX_FILE_BYTES = 16 * 10**6

COLUMNS = (
    "case", "mode", "provider", "median ms", "GB/s", "% of copy BW",
    "speed-up vs reference", "speed-up vs compile", "speed-up vs fastflow+compile", "peak MB",
)


def _number(value: object, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table_rows(rows: Sequence[Mapping[str, object]]) -> list[tuple[str, ...]]:
    """One row per measured (case, mode, provider), grouped by op, then case (in the order run), then mode.

    (A run takes the cases by priority, the ops' acceptance shapes first: grouping by op keeps an op's table in
    one piece.)
    """
    measured = [row for row in rows if "median_ms" in row]
    op_order = {op: index for index, op in enumerate(dict.fromkeys(row["op"] for row in measured))}
    cases = dict.fromkeys((row["op"], row["case"]) for row in measured)
    case_order = {key: index for index, key in enumerate(cases)}
    mode_order = {mode: index for index, mode in enumerate(MODES)}
    measured.sort(key=lambda row: (op_order[row["op"]], case_order[row["op"], row["case"]], mode_order[row["mode"]]))
    lines = []
    for row in measured:
        fraction = row.get("copy_fraction")
        peak = row.get("peak_bytes")
        if "work_free" in row:
            gbps = percent = NOT_APPLICABLE
            speedups = [NOT_APPLICABLE] * len(BASELINES)
        else:
            flag = ABOVE_COPY if row.get("above_copy_bandwidth") else ""
            gbps = _number(row.get("gbps"), ".1f") + (flag if "gbps" in row else "")
            percent = _number(None if fraction is None else 100 * fraction, ".0f") + (flag if fraction else "")
            speedups = [_number(row.get(f"speedup_vs_{baseline}"), ".2f") for baseline in BASELINES]
        lines.append((
            f"{row['op']}/{row['case']}",
            row["mode"],
            row["provider"],
            _number(row["median_ms"], ".3f"),
            gbps,
            percent,
            *speedups,
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
    """One line per provider and reason it was skipped or failed (deduplicated across cases and modes); what the
    time budget left out is in :func:`lack_of_time`."""
    seen: dict[tuple[str, str, str], list[str]] = {}
    for row in rows:
        if row.get("skipped_for_budget"):
            continue
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


def lack_of_time(document: Mapping[str, object]) -> list[str]:
    """One line per case (and the dispatch section) that the time budget left out, in the order of the run."""
    by_case: dict[str, list[str]] = {}
    sections = []
    for entry in document.get("skipped_for_budget") or ():
        if entry.get("section") == "dispatch":
            sections.append(f"the dispatch-overhead section ({', '.join(entry['ops'])}; estimated at "
                            f"{entry['estimate_s']:.0f} s)")
        elif entry["providers"] == "all":
            by_case.setdefault(entry["case"], []).append(f"{entry['mode']} (estimated at {entry['estimate_s']:.0f} s)")
        else:
            by_case.setdefault(entry["case"], []).append(
                f"{entry['mode']}: {', '.join(entry['providers'])} (the budget ran out during the group)")
    return [f"{case}: {', '.join(modes)}" for case, modes in by_case.items()] + sections


def _lack_of_time_header(document: Mapping[str, object]) -> str:
    budget = document.get("time_budget") or {}
    entries = [entry for entry in document.get("skipped_for_budget") or () if entry.get("section") != "dispatch"]
    whole = sum(1 for entry in entries if entry["providers"] == "all")
    parts = f" and part of {len(entries) - whole}" if len(entries) > whole else ""
    return (f"Not measured for lack of time (time budget of {budget.get('seconds', 0):g} s spent, "
            f"{budget.get('elapsed_s', 0):.0f} s used; {whole} (case, mode) group(s){parts}, in the order of the run, "
            "most important first):")


def _budget_paragraph(document: Mapping[str, object]) -> str | None:
    budget = document.get("time_budget")
    if not budget:
        return None
    return (f"Time budget: {budget['seconds']:g} s for the whole run, {budget['elapsed_s']:.0f} s used, "
            f"{budget['groups_run']} (case, mode) group(s) measured, most important first; "
            f"{document['timing']['budget_s']:g} s of timing per measurement.")


def markdown(document: Mapping[str, object]) -> str:
    copy = document["copy_bandwidth"]
    paragraphs = [
        f"# Benchmarks on {document['device_name']} ({document['date']})",
        f"torch {document['versions']['torch']}, {document['threads']} thread(s); copy bandwidth "
        f"{copy['gbps']:.1f} GB/s (read + written); median of the per-call time; GB/s from each case's byte "
        "count (each input read once, each output written once; — where no count applies); peak MB allocated "
        "by one call above what was live before it.",
    ]
    if document.get("partial"):
        paragraphs.append("**Partial results**: written while the run was going on (it rewrites these files after "
                          "every (case, mode)); if no complete version replaced them, the run was stopped.")
    rates = document["matmul_tflops"]
    paragraphs += [f"matmul rate {dtype}: {rate:.2f} TFLOP/s" for dtype, rate in rates.items()]
    budget = _budget_paragraph(document)
    if budget:
        paragraphs.append(budget)
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
    late = lack_of_time(document)
    if late:
        lines += ["", _lack_of_time_header(document), ""] + [f"- {line}" for line in late]
    if document.get("dispatch"):
        lines += ["", dispatch.markdown(document["dispatch"]).rstrip()]
    if document.get("dispatch_error"):
        lines += ["", f"Dispatch overhead: FAILED ({document['dispatch_error']})"]
    return "\n".join(lines) + "\n"


# The compact tables (README): the providers a user chooses between, in this order, when measured.
SUMMARY_PROVIDERS = ("reference", "plain", "lu-reference", "compile", "cpu", "cuda", "triton", "fastflow+compile")
SUMMARY_RATIOS = tuple((fast, base) for fast in ("cpu", "cuda", "triton") for base in BASELINES) + (
    ("fastflow+compile", "reference"), ("fastflow+compile", "compile"))


def _summary_cell(row: Mapping[str, object] | None, copy_gbps: float) -> str:
    if row is None:
        return "—"
    above = "gbps" in row and row["gbps"] > copy_gbps and not row.get("work_free")
    return f"{row['median_ms']:.3f}{'‡' if above else ''}"


def summary(document: Mapping[str, object]) -> str:
    """One compact markdown table per op: median ms per provider and the speed-ups a user weighs (a work-free
    mode's speed-ups read n/a†, a time whose bandwidth exceeds the copy bandwidth carries ‡); then what the time
    budget left out."""
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
    # What a time budget left out, and a run still going on: the compact tables are what a GPU check's log shows.
    late = lack_of_time(document)
    if late:
        out += [_lack_of_time_header(document), ""] + [f"- {line}" for line in late] + [""]
    if document.get("partial"):
        out += ["**Partial results**: the run was still going on when this was written.", ""]
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
    late = lack_of_time(document)
    if late:
        lines += ["", _lack_of_time_header(document)] + [f"  {line}" for line in late]
    if document.get("dispatch"):
        lines += ["", dispatch.plain(document["dispatch"])]
    if document.get("dispatch_error"):
        lines += ["", f"Dispatch overhead: FAILED ({document['dispatch_error']})"]
    return "\n".join(lines)


def plot(document: Mapping[str, object], path: Path) -> Path | None:
    """One PNG, a band of panels per op: achieved GB/s (top, the copy bandwidth dashed; the median time for an op
    without byte counts, e.g. a whole model) and speed-up vs reference (bottom), a column per mode. Returns
    ``path``, or None when nothing was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [row for row in document["results"] if "median_ms" in row]
    ops = sorted({row["op"] for row in measured})
    if not ops:
        return None
    case_counts = [len(dict.fromkeys(row["case"] for row in measured if row["op"] == op)) for op in ops]
    # Each band as tall as one per-op figure was: half an inch per case and metric, plus the titles.
    heights = [1 + 0.5 * count for count in case_counts for _ in range(2)]
    title_inches = 0.6
    figure = plt.figure(figsize=(6 * len(MODES), sum(heights) + title_inches))
    grid = figure.add_gridspec(len(heights), len(MODES), height_ratios=heights)
    for band, op in enumerate(ops):
        op_rows = [row for row in measured if row["op"] == op]
        case_names = list(dict.fromkeys(row["case"] for row in op_rows))
        providers = list(dict.fromkeys(row["provider"] for row in op_rows))
        top = ("gbps", "GB/s") if any("gbps" in row for row in op_rows) else ("median_ms", "median ms")
        width = 0.8 / max(1, len(providers))
        for column, mode in enumerate(MODES):
            by_key = {(row["case"], row["provider"]): row for row in op_rows if row["mode"] == mode}
            for metric_row, (metric, label) in enumerate((top, ("speedup_vs_reference", "speed-up vs reference"))):
                axis = figure.add_subplot(grid[2 * band + metric_row, column])
                for index, provider in enumerate(providers):
                    cells = [by_key.get((name, provider), {}) for name in case_names]
                    values = [cell.get(metric) or 0.0 for cell in cells]
                    offset = (index - (len(providers) - 1) / 2) * width
                    positions = [position + offset for position in range(len(case_names))]
                    axis.barh(positions, values, height=width, label=provider)
                    for position, value, cell in zip(positions, values, cells, strict=True):
                        # No bar for a path that does no work, a marker on a bandwidth that came from cache.
                        if "work_free" in cell and metric != "median_ms":
                            axis.text(0, position, f" n/a ({provider})", va="center", fontsize=6)
                        elif metric == "gbps" and cell.get("above_copy_bandwidth"):
                            axis.text(value, position, f" {ABOVE_COPY}", va="center", fontsize=6)
                if metric == "gbps":
                    axis.axvline(document["copy_bandwidth"]["gbps"], color="k", linestyle="--", linewidth=1,
                                 label="copy")
                elif metric != "median_ms":
                    axis.axvline(1.0, color="k", linewidth=1)
                axis.set_yticks(range(len(case_names)))
                axis.set_yticklabels(case_names if column == 0 else [""] * len(case_names), fontsize=7)
                axis.set_title(f"{op} {mode}: {label}", fontsize=9)
                axis.invert_yaxis()
                if column == 0 and metric_row == 0:
                    axis.legend(fontsize=7)
    title = f"{document['device_name']} {document['date']}"
    if any(row.get("above_copy_bandwidth") for row in measured):
        title += f"   {ABOVE_COPY}: above the copy bandwidth (data from cache)"
    figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 1 - title_inches / figure.get_figheight()))  # below the title
    dpi = 110
    figure.savefig(path, dpi=dpi)
    # Within the size limit whatever the number of cases: fewer dots per inch until it fits.
    while path.stat().st_size > MAX_FILE_BYTES and dpi > 30:
        dpi = int(dpi * 0.7)
        figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def _replace(path: Path, text: str) -> None:
    # Written beside and renamed: a run stopped while it rewrites its partial results leaves whole files.
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(text)
    os.replace(partial, path)


def write_results(document: Mapping[str, object], out_dir: Path, suffix: str = "", plots: bool = True) -> list[Path]:
    """Write ``<device>-<date><suffix>.json``, ``.md``, ``-summary.md`` (the compact tables of the README) and,
    with ``plots``, ``.png`` in ``out_dir``; return the paths. The JSON keeps no per-sample times (the medians
    and quantiles only); one over :data:`MAX_FILE_BYTES` is written without indentation."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{document['device']}-{document['date'][:10]}{suffix}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    summary_path = stem.parent / f"{stem.name}-summary.md"
    text = json.dumps(document, indent=1, default=str) + "\n"
    if len(text.encode()) > MAX_FILE_BYTES:
        text = json.dumps(document, separators=(",", ":"), default=str) + "\n"
    _replace(json_path, text)
    _replace(md_path, markdown(document))
    _replace(summary_path, summary(document))
    paths = [json_path, md_path, summary_path]
    if plots:
        png = plot(document, stem.with_suffix(".png"))
        if png is not None:
            paths.append(png)
    return paths
