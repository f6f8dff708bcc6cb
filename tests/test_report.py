"""`fyp-core report`: a self-contained HTML page (no network, inline SVG), guardrail tiles that
turn amber/red when they should, and a render check in headless Chromium when it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from _analytics_fixtures import sim_log

from fyp_core.analytics.synthetic import DEFAULT_MODELS, ShadowSpec
from fyp_core.cli import main
from fyp_core.report import build_report


class Tiles(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tiles: dict = {}
        self._cls = None
        self._title = False

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class", "") or ""
        if cls.startswith("tile "):
            self._cls = cls.split()[1]
        self._title = cls == "t"

    def handle_data(self, data):
        if self._title and self._cls:
            self.tiles[data] = self._cls
            self._title = False


def tiles_of(page: str) -> dict:
    p = Tiles()
    p.feed(page)
    return p.tiles


@pytest.fixture(scope="module")
def good():
    return sim_log()


def test_report_is_self_contained(good, tmp_path):
    out = tmp_path / "r.html"
    assert main(["report", good.root, "--out", str(out)]) == 0
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # no network: no external src/href, no scripts, no imports
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and "@import" not in page and "url(" not in page
    assert page.count("<svg") >= 6
    t = tiles_of(page)
    for name in (
        "Live model lift",
        "Shadow readiness",
        "Exploration share",
        "Content diversity",
        "Creator Gini",
        "Fresh-item retrieval",
        "Live calibration",
    ):
        assert name in t, name
    assert t["Live model lift"] == "ok" and t["Exploration share"] == "ok"
    assert "shadow-v2: ready" in page and "shadow-v3: not ready" in page


def test_guardrails_turn_amber_and_red(tmp_path):
    bad_live = (ShadowSpec("live-bad", noise=0.7, slope=-1.0, is_shadow=False),) + tuple(
        m for m in DEFAULT_MODELS if m.is_shadow
    )
    truth = sim_log(models=bad_live, days=4, n_requests=6000, seed=11)
    assert truth.lift < 0
    t = tiles_of(build_report(truth.root, explore_setpoint=0.10))
    assert t["Live model lift"] == "bad"  # the ranker does worse than random
    assert t["Exploration share"] == "bad"  # 5% served against a 10% setpoint
    assert t["Live calibration"] in ("warn", "bad")


def test_live_calibration_without_a_shadow():
    """Live calibration is shown and no false "no ranker_scores logged" when only the live
    model is logged; the shadow OPE card says why it has nothing to show."""
    live_only = tuple(m for m in DEFAULT_MODELS if not m.is_shadow)
    truth = sim_log(models=live_only, days=3, n_requests=4000, seed=12)
    page = build_report(truth.root)
    t = tiles_of(page)
    assert t["Live calibration"] in ("ok", "warn", "bad")
    assert re.search(r'Live calibration</div><div class="v">ECE 0\.\d{3}<', page)
    assert "no ranker_scores logged" not in page
    assert "no shadow model logged" in page
    assert t["Shadow OPE"] == "na" and "no shadow candidate scores" in page
    assert "<td>live-v1</td><td>live</td>" in page  # the live model's OPE row still shows


def test_shadow_ope_card(good):
    page = build_report(good.root)
    assert tiles_of(page)["Shadow OPE"] in ("ok", "warn")
    table = page[page.index("Shadow OPE on the exploration arm") :]
    for v in ("live-v1", "shadow-v2", "shadow-v3"):
        assert f"<td>{v}</td>" in table


def test_source_date_epoch_fixes_the_generated_stamp(good, monkeypatch):
    """Two runs over one log write the same bytes when SOURCE_DATE_EPOCH is set (reproducible
    builds' convention); a value that is not whole seconds is refused with the fix."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767571200")
    page = build_report(good.root)
    assert "generated 2026-01-05 00:00 UTC" in page
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ValueError, match="SOURCE_DATE_EPOCH must be a whole number"):
        build_report(good.root)


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "x.html")]) == 2
    assert "fyp-core report" in capsys.readouterr().err


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium binary found (apt-get install -y chromium)")
    return ""


def test_renders_in_headless_chromium(good, tmp_path):
    exe = chromium()
    html_path = tmp_path / "report.html"
    main(["report", good.root, "--out", str(html_path)])
    png = tmp_path / "report.png"
    proc = subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1300,2400",
            f"--screenshot={png}",
            html_path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a page, not a blank frame
    # the DOM Chromium built has every figure and tile (it parsed the page we wrote)
    dom = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", html_path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0
    assert dom.stdout.count("<svg") == html_path.read_text().count("<svg")
    assert dom.stdout.count('class="tile ') >= 7


@pytest.fixture(scope="module")
def young50():
    """50 topics, 3 days: a log younger than the 7-day young-creator window."""
    return sim_log(n_topics=50, days=3, n_requests=6000, seed=13)


def _figure(page: str, caption: str) -> str:
    i = page.index(f"<figcaption>{caption}")
    return page[i : page.index("</figure>", i)]


def test_topic_axis_is_readable_with_50_topics(young50):
    fig = _figure(build_report(young50.root), "Causal lift per topic")
    ticks = re.findall(
        r'<text x="([\d.]+)" y="[\d.]+" text-anchor="middle" class="tick">(\d+)<', fig
    )
    assert 5 <= len(ticks) < 50  # thinned, not one label per topic
    xs = [float(x) for x, _ in ticks]
    widest = max(6.5 * len(t) for _, t in ticks)
    assert min(b - a for a, b in zip(xs, xs[1:])) >= widest  # no two labels overlap


def test_plots_fill_their_cards(good):
    page = build_report(good.root)
    assert re.search(r"svg\{[^}]*width:100%", page)
    assert not re.search(r"<svg[^>]* width=\"\d", page)  # no fixed pixel width


def test_young_creator_censoring_is_explained(young50):
    page = build_report(young50.root)
    assert "young-creator share not measurable yet" in page
    assert "first impression in the log" in page
    assert not re.search(r"creators got 100\.0%", page)


def test_every_verdict_has_a_reason_and_delta_log_loss_a_ci(good):
    page = build_report(good.root)
    tile = page[page.index("Shadow readiness") :]
    tile = tile[: tile.index("</div></div>")]
    assert "shadow-v3: not ready (" in tile and "worse than live" in tile
    assert "shadow-v2: ready (" in tile
    assert "<th>Δ 95% lo</th><th>Δ 95% hi</th>" in page


def test_position_curve_has_a_ci_band(good):
    fig = _figure(build_report(good.root), "Position bias")
    assert "95% CI" in fig and fig.count("<polygon") >= 2  # exploration and ranked bands


@pytest.mark.parametrize("width", [1400, 700])
def test_layout_in_chromium_at_two_widths(good, tmp_path, width):
    """Measured by the browser: the page never scrolls sideways (wide tables scroll in their
    own box) and every plot fills its card."""
    exe = chromium()
    page = build_report(good.root)
    probe = (
        "<script>const figs=[...document.querySelectorAll('figure')];"
        "document.body.setAttribute('data-probe', JSON.stringify({page: "
        "document.documentElement.scrollWidth, fill: Math.min(...figs.map(f => "
        "f.querySelector('svg').getBoundingClientRect().width / f.clientWidth))}));</script>"
    )
    path = tmp_path / "probe.html"
    path.write_text(page.replace("</body>", probe + "</body>"))
    dom = subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--window-size={width},2000",
            "--dump-dom",
            path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    import json

    m = re.search(r"data-probe=\"([^\"]+)\"", dom.stdout)
    assert m, dom.stdout[:500]
    probe_out = json.loads(m.group(1).replace("&quot;", '"'))
    assert probe_out["page"] <= width
    assert probe_out["fill"] > 0.9  # the svg spans its card (less the card's padding)
