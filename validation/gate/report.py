"""Gate reports: JSON (the contract of ../shared/DESIGN.md), Markdown, and one self-contained HTML page.

    paths = write_reports(report, out_dir)   # {"json": ..., "md": ..., "html": ...}

The HTML embeds its matplotlib plots as PNG data URIs (no external file, no script, no network): the
before/after bars of each metric and the per-request probabilities.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from .metrics import GateReport

# (metric, label, before key or None, direction): the summary rows, in order
SUMMARY = [
    ("reliability", "reliability (greedy answer says target_new)", "reliability_before", "min_reliability"),
    ("reliability_p", "reliability (p_new > p_true)", "reliability_p_before", None),
    ("generalization", "generalization (paraphrases, greedy)", "generalization_before", "min_generalization"),
    ("generalization_p", "generalization (p_new > p_true)", None, None),
    ("subject_locality", "edited subjects' other facts unchanged", None, "min_subject_locality"),
    ("subject_facts", "… those with a known answer", None, "min_subject_facts"),
    ("locality", "locality (answers unchanged)", None, "min_locality"),
    ("neighbour_locality", "neighbours unchanged", None, None),
    ("namesake_locality", "namesakes' facts unchanged", None, "min_namesake_locality"),
    ("broad_locality", "probe-bank sample unchanged", None, None),
    ("protected", "protected facts unchanged", None, "min_protected"),
    ("retention", "earlier edits still said", None, "min_retention"),
    ("kl", "mean next-token KL (nats)", None, "max_kl"),
    ("entropy_drop", "n-gram entropy drop", None, "max_entropy_drop"),
    ("perplexity_ratio", "perplexity ratio", None, "max_perplexity_ratio"),
    ("max_norm_growth", "largest norm growth", None, "max_norm_growth"),
]


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def summary_rows(report: GateReport) -> list[dict[str, Any]]:
    failed = {f["metric"] for f in report.failures}
    rows = []
    for metric, label, before, threshold in SUMMARY:
        rows.append({"metric": metric, "label": label, "before": report.metrics.get(before) if before else None,
                     "after": report.metrics.get(metric), "threshold": report.thresholds.get(threshold) if threshold else None,
                     "status": "FAIL" if metric in failed else ("ok" if threshold else "")})
    return rows


def markdown(report: GateReport) -> str:
    out = [f"# Gate report: {'PASSED' if report.passed else 'FAILED'}", ""]
    for k in ("base", "edited", "requests_file", "policy_file"):
        if report.meta.get(k):
            out.append(f"- {k.replace('_', ' ')}: `{report.meta[k]}`")
    p = report.metrics["probes"]
    out += [f"- requests: {len(report.requests)}; probes: {p['paraphrase']} paraphrases, {p['neighbour']} neighbours, "
            f"{p.get('subject', 0)} of the edited subjects' other facts, {p.get('broad', 0)} from the probe bank, "
            f"{p['protected']} protected facts, {p.get('earlier', 0)} earlier edits, {p['generation']} generations", "",
            "| metric | before | after | threshold | |", "|---|---|---|---|---|"]
    for r in summary_rows(report):
        out.append(f"| {r['label']} | {fmt(r['before'])} | {fmt(r['after'])} | {fmt(r['threshold'])} | {r['status']} |")
    if report.failures:
        out += ["", "## Failed thresholds", ""]
        for f in report.failures:
            who = ", ".join(f["requests"]) or "the batch as a whole"
            facts = f"; facts changed: {', '.join(f['facts'])}" if f.get("facts") else ""
            own = " (a request's own)" if f.get("scope") == "request" else ""
            out.append(f"- **{f['metric']}**{own} {fmt(f['value'])} against {fmt(f['threshold'])}: {who}{facts}")
    out += ["", "## Requests", "", "| id | prompt | target_new | says before → after | p_new before → after | "
            "p_true before → after | reliable | paraphrases | subject's other facts kept | neighbours kept |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report.requests:
        out.append(f"| {r['id']} | {_md(r['prompt'])} | {_md(r['target_new'])} | {_md(r.get('answer_before'))} → "
                   f"{_md(r.get('answer'))} | {fmt(r['p_new_before'])} → "
                   f"{fmt(r['p_new_after'])} | {fmt(r['p_true_before'])} → {fmt(r['p_true_after'])} | "
                   f"{fmt(r['reliable'])} | {fmt(r['generalization'])} | {fmt(r.get('subject_locality'))} | "
                   f"{fmt(r['locality'])} |")
    changed = [x for x in report.probes if not x["unchanged"]]
    if changed:
        out += ["", "## Changed answers", "", "| kind | request / fact | prompt | before | after |", "|---|---|---|---|---|"]
        for x in changed[:100]:
            out.append(f"| {x['kind']} | {x['request'] or x['fact']} | {_md(x['prompt'])} | {_md(x['before'])} | "
                       f"{_md(x['after'])} |")
    if report.metrics["norm_growth"]:
        out += ["", "## Edited matrices", "", "| matrix | ‖W′‖ / ‖W‖ |", "|---|---|"]
        out += [f"| `{k}` | {v:.4f} |" for k, v in report.metrics["norm_growth"].items()]
    return "\n".join(out) + "\n"


def _md(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ") if s is not None else "–"


def _plots(report: GateReport) -> list[str]:
    """PNG data URIs: before/after bars of the share metrics, and p_new / p_true per request."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    uris = []
    m = report.metrics
    names = ["reliability", "generalization", "subject_locality", "locality", "protected"]
    before = [m.get("reliability_before"), m.get("generalization_before"), 1.0, 1.0, 1.0]
    after = [m.get(n) for n in names]
    fig, ax = plt.subplots(figsize=(6, 3))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [b or 0 for b in before], width=0.4, label="base", color="#9aa5b1")
    ax.bar([x + 0.2 for x in xs], [a or 0 for a in after], width=0.4, label="edited", color="#2f6fb0")
    for name, thr in (("reliability", "min_reliability"), ("generalization", "min_generalization"),
                      ("subject_locality", "min_subject_locality"), ("locality", "min_locality"),
                      ("protected", "min_protected")):
        i = names.index(name)
        ax.plot([i - 0.45, i + 0.45], [report.thresholds[thr]] * 2, color="#c0392b", lw=1.5)
    ax.set_xticks(list(xs), [n.replace("_", " ") for n in names], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share")
    ax.set_title("base vs edited (red: threshold)")
    ax.legend(loc="lower right", fontsize=8)
    uris.append(_png(fig))
    if report.requests:
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(report.requests)), 3))
        ids = [r["id"] for r in report.requests]
        xs = range(len(ids))
        ax.bar([x - 0.2 for x in xs], [r["p_new_before"] for r in report.requests], width=0.4, label="p_new base",
               color="#9aa5b1")
        ax.bar([x + 0.2 for x in xs], [r["p_new_after"] for r in report.requests], width=0.4, label="p_new edited",
               color="#2f6fb0")
        ax.plot(list(xs), [r["p_true_after"] if r["p_true_after"] is not None else float("nan") for r in report.requests],
                "o", color="#c0392b", label="p_true edited")
        ax.set_xticks(list(xs), ids, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title("per request: probability of the new target")
        ax.legend(fontsize=8)
        uris.append(_png(fig))
    return uris


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def html_page(report: GateReport) -> str:
    e = html.escape
    status = "PASSED" if report.passed else "FAILED"
    colour = "#1e7e34" if report.passed else "#b02a37"
    rows = "".join(
        f"<tr><td>{e(r['label'])}</td><td>{fmt(r['before'])}</td><td>{fmt(r['after'])}</td>"
        f"<td>{fmt(r['threshold'])}</td><td class='{r['status'].lower()}'>{r['status']}</td></tr>"
        for r in summary_rows(report))
    fails = "".join(
        f"<li><b>{e(f['metric'])}</b> {fmt(f['value'])} against {fmt(f['threshold'])}: "
        f"{e(', '.join(f['requests']) or 'the batch as a whole')}"
        + (f"; protected facts changed: {e(', '.join(f['facts']))}" if f.get("facts") else "") + "</li>"
        for f in report.failures)
    reqs = "".join(
        f"<tr><td>{e(r['id'])}</td><td>{e(r['prompt'])}</td><td>{e(r['target_new'])}</td>"
        f"<td>{e(str(r['target_true'] or '–'))}</td><td>{e(str(r.get('answer_before') or ''))} → "
        f"{e(str(r.get('answer') or ''))}</td><td>{fmt(r['p_new_before'])} → {fmt(r['p_new_after'])}</td>"
        f"<td>{fmt(r['p_true_before'])} → {fmt(r['p_true_after'])}</td>"
        f"<td class='{'ok' if r['reliable'] else 'fail'}'>{fmt(r['reliable'])}</td>"
        f"<td>{fmt(r['generalization'])}</td><td>{fmt(r.get('subject_locality'))}</td><td>{fmt(r['locality'])}</td>"
        "</tr>" for r in report.requests)
    changed = "".join(
        f"<tr><td>{e(x['kind'])}</td><td>{e(str(x['request'] or x['fact']))}</td><td>{e(x['prompt'])}</td>"
        f"<td>{e(x['before'])}</td><td>{e(x['after'])}</td></tr>" for x in report.probes if not x["unchanged"])
    imgs = "".join(f"<img alt='plot' src='{u}'>" for u in _plots(report))
    meta = "".join(f"<li>{e(k.replace('_', ' '))}: <code>{e(str(v))}</code></li>" for k, v in report.meta.items() if v)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>factsmith gate: {status}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }}
h1 span {{ color: {colour}; }} table {{ border-collapse: collapse; margin: 1em 0; font-size: 14px; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }} th {{ background: #f3f3f3; }}
td.fail {{ color: #b02a37; font-weight: bold; }} td.ok {{ color: #1e7e34; }} img {{ max-width: 100%; margin: 0.5em 0; }}
</style></head><body>
<h1>Gate report: <span>{status}</span></h1>
<ul>{meta}<li>requests: {len(report.requests)}; seconds: {report.seconds:.1f}</li></ul>
<table><tr><th>metric</th><th>before</th><th>after</th><th>threshold</th><th></th></tr>{rows}</table>
{'<h2>Failed thresholds</h2><ul>' + fails + '</ul>' if fails else ''}
{imgs}
<h2>Requests</h2>
<table><tr><th>id</th><th>prompt</th><th>target_new</th><th>target_true</th><th>says before → after</th>
<th>p_new before → after</th><th>p_true before → after</th><th>reliable</th><th>paraphrases</th>
<th>subject's other facts kept</th><th>neighbours kept</th></tr>{reqs}</table>
{'<h2>Changed answers</h2><table><tr><th>kind</th><th>request / fact</th><th>prompt</th><th>before</th><th>after</th></tr>' + changed + '</table>' if changed else ''}
</body></html>
"""


def write_reports(report: GateReport, out_dir: str | Path) -> dict[str, Path]:
    """``gate.json``, ``gate.md`` and ``gate.html`` in ``out_dir`` (created)."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"json": d / "gate.json", "md": d / "gate.md", "html": d / "gate.html"}
    paths["json"].write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False, default=str) + "\n",
                             encoding="utf-8")
    paths["md"].write_text(markdown(report), encoding="utf-8")
    paths["html"].write_text(html_page(report), encoding="utf-8")
    return paths
