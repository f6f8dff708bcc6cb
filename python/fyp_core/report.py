"""The static analytics report: ``fyp-core report LOGDIR --out report.html``.

One self-contained HTML page (inline CSS and SVG, no script, no network) built from the analytics
SQL: guardrail tiles (green / amber / red) for live model lift, live calibration, shadow readiness,
exploration share, content diversity, creator concentration and fresh-item retrieval, then the
plots behind them. Python here loops over topics, days and deciles, never over impressions.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from fyp_core import analytics

__all__ = ["Thresholds", "Tile", "build_report", "write_report"]

GREEN, AMBER, RED, GREY = "ok", "warn", "bad", "na"
PALETTE = [
    "#0969da",
    "#bc4c00",
    "#1a7f37",
    "#8250df",
    "#bf8700",
    "#0a7ea4",
    "#d63384",
    "#57606a",
    "#116329",
    "#953800",
]
NEGATIVE = "#cf222e"


@dataclass(frozen=True)
class Thresholds:
    """Guardrail levels (amber, red). Shares and rates are fractions."""

    calibration_ece: Tuple[float, float] = (0.03, 0.06)
    creator_gini: Tuple[float, float] = (0.75, 0.9)
    diversity_drop: Tuple[float, float] = (0.10, 0.25)  # relative drop of topics/user-week
    fresh_retrieval: Tuple[float, float] = (0.5, 0.25)  # below these
    late_share: Tuple[float, float] = (0.05, 0.15)


@dataclass
class Tile:
    """One headline tile of the report: a title, a value, a one-line detail and a status
    (green/amber/red/grey, shown as OK/WATCH/ALERT/INFO)."""

    title: str
    value: str
    detail: str
    status: str


def _fmt_pct(x: Optional[float], digits: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}%"


def _level(x: float, amber: float, red: float, higher_is_bad: bool = True) -> str:
    if higher_is_bad:
        return RED if x >= red else AMBER if x >= amber else GREEN
    return RED if x <= red else AMBER if x <= amber else GREEN


# ------------------------------------------------------------------------------------------ svg


def _nice_ticks(lo: float, hi: float, n: int = 5) -> List[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [round(i * step, 10) for i in range(first, last + 1)]


def _fmt_tick(v: float, pct: bool) -> str:
    if pct:
        return f"{100 * v:.0f}%" if abs(v) >= 0.1 or v == 0 else f"{100 * v:.1f}%"
    return f"{v:g}"


def _thin(labels: List[Tuple[float, str]], px_per_unit: float) -> List[Tuple[float, str]]:
    """Every k-th label, k the smallest step at which the widest label (about 6.5 px a
    character at the tick font) plus a gap fits between neighbours: 50 topics stay readable."""
    if len(labels) < 2:
        return labels
    widest = 6.5 * max(len(t) for _, t in labels) + 8
    gap = min(b[0] - a[0] for a, b in zip(labels, labels[1:])) * px_per_unit
    k = max(1, math.ceil(widest / max(gap, 1e-9)))
    return labels[::k]


class _Plot:
    """A minimal SVG x/y plot: axes, gridlines, legend; callers add series."""

    def __init__(
        self,
        x_range: Tuple[float, float],
        y_range: Tuple[float, float],
        x_labels: Optional[Sequence[Tuple[float, str]]] = None,
        y_pct: bool = False,
        x_title: str = "",
        y_title: str = "",
        width: int = 460,
        height: int = 260,
    ):
        self.w, self.h = width, height
        self.ml, self.mr, self.mt, self.mb = 56, 24, 26, 44  # mr: room for a centred last tick
        self.x0, self.x1 = x_range
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1
        ticks = _nice_ticks(*y_range)
        self.y0, self.y1 = ticks[0], ticks[-1]
        if self.y1 <= self.y0:
            self.y1 = self.y0 + 1
        self.parts: List[str] = []
        self.legend: List[Tuple[str, str]] = []
        pw, ph = self.w - self.ml - self.mr, self.h - self.mt - self.mb
        self.pw, self.ph = pw, ph
        a = self.parts
        for t in ticks:
            y = self.sy(t)
            a.append(
                f'<line x1="{self.ml}" x2="{self.ml + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            )
            a.append(
                f'<text x="{self.ml - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
                f"{_fmt_tick(t, y_pct)}</text>"
            )
        labels = list(x_labels or [(v, f"{v:g}") for v in _nice_ticks(self.x0, self.x1, 6)])
        for x, label in _thin(labels, self.pw / (self.x1 - self.x0)):
            px = self.sx(x)
            a.append(
                f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{self.mt + ph}" '
                f'y2="{self.mt + ph + 4}" class="axis"/>'
            )
            a.append(
                f'<text x="{px:.1f}" y="{self.mt + ph + 16}" text-anchor="middle" '
                f'class="tick">{html.escape(label)}</text>'
            )
        a.append(
            f'<line x1="{self.ml}" x2="{self.ml + pw}" y1="{self.mt + ph}" '
            f'y2="{self.mt + ph}" class="axis"/>'
        )
        a.append(
            f'<line x1="{self.ml}" x2="{self.ml}" y1="{self.mt}" y2="{self.mt + ph}" class="axis"/>'
        )
        if x_title:
            a.append(
                f'<text x="{self.ml + pw / 2}" y="{self.h - 6}" text-anchor="middle" '
                f'class="atitle">{html.escape(x_title)}</text>'
            )
        if y_title:
            a.append(
                f'<text transform="translate(13 {self.mt + ph / 2}) rotate(-90)" '
                f'text-anchor="middle" class="atitle">{html.escape(y_title)}</text>'
            )

    def sx(self, x: float) -> float:
        return self.ml + (x - self.x0) / (self.x1 - self.x0) * self.pw

    def sy(self, y: float) -> float:
        return self.mt + self.ph - (y - self.y0) / (self.y1 - self.y0) * self.ph

    def line(
        self,
        xs: Sequence[float],
        ys: Sequence[Optional[float]],
        color: str,
        label: str,
        dashed: bool = False,
        points: bool = True,
    ) -> None:
        pts = [
            (self.sx(x), self.sy(y)) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)
        ]
        if not pts:
            return
        d = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        dash = ' stroke-dasharray="5 4"' if dashed else ""
        self.parts.append(
            f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"{dash}/>'
        )
        if points and len(pts) <= 40:
            self.parts.extend(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.8" fill="{color}"/>' for x, y in pts
            )
        if label:
            self.legend.append((label, color))

    def band(
        self, xs: Sequence[float], lo: Sequence[float], hi: Sequence[float], color: str
    ) -> None:
        up = [f"{self.sx(x):.1f},{self.sy(y):.1f}" for x, y in zip(xs, hi)]
        down = [f"{self.sx(x):.1f},{self.sy(y):.1f}" for x, y in zip(reversed(xs), reversed(lo))]
        self.parts.append(
            f'<polygon points="{" ".join(up + down)}" fill="{color}" '
            'fill-opacity="0.15" stroke="none"/>'
        )

    def hline(self, y: float, color: str, label: str = "") -> None:
        py = self.sy(y)
        self.parts.append(
            f'<line x1="{self.ml}" x2="{self.ml + self.pw}" y1="{py:.1f}" '
            f'y2="{py:.1f}" stroke="{color}" stroke-dasharray="4 3"/>'
        )
        if label:
            self.legend.append((label, color))

    def whisker(self, x: float, y: float, lo: float, hi: float, color: str) -> None:
        px = self.sx(x)
        self.parts.append(
            f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{self.sy(lo):.1f}" '
            f'y2="{self.sy(hi):.1f}" stroke="{color}" stroke-width="2"/>'
        )
        self.parts.append(f'<circle cx="{px:.1f}" cy="{self.sy(y):.1f}" r="4" fill="{color}"/>')

    def svg(self, title: str) -> str:
        leg = []
        x = float(self.ml + 8)
        for label, color in self.legend:
            leg.append(
                f'<rect x="{x}" y="4" width="10" height="10" '
                f'fill="{color}"/><text x="{x + 14}" y="13" class="leg">'
                f"{html.escape(label)}</text>"
            )
            x += 22 + 6.5 * len(label)
        body = "".join(self.parts + leg)
        return (
            f"<figure><figcaption>{html.escape(title)}</figcaption>"
            f'<svg viewBox="0 0 {self.w} {self.h}" preserveAspectRatio="xMidYMid meet" '
            f'role="img" aria-label="{html.escape(title)}">{body}</svg></figure>'
        )


# ------------------------------------------------------------------------------------ sections


def _days_axis(days: Sequence[_dt.date]) -> Tuple[List[float], List[Tuple[float, str]]]:
    xs = [float(i) for i in range(len(days))]
    step = max(1, len(days) // 7)
    return xs, [(float(i), d.strftime("%m-%d")) for i, d in enumerate(days) if i % step == 0]


def _safe(name: str, root: str, con: Any = None, **kw: Any) -> Optional[List[dict]]:
    if name not in analytics.available_queries(root):
        return None
    return analytics.run(name, root, con, **kw).to_pylist()


def _lift_section(lift: List[dict], tiles: List[Tile], figs: List[str]) -> None:
    """The live-model lift tile (amber when a topic's lift is surely negative) and the per-topic
    lift plot with 95% CIs."""
    total = next((r for r in lift if r["topic"] is None), None)
    if total and total["lift"] is not None:
        lo, hi = total["lift_lo"], total["lift_hi"]
        st = RED if hi < 0 else AMBER if lo <= 0 else GREEN
        bad_topics = [
            r["topic"]
            for r in lift
            if r["topic"] is not None and r["lift_hi"] is not None and r["lift_hi"] < 0
        ]
        if st == GREEN and bad_topics:
            st = AMBER
        tiles.append(
            Tile(
                "Live model lift",
                f"{total['lift']:+.1%}",
                f"95% CI [{lo:+.1%}, {hi:+.1%}] vs uniform exploration; "
                f"ranked {_fmt_pct(total['ranked_rate'])} vs exploration "
                f"{_fmt_pct(total['exploration_rate'])}"
                + (f"; negative in topic(s) {bad_topics}" if bad_topics else ""),
                st,
            )
        )
        per = [r for r in lift if r["topic"] is not None and r["lift"] is not None]
        if per:
            vals = [v for r in per for v in (r["lift_lo"], r["lift_hi"]) if v is not None]
            p = _Plot(
                (-0.7, len(per) - 0.3),
                (min(0.0, *vals), max(0.0, *vals)),
                x_labels=[(i, str(r["topic"])) for i, r in enumerate(per)],
                y_pct=True,
                x_title="topic cluster",
                y_title="lift over exploration",
            )
            p.hline(0.0, "#57606a")
            p.hline(total["lift"], PALETTE[0], "all topics")
            for i, r in enumerate(per):
                c = NEGATIVE if r["lift_hi"] < 0 else PALETTE[0]
                p.whisker(i, r["lift"], r["lift_lo"], r["lift_hi"], c)
            figs.append(p.svg("Causal lift per topic (ranked vs exploration, 95% CI)"))
    else:
        tiles.append(Tile("Live model lift", "n/a", "no ranked and exploration slots", GREY))


def _shadow_tiles(
    shadow: Optional[List[dict]], calib: Optional[List[dict]], th: Thresholds
) -> List[Tile]:
    """The live-calibration and shadow-readiness tiles (from the calibration deciles when no
    shadow is logged)."""
    if not shadow:
        return _no_shadow_tiles(calib, th)
    ece = shadow[0]["live_ece"]
    tiles = [
        Tile(
            "Live calibration",
            f"ECE {ece:.3f}",
            f"{shadow[0]['live_version']}: log-loss {shadow[0]['live_log_loss']:.4f},"
            f" AUC {shadow[0]['live_auc']:.3f}",
            _level(ece, *th.calibration_ece),
        )
    ]
    verdicts = {r["shadow_version"]: r["verdict"] for r in shadow}
    ready = [v for v, x in verdicts.items() if x == "ready"]
    st = GREEN if ready else AMBER if "inconclusive" in verdicts.values() else GREY
    tiles.append(
        Tile(
            "Shadow readiness",
            f"{len(ready)}/{len(verdicts)} ready",
            "; ".join(
                f"{r['shadow_version']}: {r['verdict']} ({_verdict_reason(r)})" for r in shadow
            ),
            st,
        )
    )
    return tiles


def _exploration_section(
    daily: List[dict],
    explore_setpoint: float,
    window_hours: float,
    th: Thresholds,
    tiles: List[Tile],
    figs: List[str],
) -> None:
    """The exploration-share tile (vs its setpoint's 3-sigma band) and per-day plot, and the
    late-engagements tile."""
    slots = sum(r["slots"] for r in daily)
    share = sum(r["slots"] * (r["exploration_share"] or 0) for r in daily) / slots
    sig = math.sqrt(explore_setpoint * (1 - explore_setpoint) / slots)
    off = [
        r["day"]
        for r in daily
        if abs((r["exploration_share"] or 0) - explore_setpoint)
        > 3 * math.sqrt(explore_setpoint * (1 - explore_setpoint) / r["slots"])
    ]
    st = RED if abs(share - explore_setpoint) > 3 * sig else AMBER if off else GREEN
    tiles.append(
        Tile(
            "Exploration share",
            _fmt_pct(share, 2),
            f"setpoint {_fmt_pct(explore_setpoint, 1)} ± {_fmt_pct(3 * sig, 2)} "
            f"(3σ); {len(off)} day(s) outside their own 3σ band",
            st,
        )
    )
    days = [r["day"] for r in daily]
    xs, xl = _days_axis(days)
    band = [3 * math.sqrt(explore_setpoint * (1 - explore_setpoint) / r["slots"]) for r in daily]
    ys = [r["exploration_share"] for r in daily]
    hi = max([explore_setpoint + b for b in band] + [y or 0 for y in ys])
    lo = min([explore_setpoint - b for b in band] + [y or 0 for y in ys])
    p = _Plot(
        (0, max(xs[-1], 1)),
        (max(0.0, lo), hi),
        x_labels=xl,
        y_pct=True,
        x_title="day (UTC)",
        y_title="share of slots",
    )
    p.band(
        xs,
        [explore_setpoint - b for b in band],
        [explore_setpoint + b for b in band],
        PALETTE[2],
    )
    p.hline(explore_setpoint, PALETTE[2], "setpoint ± 3σ")
    p.line(xs, ys, PALETTE[0], "exploration")
    figs.append(p.svg("Exploration share per day"))
    late = [r["late_share"] for r in daily if r["late_share"] is not None]
    if late:
        lv = sum(late) / len(late)
        tiles.append(
            Tile(
                "Late engagements",
                _fmt_pct(lv),
                f"engaged impressions reporting after the {window_hours:g} h window",
                _level(lv, *th.late_share),
            )
        )


def _diversity_section(
    cohorts: List[dict], th: Thresholds, tiles: List[Tile], figs: List[str]
) -> None:
    """The content-diversity tile (largest drop as a cohort ages) and the per-cohort plot."""
    by: Dict[_dt.date, List[dict]] = {}
    for r in cohorts:
        by.setdefault(r["cohort_week"], []).append(r)
    drops = []
    for rs in by.values():
        rs.sort(key=lambda r: r["age_weeks"])
        if len(rs) > 1 and rs[0]["mean_topics"] > 0:
            drops.append(1 - rs[-1]["mean_topics"] / rs[0]["mean_topics"])
    worst = max(drops) if drops else 0.0
    tiles.append(
        Tile(
            "Content diversity",
            f"{cohorts[-1]['mean_topics']:.2f} topics",
            f"per user-week (newest cohort); largest drop as a cohort ages: {_fmt_pct(worst)}",
            _level(worst, *th.diversity_drop),
        )
    )
    maxage = max(r["age_weeks"] for r in cohorts)
    p = _Plot(
        (0, max(maxage, 1)),
        (0.0, max(r["mean_topics"] for r in cohorts)),
        x_labels=[(a, str(a)) for a in range(maxage + 1)],
        x_title="weeks since the cohort's first week",
        y_title="topics / user-week",
    )
    for i, (week, rs) in enumerate(sorted(by.items())):
        p.line(
            [r["age_weeks"] for r in rs],
            [r["mean_topics"] for r in rs],
            PALETTE[i % len(PALETTE)],
            f"cohort {week:%m-%d}",
        )
    figs.append(p.svg("Content diversity by cohort"))


def _fresh_section(
    fresh: List[dict], fresh_hours: float, th: Thresholds, tiles: List[Tile], figs: List[str]
) -> None:
    """The fresh-item retrieval tile and per-day plot (uncensored days only)."""
    valid = [r for r in fresh if not r["censored"] and r["retrieval_rate"] is not None]
    if not valid:
        return
    rate = sum(r["retrieval_rate"] * r["new_items"] for r in valid) / sum(
        r["new_items"] for r in valid
    )
    lag = sorted(r["lag_p50_hours"] for r in valid if r["lag_p50_hours"] is not None)
    tiles.append(
        Tile(
            "Fresh-item retrieval",
            _fmt_pct(rate),
            f"new items shown within {fresh_hours:g} h of first appearance; "
            f"median lag {lag[len(lag) // 2]:.1f} h"
            if lag
            else "",
            _level(rate, *th.fresh_retrieval, higher_is_bad=False),
        )
    )
    days = [r["day"] for r in fresh]
    xs, xl = _days_axis(days)
    p = _Plot(
        (0, max(xs[-1], 1)),
        (0.0, 1.0),
        x_labels=xl,
        y_pct=True,
        x_title="day of first appearance (UTC)",
        y_title="share",
    )
    p.line(
        xs,
        [None if r["censored"] else r["retrieval_rate"] for r in fresh],
        PALETTE[0],
        "new items retrieved",
    )
    p.line(xs, [r["fresh_slot_share"] for r in fresh], PALETTE[2], "fresh slot share")
    figs.append(p.svg("Fresh-item retrieval rate"))


def _calibration_figure(calib: List[dict]) -> str:
    """The reliability diagram: observed vs mean predicted finish rate per decile, per model."""
    models = sorted({r["model_version"] for r in calib})
    top = max(max(r["mean_pred"], r["observed"]) for r in calib)
    p = _Plot(
        (0, top),
        (0, top),
        x_title="mean predicted finish rate (decile)",
        y_title="observed finish rate",
    )
    p.line([0, top], [0, top], "#8c959f", "perfect", dashed=True, points=False)
    for i, m in enumerate(models):
        rs = [r for r in calib if r["model_version"] == m]
        p.line(
            [r["mean_pred"] for r in rs],
            [r["observed"] for r in rs],
            PALETTE[i % len(PALETTE)],
            m,
        )
    return p.svg("Calibration by decile (reliability diagram)")


def build_report(
    root: str,
    window_hours: float = 24.0,
    young_days: int = 7,
    fresh_hours: float = 24.0,
    explore_setpoint: float = 0.05,
    thresholds: Thresholds = Thresholds(),
    title: str = "fyp_core feed report",
    engine: str = "duckdb",
) -> str:
    """Run the analytics over ``root`` on ``engine`` ("duckdb" or "spark") and return the report
    as one HTML string."""
    if not analytics.available_queries(root):
        raise ValueError(f"no impressions/engagements found under {root!r}")
    th = thresholds
    con = analytics.connect(root, engine=engine)
    wh = dict(window_hours=window_hours)
    daily = _safe("daily_summary", root, con, **wh) or []
    lift = _safe("lift_by_topic", root, con, **wh) or []
    posb = _safe("position_bias", root, con, **wh) or []
    cohorts = _safe("cohort_diversity", root, con) or []
    gini = _safe("creator_gini", root, con, young_days=int(young_days)) or []
    shadow = _safe("shadow_vs_live", root, con, **wh)
    calib = _safe("shadow_calibration", root, con, **wh)
    fresh = _safe("fresh_items", root, con, fresh_hours=float(fresh_hours))
    ope_rows = _shadow_ope_rows(root, window_hours, con)  # outcomes on the same engine
    con.close()

    tiles: List[Tile] = []
    figs: List[str] = []
    _lift_section(lift, tiles, figs)
    tiles += _shadow_tiles(shadow, calib, th)
    tiles.append(_shadow_ope_tile(ope_rows))
    if daily:
        _exploration_section(daily, explore_setpoint, window_hours, th, tiles, figs)
    if posb:
        _position_section(posb, tiles, figs)
    if cohorts:
        _diversity_section(cohorts, th, tiles, figs)
    if gini:
        _gini_section(gini, young_days, th, tiles, figs)
    if fresh:
        _fresh_section(fresh, fresh_hours, th, tiles, figs)
    if calib:
        figs.append(_calibration_figure(calib))
    return _page(title, root, daily, tiles, figs, lift, shadow, ope_rows)


def _table(rows: List[dict], cols: List[Tuple[str, str, str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in cols)
    body = []
    for r in rows:
        cells = []
        for k, _, f in cols:
            v = r.get(k)
            if v is None:
                s = "all" if k == "topic" else "–"
            elif f == "pct":
                s = _fmt_pct(v, 2)
            elif f == "spct":
                s = f"{v:+.1%}"
            elif f:
                s = format(v, f)
            else:
                s = str(v)
            cells.append(f"<td>{html.escape(s)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="tbl"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;
color:#1f2328;background:#f6f8fa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px}
.meta{color:#57606a;margin-bottom:18px}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:12px}
.tile{border-radius:8px;padding:12px 14px;background:#fff;border:1px solid #d0d7de;
border-left:8px solid #8c959f}
.tile .t{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#57606a}
.tile .v{font-size:24px;font-weight:600;margin:2px 0}.tile .d{font-size:12px;color:#57606a}
.tile.ok{border-left-color:#1a7f37}.tile.warn{border-left-color:#bf8700;background:#fff8c5}
.tile.bad{border-left-color:#cf222e;background:#ffebe9}
.tile .s{float:right;font-size:11px;font-weight:600;padding:1px 6px;border-radius:9px;
background:#eaeef2}.ok .s{background:#dafbe1;color:#1a7f37}.warn .s{background:#ffe08a;
color:#7d4e00}.bad .s{background:#ffcecb;color:#a40e26}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(470px,1fr));gap:12px}
figure{margin:0;background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:8px}
figcaption{font-weight:600;margin:0 0 4px 4px}
svg{display:block;width:100%;height:auto}.grid{stroke:#eaeef2}.axis{stroke:#8c959f}
.tick{font-size:10px;fill:#57606a}.atitle{font-size:11px;fill:#57606a}.leg{font-size:10px;
fill:#1f2328}
table{border-collapse:collapse;background:#fff;font-size:13px}
.tbl{max-width:100%;overflow-x:auto}td{white-space:nowrap}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:right}th{background:#eaeef2}
"""

LABELS = {GREEN: "OK", AMBER: "WATCH", RED: "ALERT", GREY: "INFO"}


OPE_COLUMNS = [
    ("version", "model", ""),
    ("role", "role", ""),
    ("n_used", "exploration slots", ","),
    ("support_hits", "in support", ","),
    ("snips", "SNIPS", "pct"),
    ("snips_lo", "95% lo", "pct"),
    ("snips_hi", "95% hi", "pct"),
    ("ips", "IPS", "pct"),
    ("dr", "DR", "pct"),
    ("dr_lo", "DR 95% lo", "pct"),
    ("dr_hi", "DR 95% hi", "pct"),
    ("ess", "ESS", ",.0f"),
    ("explore_rate", "uniform arm", "pct"),
]


def _position_section(posb: List[dict], tiles: List[Tile], figs: List[str]) -> None:
    """The position curve per arm with its 95% CI band, and the position-bias tile."""
    top_rate = {r["arm"]: r["rate"] for r in posb if r["position"] == 0}
    p = _Plot(
        (0, max(r["position"] for r in posb)),
        (
            0.0,
            max(
                (r["rate_hi"] / top_rate[r["arm"]]) if top_rate.get(r["arm"]) else 0.0
                for r in posb
                if r["arm"] != "all"
            ),
        ),
        x_title="position (0 = top)",
        y_title="rate / rate at position 0",
    )
    for i, arm in enumerate(("exploration", "ranked", "all")):
        rs = sorted((r for r in posb if r["arm"] == arm), key=lambda r: r["position"])
        if rs and arm != "all" and rs[0]["rate"]:
            # the 95% CI of each position's rate, on the same relative scale
            top = rs[0]["rate"]
            p.band(
                [r["position"] for r in rs],
                [max(r["rate_lo"], 0.0) / top for r in rs],
                [r["rate_hi"] / top for r in rs],
                PALETTE[i],
            )
        if rs:
            p.line(
                [r["position"] for r in rs],
                [r["rel_to_top"] for r in rs],
                PALETTE[i],
                arm,
                dashed=arm == "all",
            )
    figs.append(p.svg("Position bias: engagement by position, 95% CI (exploration = causal)"))
    ex = sorted((r for r in posb if r["arm"] == "exploration"), key=lambda r: r["position"])
    if ex:
        tiles.append(
            Tile(
                "Position bias",
                f"{ex[-1]['rel_to_top']:.2f}×",
                f"exploration engagement at position {ex[-1]['position']} relative to the top slot",
                GREY,
            )
        )


def _gini_section(
    gini: List[dict], young_days: int, th: Thresholds, tiles: List[Tile], figs: List[str]
) -> None:
    """The creator-concentration tile and plot."""
    tiles.append(_gini_tile(gini, young_days, th))
    days = [r["day"] for r in gini]
    xs, xl = _days_axis(days)
    p = _Plot(
        (0, max(xs[-1], 1)),
        (0.0, 1.0),
        x_labels=xl,
        x_title="day (UTC)",
        y_title="Gini / share",
    )
    p.line(xs, [r["gini"] for r in gini], PALETTE[3], "Gini of impressions")
    p.line(
        xs,
        [None if r["censored"] else r["young_creator_share"] for r in gini],
        PALETTE[4],
        f"share to creators < {young_days} d",
    )
    figs.append(p.svg("Creator concentration over time"))


def _gini_tile(gini: List[dict], young_days: int, th: Thresholds) -> Tile:
    """Latest day's Gini; the young-creator share only from days it is measurable: a creator's
    age counts from its first impression in the log, so in the log's first ``young_days`` days
    every creator looks young (left-censored) and the share would read ~100%."""
    g = gini[-1]["gini"]
    valid = [r for r in gini if not r["censored"]]
    if valid:
        young = (
            f"young (<{young_days} d since first seen in the log) creators got "
            f"{_fmt_pct(valid[-1]['young_creator_share'])} of impressions on {valid[-1]['day']}"
        )
    else:
        young = (
            f"young-creator share not measurable yet: a creator's age counts from its first "
            f"impression in the log, so every creator looks young until the log is "
            f"{young_days} days old ({len(gini)} day(s) logged)"
        )
    return Tile("Creator Gini", f"{g:.3f}", f"latest day; {young}", _level(g, *th.creator_gini))


def _verdict_reason(r: dict) -> str:
    """Why shadow_vs_live gave its verdict (the rule in shadow_vs_live.sql)."""
    ll = f"Δ log-loss {r['ll_diff']:+.4f} [{r['ll_diff_lo']:+.4f}, {r['ll_diff_hi']:+.4f}]"
    if r["verdict"] == "not ready":
        why = []
        if r["ll_diff_lo"] > 0:
            why.append(f"{ll}: worse than live")
        if r["shadow_ece"] > r["live_ece"] + 0.02:
            why.append(f"ECE {r['shadow_ece']:.3f} > live {r['live_ece']:.3f} + 0.02")
        return "; ".join(why)
    if r["verdict"] == "ready":
        return f"{ll}: better than live, AUC and ECE within tolerance"
    why = []
    if r["ll_diff_hi"] >= 0:
        why.append(f"{ll} includes 0")
    if r["shadow_auc"] < r["live_auc"] - 0.005:
        why.append(f"AUC {r['shadow_auc']:.3f} < live {r['live_auc']:.3f} - 0.005")
    if r["shadow_ece"] > r["live_ece"] + 0.01:
        why.append(f"ECE {r['shadow_ece']:.3f} > live {r['live_ece']:.3f} + 0.01")
    return "; ".join(why)


def _no_shadow_tiles(calib: Optional[List[dict]], th: Thresholds) -> List[Tile]:
    """Live calibration from the calibration deciles when no shadow is logged (ECE = the
    row-weighted mean of |mean prediction - observed| over deciles), and why no readiness."""
    live = [r for r in calib or [] if not r["is_shadow"]]
    if not live:
        why = "no ranker_scores logged" if not calib else "no live-model ranker_scores logged"
        return [
            Tile("Live calibration", "n/a", why, GREY),
            Tile("Shadow readiness", "n/a", why, GREY),
        ]
    n = sum(r["n"] for r in live)
    ece = sum(r["n"] * abs(r["mean_pred"] - r["observed"]) for r in live) / n
    version = live[0]["model_version"]
    return [
        Tile(
            "Live calibration",
            f"ECE {ece:.3f}",
            f"{version}: pred_finish vs finish rate over {n:,} impressions in 10 deciles",
            _level(ece, *th.calibration_ece),
        ),
        Tile(
            "Shadow readiness",
            "n/a",
            "no shadow model logged (ranker_scores holds only the live model): add one with "
            "FeedPipeline.add_shadow",
            GREY,
        ),
    ]


def _shadow_ope_rows(root: str, window_hours: float, con: Any = None) -> List[dict]:
    """One row per model with logged candidate scores (the served model, then each shadow):
    its softmax ranking replayed on the candidates, valued on the exploration slots."""
    from fyp_core.analytics import ope_log

    req = (
        analytics.read_table(root, "requests", ["shadow_versions"])
        if _has_shadow_cols(root)
        else None
    )
    versions: List[Optional[str]] = [None]
    if req is not None and req.num_rows:
        flat = req.column("shadow_versions").combine_chunks().flatten().to_pylist()
        versions += sorted(set(flat))
    rows: List[dict] = []
    if "impression_outcomes" not in analytics.available_queries(root):
        return rows
    out = analytics.impression_outcomes(root, window_hours=window_hours, con=con)
    for v in versions:
        try:
            res = ope_log.shadow_ope(root, v, window_hours=window_hours, outcomes=out)
        except (ValueError, KeyError, OSError):
            res = None
        if res is None:
            continue
        rows.append(
            {
                "version": res.version,
                "role": "live" if v is None else "shadow",
                "n_used": res.n_used,
                "support_hits": res.support_hits,
                "snips": res.snips.value,
                "snips_lo": res.snips.ci[0],
                "snips_hi": res.snips.ci[1],
                "ips": res.ips.value,
                "dr": res.dr.value,
                "dr_lo": res.dr.ci[0],
                "dr_hi": res.dr.ci[1],
                "ess": res.snips.ess,
                "explore_rate": res.explore_rate,
            }
        )
    return rows


def _has_shadow_cols(root: str) -> bool:
    import pyarrow.parquet as pq

    files = analytics.table_files(root, "requests")
    return bool(files) and "shadow_versions" in pq.read_schema(files[0]).names


def _shadow_ope_tile(rows: List[dict]) -> Tile:
    live = next((r for r in rows if r["role"] == "live"), None)
    shadows = [r for r in rows if r["role"] == "shadow"]
    if not shadows:
        why = (
            "no shadow candidate scores in the requests log (add a shadow with "
            "FeedPipeline.add_shadow; it scores every candidate of a logged request)"
            if rows
            else "no requests rows with candidate scores, or no exploration slots"
        )
        return Tile("Shadow OPE", "n/a", why, GREY)
    best = max(shadows, key=lambda r: r["snips"])
    ref = f"; live {_fmt_pct(live['snips'])}" if live else ""
    above = live is not None and best["snips_lo"] > live["snips"]
    return Tile(
        "Shadow OPE",
        f"{best['version']} {_fmt_pct(best['snips'])}",
        f"SNIPS finish rate of its softmax ranking on {best['n_used']:,} exploration slots, 95% CI "
        f"[{_fmt_pct(best['snips_lo'])}, {_fmt_pct(best['snips_hi'])}], ESS "
        f"{best['ess']:,.0f}{ref}"
        + ("" if above else "; CI overlaps live: not distinguishable yet"),
        GREEN if above else AMBER,
    )


def _generated_at() -> _dt.datetime:
    """The report's "generated" stamp: now, or ``SOURCE_DATE_EPOCH`` (seconds since the epoch, the
    reproducible-builds convention) when set, so two runs over one log write identical files."""
    fixed = os.environ.get("SOURCE_DATE_EPOCH")
    if fixed is None:
        return _dt.datetime.now(_dt.timezone.utc)
    if not fixed.strip().isdigit():
        raise ValueError(
            f"SOURCE_DATE_EPOCH must be a whole number of seconds since 1970-01-01, got {fixed!r}"
        )
    return _dt.datetime.fromtimestamp(int(fixed), _dt.timezone.utc)


def _page(
    title: str,
    root: str,
    daily: List[dict],
    tiles: List[Tile],
    figs: List[str],
    lift: List[dict],
    shadow: Optional[List[dict]],
    ope_rows: Optional[List[dict]] = None,
) -> str:
    span = f"{daily[0]['day']} to {daily[-1]['day']}" if daily else "no days"
    slots = sum(r["slots"] for r in daily)
    rows = sum(r["rows_logged"] for r in daily)
    tile_html = "".join(
        f'<div class="tile {t.status}"><span class="s">{LABELS[t.status]}</span>'
        f'<div class="t">{html.escape(t.title)}</div><div class="v">{html.escape(t.value)}</div>'
        f'<div class="d">{html.escape(t.detail)}</div></div>'
        for t in tiles
    )
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<div class="meta">{html.escape(root)} · {span} · {rows:,} impressions logged '
        f"({slots:,.0f} slots after sampling reweight) · generated "
        f"{_generated_at():%Y-%m-%d %H:%M} UTC</div>",
        f'<div class="tiles">{tile_html}</div>',
        "<h2>Plots</h2>",
        f'<div class="figs">{"".join(figs)}</div>',
    ]
    if lift:
        parts += [
            "<h2>Lift by topic</h2>",
            _table(
                lift,
                [
                    ("topic", "topic", ""),
                    ("ranked_rows", "ranked rows", ","),
                    ("ranked_rate", "ranked rate", "pct"),
                    ("exploration_rows", "exploration rows", ","),
                    ("exploration_rate", "exploration rate", "pct"),
                    ("lift", "lift", "spct"),
                    ("lift_lo", "95% lo", "spct"),
                    ("lift_hi", "95% hi", "spct"),
                ],
            ),
        ]
    if shadow:
        parts += [
            "<h2>Shadow vs live (identical impressions)</h2>",
            _table(
                shadow,
                [
                    ("shadow_version", "shadow", ""),
                    ("live_version", "live", ""),
                    ("n", "n", ","),
                    ("shadow_log_loss", "log-loss shadow", ".4f"),
                    ("live_log_loss", "log-loss live", ".4f"),
                    ("shadow_auc", "AUC shadow", ".3f"),
                    ("live_auc", "AUC live", ".3f"),
                    ("shadow_ece", "ECE shadow", ".3f"),
                    ("live_ece", "ECE live", ".3f"),
                    ("ll_diff", "Δ log-loss", "+.4f"),
                    ("ll_diff_lo", "Δ 95% lo", "+.4f"),
                    ("ll_diff_hi", "Δ 95% hi", "+.4f"),
                    ("verdict", "verdict", ""),
                ],
            ),
        ]
    if ope_rows:
        parts += [
            "<h2>Shadow OPE on the exploration arm (docs/ope.md)</h2>",
            _table(ope_rows, OPE_COLUMNS),
        ]
    parts.append("</body></html>")
    return "".join(parts)


def write_report(root: str, out: str, **kw: object) -> str:
    """Build the report over ``root`` and write it to ``out``; returns the path."""
    text = build_report(root, **kw)  # type: ignore[arg-type]
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    return out


# ------------------------------------------------------------------------------------ the loop


def _ci(x: Optional[dict], key: str = "value") -> Tuple[Optional[float], float, float]:
    if not x:
        return None, math.nan, math.nan
    return x[key], x["ci"][0], x["ci"][1]


def _loop_value_figure(
    records: Sequence[dict], xs: List[float], labels: List[Tuple[float, str]]
) -> str:
    """The live policy's true value beside the candidate's OPE estimate (95% CI) per day."""
    est = [_ci(r["estimated_value"]) for r in records]
    vals = [r["true_value"] for r in records] + [v for e in est for v in e[1:] if math.isfinite(v)]
    p = _Plot(
        (xs[0], xs[-1]) if xs else (0, 1),
        (min(vals, default=0), max(vals, default=1)),
        labels,
        x_title="day",
        y_title="finish rate",
    )
    p.line(xs, [r["true_value"] for r in records], PALETTE[0], "live, true value")
    p.line(xs, [e[0] for e in est], PALETTE[1], "candidate, OPE (SNIPS)", dashed=True)
    for x, (v, lo, hi) in zip(xs, est):
        if v is not None:
            p.whisker(x, v, lo, hi, PALETTE[1])
    return p.svg("Live true value and candidate OPE estimate (95% CI)")


def _loop_lift_figure(
    records: Sequence[dict], xs: List[float], labels: List[Tuple[float, str]]
) -> str:
    """The candidate's lift over live on the exploration arm (95% CI) per day."""
    lift = [_ci(r["lift"]) for r in records]
    ls = [v for e in lift for v in e if v is not None and math.isfinite(v)]
    q = _Plot(
        (xs[0], xs[-1]) if xs else (0, 1),
        (min(ls + [0.0]), max(ls + [0.0])),
        labels,
        x_title="day",
        y_title="lift over live",
    )
    q.hline(0.0, "#8c959f")
    for x, (v, lo, hi) in zip(xs, lift):
        if v is not None:
            q.whisker(x, v, lo, hi, PALETTE[2])
    return q.svg("Candidate lift over live on the exploration arm (95% CI)")


def _loop_diversity_figure(
    records: Sequence[dict], xs: List[float], labels: List[Tuple[float, str]]
) -> str:
    """Topic entropy, creator Gini, feeds over the creator cap and fresh reach per day."""
    d = _Plot(
        (xs[0], xs[-1]) if xs else (0, 1),
        (0.0, max([r["topic_entropy"] for r in records] + [1.0])),
        labels,
        x_title="day",
    )
    d.line(xs, [r["topic_entropy"] for r in records], PALETTE[3], "topic entropy (nats)")
    d.line(xs, [r["creator_gini"] for r in records], PALETTE[4], "creator Gini")
    d.line(
        xs,
        [r.get("creator_overflow") for r in records],
        PALETTE[6],
        "feeds over the creator cap",
    )
    d.line(xs, [r["fresh_reach"] for r in records], PALETTE[5], "fresh reach")
    return d.svg("Diversity and fresh reach")


def _loop_table(records: Sequence[dict]) -> str:
    """One table line per day: versions, values, diversity, the decision and its reasons."""
    rows = [
        {
            **r,
            "reasons": "; ".join(r["reasons"]),
            "creator_overflow": r.get("creator_overflow"),
            "lift_v": None if r["lift"] is None else r["lift"]["value"],
            "est_v": None if r["estimated_value"] is None else r["estimated_value"]["value"],
            "retrieval_v": (r.get("retrieval") or {}).get("version"),
            "retrieval_d": (r.get("retrieval") or {}).get("decision"),
        }
        for r in records
    ]
    return _table(
        rows,
        [
            ("day", "day", ""),
            ("live_version", "live", ""),
            ("candidate_version", "candidate", ""),
            ("true_value", "true value", ".4f"),
            ("est_v", "OPE estimate", ".4f"),
            ("lift_v", "lift", "+.4f"),
            ("topic_entropy", "entropy", ".3f"),
            ("creator_gini", "Gini", ".3f"),
            ("creator_overflow", "feeds over creator cap", ".3f"),
            ("fresh_reach", "fresh reach", ".2f"),
            ("decision", "decision", ""),
            ("reasons", "reasons", ""),
            ("retrieval_v", "retrieval served", ""),
            ("retrieval_d", "retrieval candidate", ""),
        ],
    )


def loop_page(records: Sequence[dict], title: str = "fyp-core loop") -> str:
    """One HTML page of the learning loop's daily records (``fyp_core.loop.run``): the live
    policy's true value beside the candidate's OPE estimate, the lift with its CI, diversity,
    and one table line per day with the decision and its reasons."""
    xs = [float(r["day"]) for r in records]
    labels = [(x, f"{x:g}") for x in xs]
    figs = [
        _loop_value_figure(records, xs, labels),
        _loop_lift_figure(records, xs, labels),
        _loop_diversity_figure(records, xs, labels),
    ]
    table = _loop_table(records)
    return "".join(
        [
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f'<div class="figs">{"".join(figs)}</div>',
            "<h2>One line per day</h2>",
            table,
            "</body></html>",
        ]
    )


def write_loop_report(records: Sequence[dict], out: str) -> str:
    """Writes ``loop_page(records)`` to ``out``; returns the path."""
    with open(out, "w", encoding="utf-8") as f:
        f.write(loop_page(records))
    return out
