"""``report.json``, a self-contained ``report.html`` and the stdout table of ``edge-agent validate``.

Series appear only as ``#index`` and a 10-digit hash of their UID; no
patient, accession or path appears anywhere in either file.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from edge_agent.service.analyse import DISCLAIMER
from edge_agent.validation.run import Case, Target

EXAMPLES = 6


def _ci(value, ci, pct: bool = False) -> str:
    if value is None:
        return "–"
    f = (lambda v: f"{100 * v:.1f} %") if pct else (lambda v: f"{v:.3f}")
    return f"{f(value)} [{f(ci[0])}–{f(ci[1])}]" if ci else f(value)


def _fa(e: dict) -> str:
    v, ci = e.get("false_alarms_per_100"), e.get("false_alarms_per_100_ci")
    return "–" if v is None else (f"{v:.1f} [{ci[0]:.1f}–{ci[1]:.1f}]" if ci else f"{v:.1f}")


def rows(report: dict) -> list[list[str]]:
    """The summary table: one row per model finding."""
    out = [["model", "finding", "labelled +/−", "analysed +/−", "not analysed", "AUC [95 % CI]",
            "sensitivity", "specificity", "false alarms /100"]]
    for e in report["models"]:
        not_analysed = sum(n for k, n in e["series"].items() if k != "analysed")
        out.append([f"{e['name']} {e['version']}", e["finding"], f"{e['positives']}/{e['negatives']}",
                    f"{e['analysed_positives']}/{e['analysed_negatives']}", str(not_analysed),
                    _ci(e["auc"], e["auc_ci"]), _ci(e["sensitivity"], e["sensitivity_ci"], True),
                    _ci(e["specificity"], e["specificity_ci"], True), _fa(e)])
    return out


def text_table(report: dict) -> str:
    """The stdout summary: the table, then per model the reasons and any suggestion, then the data counts."""
    table = rows(report)
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for e in report["models"]:
        head = f"{e['name']}/{e['finding']}"
        lines.append(f"\n{head}: decision {e['decision']['rule']} ≥ {e['decision']['threshold']:g} "
                     f"(backend {e['backend']}, {e['artefact']} sha256 {e['sha256'][:12]}…)")
        if e.get("note"):
            lines.append(f"  note: {e['note']}")
        for status, items in e["reasons"].items():
            for item in items[:5]:
                lines.append(f"  {status}: {item['series']} series: {item['reason']}")
        if e.get("slice_level"):
            sl = e["slice_level"]
            lines.append(f"  per-slice AUC {_ci(sl['auc'], sl['auc_ci'])} on {sl['slices']} slices of "
                         f"{sl['series']} series; slices called at {sl['threshold']:g}: sensitivity "
                         f"{_ci(sl['sensitivity'], sl['sensitivity_ci'], pct=True)}, specificity "
                         f"{_ci(sl['specificity'], sl['specificity_ci'], pct=True)}")
            ss = sl.get("suggested_threshold")
            if ss:
                lines.append(f"  suggested slice threshold for ≤ {ss['max_false_slices_per_100']:g} false slices per 100: "
                             + ("none" if ss["threshold"] is None else
                                f"{ss['threshold']:g} (slice sensitivity "
                                f"{_ci(ss['sensitivity'], ss['sensitivity_ci'], pct=True)}, "
                                f"{ss['false_slices_per_100']:g} false slices per 100)")
                             + f" — {ss['note']}; not applied")
        s = e.get("suggested_threshold")
        if s:
            if s.get("threshold") is None:
                lines.append(f"  suggested threshold for ≤ {s['max_false_alarms_per_100']:g} false alarms per 100 "
                             f"negatives: none ({s['note']})")
            else:
                lines.append(f"  suggested threshold for ≤ {s['max_false_alarms_per_100']:g} false alarms per 100 "
                             f"negatives: {s['threshold']:g} (sensitivity "
                             f"{_ci(s['sensitivity'], s['sensitivity_ci'], True)}"
                             f", {s['false_alarms_per_100']:.1f} false alarms /100) — a suggestion, NOT applied; "
                             "to use it set decision.threshold in the model's manifest")
                if s.get("note"):
                    lines.append(f"    note: {s['note']}")
        w = e.get("what_if")
        if w:
            lines.append(f"  what if the threshold were {w['threshold']:g} (not applied): sensitivity "
                         f"{_ci(w['sensitivity'], w['sensitivity_ci'], True)}, specificity "
                         f"{_ci(w['specificity'], w['specificity_ci'], True)}, false alarms /100 {_fa(w)}")
        if e["synthetic_training"]:
            lines.append(f"  {DISCLAIMER}")
    d = report["data"]
    lines.append(f"\ndata: {d['series']} series, {d['labelled_series']} labelled ({d['labels_source']}), "
                 f"{d['unlabelled_series']} unlabelled (not analysed), {d['files_left_out']} files left out"
                 + (f", {d['label_rows_without_series']} label rows matched no series"
                    if d["label_rows_without_series"] else "")
                 + (f", {d['series_with_conflicting_folders']} series in conflicting label folders"
                    if d["series_with_conflicting_folders"] else ""))
    return "\n".join(lines)


def write_json(report: dict, out_dir: Path) -> Path:
    path = out_dir / "report.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d1f23}
main{max-width:1120px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:2px solid #d9dce1;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.meta{color:#555;font-size:12.5px}
.banner{background:#fff4e5;border:1px solid #f0b35a;border-radius:6px;padding:10px 14px;margin:14px 0}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{background:#fff;border:1px solid #d9dce1;border-radius:6px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:20px}.card small{font-size:12px;font-weight:normal;color:#555}.card span{color:#555;font-size:12px}
table{border-collapse:collapse;background:#fff;margin:8px 0;font-size:13px}
th,td{border:1px solid #d9dce1;padding:5px 9px;text-align:left;vertical-align:top}th{background:#eef0f3}
.summary td,.summary th{white-space:nowrap}.summary small{color:#555}
.figs{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.figs img{background:#fff;border:1px solid #d9dce1;border-radius:6px;max-width:100%}
.cases{display:flex;flex-wrap:wrap;gap:10px}
.case{background:#fff;border:1px solid #d9dce1;border-radius:6px;padding:6px;width:196px;font-size:12px}
.case img{width:192px;height:auto;display:block;background:#000;image-rendering:auto}
.none{color:#555;font-style:italic}.sugg{background:#eaf7ef;border:1px solid #7cc59a;border-radius:6px;padding:8px 12px}
"""


def _esc(value) -> str:
    return html.escape(str(value))


def _cell(text: str) -> str:
    """A table cell; an interval goes on its own smaller line so the table fits the page."""
    value, sep, ci = str(text).partition(" [")
    return f"{_esc(value)}<br><small>[{_esc(ci)}</small>" if sep else _esc(text)


def _case_cards(cases: list[Case], kind: str) -> str:
    from edge_agent.validation.plots import thumbnail_png  # noqa: PLC0415 - matplotlib only for HTML

    if not cases:
        return f"<p class='none'>No {kind} among the analysed series.</p>"
    cards = []
    for c in cases:
        img = (f"<img alt='key slice' src='data:image/png;base64,{thumbnail_png(c.thumbnail)}'>"
               if c.thumbnail is not None else "<p class='none'>no key slice</p>")
        cards.append(f"<div class='case'>{img}<div><b>series #{c.index}</b> · uid {_esc(c.uid_hash)}<br>"
                     f"probability {c.probability:.3f} · labelled {'+' if c.label else '−'}<br>"
                     f"key slice {c.key_slice if c.key_slice is not None else '–'} of {c.slices}</div></div>")
    return f"<div class='cases'>{''.join(cards)}</div>"


def _section(e: dict, target: Target) -> str:
    from edge_agent.validation.plots import histogram_png, roc_png  # noqa: PLC0415

    analysed = [c for c in target.cases if c.status == "analysed" and c.probability is not None]
    s = np.array([c.probability for c in analysed], np.float64)
    y = np.array([c.label for c in analysed], bool)
    thr = float(e["decision"]["threshold"])
    sugg = (e.get("suggested_threshold") or {}).get("threshold")
    parts = [f"<h2>{_esc(e['name'])} {_esc(e['version'])} — {_esc(e['label'])} ({_esc(e['finding'])})</h2>",
             f"<p class='meta'>backend {_esc(e['backend'])} · {_esc(e['artefact'])} sha256 "
             f"<code>{_esc(e['sha256'])}</code><br>decision: {_esc(e['decision']['rule'])}"
             f"{' k=' + str(e['decision']['k']) if e['decision']['rule'] == 'top_k_mean' else ''}, positive when "
             f"≥ {thr:g} (the manifest's rule, as deployed)"
             + (f"; a slice is called positive at ≥ {e['decision']['slice_threshold']:g}"
                if e["decision"].get("slice_threshold") is not None else "") + "</p>"]
    if e["synthetic_training"]:
        parts.append(f"<div class='banner'><b>Synthetic training.</b> {_esc(DISCLAIMER)}</div>")
    cards = [("AUC", _ci(e["auc"], e["auc_ci"])), ("sensitivity", _ci(e["sensitivity"], e["sensitivity_ci"], True)),
             ("specificity", _ci(e["specificity"], e["specificity_ci"], True)),
             ("false alarms / 100 negatives", _fa(e)),
             ("analysed / labelled", f"{e['series']['analysed']} / {e['labelled_series']}")]
    parts.append("<div class='cards'>" + "".join(
        f"<div class='card'><b>{_cell(v)}</b><span>{_esc(k)}</span></div>" for k, v in cards) + "</div>")
    if e.get("note"):
        parts.append(f"<p class='meta'><b>Note:</b> {_esc(e['note'])}.</p>")
    c = e["counts"]
    parts.append("<table><tr><th></th><th>called positive</th><th>called negative</th></tr>"
                 f"<tr><th>labelled positive</th><td>{c['tp']} (true positive)</td><td>{c['fn']} (miss)</td></tr>"
                 f"<tr><th>labelled negative</th><td>{c['fp']} (false alarm)</td><td>{c['tn']} (true negative)</td>"
                 "</tr></table>")
    if e.get("suggested_threshold"):
        st = e["suggested_threshold"]
        text = (f"Suggested threshold for at most {st['max_false_alarms_per_100']:g} false alarms per 100 negative "
                f"series: <b>{st['threshold']:g}</b> (sensitivity {_ci(st['sensitivity'], st['sensitivity_ci'], True)})"
                if st.get("threshold") is not None else
                f"No threshold meets {st['max_false_alarms_per_100']:g} false alarms per 100: {_esc(st['note'])}")
        note = f"<br><i>{_esc(st['note'])}</i>" if st.get("note") and st.get("threshold") is not None else ""
        parts.append(f"<p class='sugg'>{text}. <b>Not applied</b>: the manifest still says {thr:g}; changing it is a "
                     f"deliberate edit of decision.threshold.{note}</p>")
    figs = []
    if analysed:
        point = None if e["sensitivity"] is None or e["specificity"] is None else (1 - e["specificity"],
                                                                                  e["sensitivity"])
        roc = roc_png(s, y, thr, sugg, title=f"ROC, {len(analysed)} analysed series", manifest_point=point)
        if roc:
            figs.append(f"<img alt='ROC curve' src='data:image/png;base64,{roc}'>")
        figs.append(f"<img alt='score histograms' src='data:image/png;base64,{histogram_png(s, y, thr, sugg)}'>")
    parts.append("<div class='figs'>" + "".join(figs) + "</div>" if figs else
                 "<p class='none'>No analysed series: nothing to plot.</p>")
    if e.get("slice_level"):
        sl = e["slice_level"]
        parts.append(f"<p>Per-slice AUC {_esc(_ci(sl['auc'], sl['auc_ci']))} on {sl['slices']} labelled slices "
                     f"({sl['positive_slices']} positive) of {sl['series']} series. Slices called positive at the "
                     f"slice threshold {sl['threshold']:g}: sensitivity "
                     f"{_esc(_ci(sl['sensitivity'], sl['sensitivity_ci'], pct=True))}, specificity "
                     f"{_esc(_ci(sl['specificity'], sl['specificity_ci'], pct=True))}. "
                     "CIs by resampling whole series.</p>")
        ss = sl.get("suggested_threshold")
        if ss:
            told = ("none" if ss["threshold"] is None else
                    f"{ss['threshold']:g}: slice sensitivity {_ci(ss['sensitivity'], ss['sensitivity_ci'], pct=True)}, "
                    f"{ss['false_slices_per_100']:g} false slices per 100")
            parts.append(f"<p class='meta'>Suggested slice threshold for at most {ss['max_false_slices_per_100']:g} "
                         f"false slices per 100: {_esc(told)} ({_esc(ss['note'])}; not applied).</p>")
    false_alarms = sorted((x for x in analysed if not x.label), key=lambda x: -x.probability)
    worst_fa = [x for x in false_alarms if x.positive][:EXAMPLES]
    misses = sorted((x for x in analysed if x.label and not x.positive), key=lambda x: x.probability)[:EXAMPLES]
    parts.append(f"<h3>Worst false alarms ({sum(1 for x in false_alarms if x.positive)})</h3>"
                 + _case_cards(worst_fa, "false alarms"))
    if not worst_fa and false_alarms:
        parts.append("<p class='meta'>Highest-scoring negatives (below the threshold):</p>"
                     + _case_cards(false_alarms[:3], "negatives"))
    parts.append(f"<h3>Worst misses ({sum(1 for x in analysed if x.label and not x.positive)})</h3>"
                 + _case_cards(misses, "misses"))
    status_rows = "".join(
        f"<tr><td>{_esc(k)}</td><td>{n}</td><td>{e['series_by_label'][k]['positive']}</td>"
        f"<td>{e['series_by_label'][k]['negative']}</td><td>"
        + "<br>".join(f"{r['series']} × {_esc(r['reason'])}" for r in e["reasons"].get(k, [])[:8]) + "</td></tr>"
        for k, n in e["series"].items())
    parts.append("<h3>Series by status</h3><table><tr><th>status</th><th>series</th><th>positive</th>"
                 f"<th>negative</th><th>why</th></tr>{status_rows}</table>")
    return "\n".join(parts)


HOW_TO_READ = """<h2>How to read this report</h2><ul>
<li><b>AUC</b>: the chance that a random positive series scores higher than a random negative one (0.5 = chance).
Its 95 % interval comes from a stratified bootstrap; a wide interval means too few labelled series.</li>
<li><b>Sensitivity / specificity</b> are measured at the manifest's own decision, exactly as the agent would alert;
intervals are Wilson 95 %. <b>False alarms / 100</b> = alerts per 100 negative series.</li>
<li>Series the model did not analyse (skipped: not the kind it is made for; rejected: failed its input checks;
not assessable: outside its domain) are counted, with reasons, but are not in the figures: a positive among them is
a finding the agent will not alert on.</li>
<li>A suggested threshold is only a suggestion: nothing changes until someone edits the manifest.</li>
<li>Series are identified by their number in this run and a hash of their Series Instance UID; no patient data is
in this report.</li></ul>"""


def write_html(report: dict, targets: list[Target], out_dir: Path) -> Path:
    """A self-contained report.html (figures and thumbnails embedded as base64 PNG)."""
    by_key = {(t.model.name, t.code): t for t in targets}
    d = report["data"]
    table = rows(report)
    head = "".join(f"<th>{_esc(c)}</th>" for c in table[0])
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in table[1:])
    sections = [_section(e, by_key[(e["name"], e["finding"])]) for e in report["models"]]
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>edge-agent validation report</title><style>{CSS}</style></head><body><main>
<h1>Local validation report</h1>
<p class="meta">{_esc(report['date'])} · {_esc(report['tool'])} {_esc(report['tool_version'])} ·
labels from {_esc(d['labels_source'])} (fingerprint {_esc(d['labels_sha256'])})<br>
data: {d['series']} series found, {d['labelled_series']} labelled, {d['unlabelled_series']} unlabelled (not analysed),
{d['files_left_out']} files left out</p>
<table class="summary"><tr>{head}</tr>{body}</table>
{''.join(sections)}
{HOW_TO_READ}
</main></body></html>
"""
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
