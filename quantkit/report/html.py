"""The HTML report of a whole run: one page, plots embedded, no network needed to view it.

Plots (matplotlib, rendered to PNG and inlined): size against mean KLD for every target,
per-domain perplexity of base and targets, and mean KLD by position in the window (where the
runtime exposes per-token values). Below them, the table of every target, domain and
gate from the same `ValidationReport`s that `validation.json` holds, then each check's own plots and
table (quantkit.report.sections).
"""

from __future__ import annotations

import html
from pathlib import Path

from quantkit.report.model import Section, ValidationReport
from quantkit.report.plots import outside_legend as _outside_legend
from quantkit.report.plots import png as _png
from quantkit.report.plots import pyplot as _pyplot
from quantkit.report.sections import check_plots, run_sections


def size_vs_kld_plot(reports: list[ValidationReport]) -> str | None:
    if not any(t.scores for r in reports for t in r.targets):
        return None  # nothing was scored: no points to place
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in reports:
        for t in (t for t in r.targets if t.scores):
            kld = max(s.kld_mean for s in t.scores)
            ax.scatter(t.size_bytes / 1e6, kld, color="tab:green" if t.passed else "tab:red", s=40, zorder=3)
            ax.annotate(t.target.split("/")[-1], (t.size_bytes / 1e6, kld), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel("mean KL divergence vs base (worst domain)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.set_title("Size vs. fidelity (green: all gates pass, red: a gate fails)")
    out = _png(fig)
    plt.close(fig)
    return out


def domain_ppl_plot(reports: list[ValidationReport]) -> str | None:
    """Per-domain perplexity bars; None when no target was scored (every runtime unavailable)."""
    targets = [t for r in reports for t in r.targets if t.scores]
    if not targets:
        return None
    plt = _pyplot()
    domains = sorted({s.domain for t in targets for s in t.scores})
    # each runtime scores its own windows (llama.cpp: second half of each chunk), so each has its base bar
    runtimes = sorted({s.runtime for t in targets for s in t.scores})
    slots = len(runtimes) + len(targets)
    fig, ax = plt.subplots(figsize=(max(7, 0.6 * slots * len(domains)), 4.2))
    width = 0.8 / slots
    for di, domain in enumerate(domains):
        for ri, runtime in enumerate(runtimes):
            base = next((s.base_ppl for t in targets for s in t.scores if s.domain == domain and s.runtime == runtime), None)
            if base is not None:
                ax.bar(di + ri * width, base, width, color="0.6" if ri == 0 else "0.8", hatch=None if ri == 0 else "//",
                       label=f"base ({runtime} windows)" if di == 0 else None)
        for ti, t in enumerate(targets):
            s = next((s for s in t.scores if s.domain == domain), None)
            if s:
                # one colour per target across domains
                first_domain = domains.index(t.scores[0].domain) == di
                ax.bar(di + (len(runtimes) + ti) * width, s.ppl, width, color=f"C{ti % 10}",
                       label=t.target.split("/")[-1] if first_domain else None)
    ax.set_xticks([i + 0.4 for i in range(len(domains))], domains)
    ax.set_ylabel("perplexity (held-out)")
    ax.set_title("Per-domain perplexity: base (grey, per runtime) and each target")
    _outside_legend(ax, fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    out = _png(fig)
    plt.close(fig)
    return out


def kld_by_position_plot(reports: list[ValidationReport]) -> str | None:
    """Mean KLD by position of the predicting token in its window, averaged over domains; only
    runtimes that expose per-token values (transformers) have it."""
    plt = _pyplot()
    lines = []
    for t in (t for r in reports for t in r.targets):
        curves = [s.kld_by_position for s in t.scores if s.kld_by_position]
        if not curves:
            continue
        bins = len(curves[0])
        ys = []
        for b in range(bins):
            vals = [c[b] for c in curves if c[b] is not None]
            ys.append(sum(vals) / len(vals) if vals else float("nan"))
        lines.append((t.target.split("/")[-1], t.scores[0].context, ys))
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (name, context, ys) in enumerate(lines):
        xs = [(b + 0.5) * context / len(ys) for b in range(len(ys))]
        ax.plot(xs, ys, marker="o", color=f"C{i % 10}", label=name)
    ax.set_xlabel("position in the evaluation window (tokens)")
    ax.set_ylabel("mean KL divergence vs base")
    ax.set_yscale("log")
    ax.set_title("KLD by position (transformers runtime; bins of 1/8 context)")
    _outside_legend(ax, fontsize=7)
    ax.grid(True, alpha=0.3)
    out = _png(fig)
    plt.close(fig)
    return out


def render_html(reports: list[ValidationReport], title: str) -> str:
    rows = []
    for r in reports:
        for t in r.targets:
            gates = "<br>".join(
                f"<span class={'ok' if g.passed else 'bad'}>{'✓' if g.passed else '✗'} {html.escape(g.gate)} "
                f"{'-' if g.value is None else f'{g.value:.4g}'} / {g.threshold}</span>"
                for g in t.gates
            )
            if t.runtime_unavailable:
                rows.append(f"<tr><td class=l>{html.escape(t.target)}</td><td>{t.size_bytes / 1e6:.1f}</td>"
                            f"<td class=l colspan=8>skipped: {html.escape(t.runtime_unavailable)}</td>"
                            f"<td class=l>{gates}</td></tr>")
            for i, s in enumerate(t.scores):
                rows.append(
                    "<tr>"
                    + (
                        f"<td class=l rowspan={len(t.scores)}>{html.escape(t.target)}</td>"
                        f"<td rowspan={len(t.scores)}>{t.size_bytes / 1e6:.1f}</td>"
                        if i == 0
                        else ""
                    )
                    + f"<td class=l>{html.escape(s.domain)}</td><td>{s.n_tokens}</td>"
                    f"<td>{s.base_ppl:.3f}</td><td>{s.ppl:.3f}</td>"
                    f"<td>{s.ppl_increase:+.1%}</td><td>{s.kld_mean:.4f}</td><td>{s.kld_p99:.4f}</td><td>{s.top1_agreement:.1%}</td>"
                    + (f"<td class=l rowspan={len(t.scores)}>{gates}</td>" if i == 0 else "")
                    + "</tr>"
                )
    passed = all(r.passed for r in reports)
    verdict_class, verdict_text = ("pass", "all gates pass") if passed else ("fail", "a gate fails")
    by_position = kld_by_position_plot(reports)
    plots = [(alt, src) for alt, src in (("size vs KLD", size_vs_kld_plot(reports)),
                                          ("per-domain perplexity", domain_ppl_plot(reports)),
                                          ("KLD by position", by_position)) if src]
    plots += check_plots(reports)
    sections = "".join(section_html(s) for s in run_sections(reports))
    images = "".join(f'<img alt="{alt}" src="{src}">' for alt, src in plots)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1200px; }}
h1 {{ font-size: 1.5rem; }} .verdict {{ font-weight: bold; padding: .2rem .6rem; border-radius: 4px; }}
.pass {{ background: #d9f2dd; }} .fail {{ background: #f8d7da; }}
table {{ border-collapse: collapse; width: 100%; font-size: .85rem; margin-top: 1rem; }}
th, td {{ border: 1px solid #ccc; padding: .3rem .5rem; text-align: right; vertical-align: top; }}
th {{ background: #f3f3f3; }} .l {{ text-align: left; }}
.ok {{ color: #1a7f37; }} .bad {{ color: #c62828; font-weight: bold; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 1rem; }} .plots img {{ max-width: 100%; border: 1px solid #eee; }}
</style></head><body>
<h1>{html.escape(title)} <span class="verdict {verdict_class}">{verdict_text}</span></h1>
<p>Each target evaluated against its unquantized base on held-out text with the runtime that serves it
(transformers for compressed-tensors, llama.cpp for GGUF).</p>
<div class="plots">{images}</div>
<table><thead><tr><th>target</th><th>MB</th><th>domain</th><th>tokens</th><th>base ppl</th><th>ppl</th><th>Δppl</th>
<th>mean KLD</th><th>p99 KLD</th><th>top-1</th><th>gates (value / threshold)</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
{sections}
</body></html>
"""


def section_html(section: Section) -> str:
    """A check's table: its title, its note, a row per target."""
    def cell(tag: str, text: str, numeric: bool) -> str:
        return f"<{tag}>{html.escape(text)}</{tag}>" if numeric else f"<{tag} class=l>{html.escape(text)}</{tag}>"

    numeric = [False] + [c.numeric for c in section.columns]
    head = "".join(cell("th", h, n) for h, n in zip(["target", *(c.header for c in section.columns)], numeric))
    body = "".join("<tr>" + "".join(cell("td", v, n) for v, n in zip(row, numeric)) + "</tr>" for row in section.rows)
    note = f"<p>{html.escape(section.note)}.</p>" if section.note else ""
    return (f"<h2>{html.escape(section.title)}</h2>{note}"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def write_run_report(reports: list[ValidationReport], folder: Path) -> Path:
    path = Path(folder) / "validation.html"
    path.write_text(render_html(reports, f"quantkit validate: {Path(folder).resolve().name}"), encoding="utf-8")
    return path
