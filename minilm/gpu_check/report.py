"""report.json (everything the steps returned) and report.md (the same, as tables)."""
from __future__ import annotations

import json
import os


def write_reports(report: dict, out_dir: str) -> None:
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1, default=_plain)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(markdown(report) + "\n")


def _plain(value):
    """numpy scalars and the like -> JSON numbers."""
    return value.item() if hasattr(value, "item") else str(value)


def markdown(report: dict) -> str:
    steps = report["steps"]
    lines = [f"# minilm gpu-check{' (dry run)' if report['dry_run'] else ''}: "
             f"{'PASSED' if report['passed'] else 'FAILED'}", "",
             f"backend `{report['backend']}`, minilm {report['minilm']}, {report['seconds']:.0f} s", "",
             *table([("step", "status", "seconds")] + [(name, step["status"], f"{step['seconds']:.0f}")
                                                       for name, step in steps.items()])]
    sections = {"versions": versions_section, "compare": compare_section, "device-tests": device_tests_section,
                "speed": speed_section}
    for name, step in steps.items():
        lines += ["", f"## {name}: {step['status']}", ""]
        if "error" in step:
            lines += [f"error: {step['error']}", ""]
        if "traceback" not in step:                  # a step that raised has only its error
            lines += sections[name](step)
    return "\n".join(lines)


def versions_section(step: dict) -> list[str]:
    if "device" not in step:
        return []
    rows = [("what", "version")] + [(k, str(v)) for k, v in step["device"].items()]
    rows += [(k, v or "MISSING") for k, v in step["packages"].items()] + [("python", step["python"])]
    return table(rows)


def compare_section(step: dict) -> list[str]:
    rows = [("family", "format", "runs", "max dlogit forward", "max dlogit decode", "same tokens", "status")]
    for c in step.get("cases", []):
        rows.append((c["family"], c["format"], ", ".join(c.get("weight_formats", [])) or "-",
                     _g(c.get("forward_max_diff")), _g(c.get("decode_max_diff")), str(c.get("same_tokens", "-")),
                     c["status"] + "".join(f": {p}" for p in c["problems"])))
    return [f"`{step['backend']}` against `{step['reference']}`, tolerance {step['tolerance']:g}", ""] + table(rows)


def device_tests_section(step: dict) -> list[str]:
    lines = [f"files: {', '.join(step.get('files', []))}", ""]
    if "collected" in step:
        lines.append(f"collected {step['collected']} tests that run on a GPU (not run: dry run)")
    elif "tests" in step:
        lines.append(f"{step['passed']} passed, {step['failures']} failed, {step['errors']} errors, "
                     f"{step['skipped']} skipped (of {step['tests']}); full output: {step['log']}")
        lines += [f"- FAILED {name}" for name in step["failing"]]
    return lines


def speed_section(step: dict) -> list[str]:
    if "rows" not in step:
        return []
    s = step["settings"]
    rows = [("engine", "weights", "decode tok/s", "decode GB/s", "% of copy bandwidth",
             f"prefill {s['prefill_tokens']} tok/s", "load s", "status")]
    for r in step["rows"]:
        measured = r["status"] == "measured"
        rows.append((r["engine"], r["weights"], _f(r.get("decode_tok_s")), _g(r.get("decode_gb_s"), 3),
                     f"{100 * r['bandwidth_fraction']:.3g}%" if measured else "-", _f(r.get("prefill_tok_s")),
                     _f(r.get("load_s")), r["status"] + (f": {r['error']}" if "error" in r else "")))
    lines = [f"{s['config']} random weights on `{step['backend']}`; device-to-device copy "
             f"{step['copy_bandwidth_gb_s']:.0f} GB/s; decode: {s['new_tokens']} tokens after a "
             f"{s['prompt_tokens']}-token prompt (median of {s['decode_runs']})", ""] + table(rows) + [""]
    lines += [f"- goal: {goal}: {'-' if met is None else 'met' if met else 'not met'}"
              for goal, met in step["goals"].items()] or ["- goals: not evaluated (dry run: the numbers mean nothing)"]
    return lines


def table(rows: list[tuple]) -> list[str]:
    """A Markdown table; the first row is the header."""
    cells = [[str(c).replace("|", "/") for c in row] for row in rows]
    return ["| " + " | ".join(row) + " |" for row in cells[:1]] + ["|" + "---|" * len(cells[0])] + \
        ["| " + " | ".join(row) + " |" for row in cells[1:]]


def _g(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _f(value) -> str:
    return "-" if value is None else f"{value:.1f}"
