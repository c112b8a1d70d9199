"""`align report` in a real browser: headless Chromium (Debian's `chromium` package, which
`.ci/run` installs) opens the report of a short real PPO run on the built-in base, and the PPO
parity study's report. The page must load without a console error or an uncaught exception,
every plot must have drawn marks (its `data-drawn` count and SVG shapes) at a real size, and a
full-page screenshot is saved. A control page with a deliberate error proves the check sees one.

Skipped, with the reason, where no chromium binary is found (`apt-get install chromium`, or
point $CHROMIUM at one). Driven by scripts/tools/render_report.py (the DevTools protocol over a pipe:
standard library only).

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_report_browser.py` (about 10 s).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts" / "tools"))
import render_report  # noqa: E402

pytestmark = pytest.mark.skipif(
    render_report.find_chromium() is None,
    reason="chromium not installed: `apt-get install chromium` (.ci/run does) or set $CHROMIUM; "
           "the browser check of `align report` needs a real browser",
)


def check_page(html: Path, screenshot: Path, min_plots: int) -> dict:
    result = render_report.render(html, screenshot)
    assert result["errors"] == [], result["errors"]
    assert len(result["plots"]) >= min_plots
    for plot in result["plots"]:
        assert plot["drawn"] > 0 and plot["shapes"] > 0, plot  # something drawn in every plot
        assert plot["width"] > 300 and plot["height"] > 100, plot
    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    return result


def test_report_of_a_short_ppo_run_renders_in_chromium(tmp_path):
    from align.cli import _train
    from align.report import write_report

    out = tmp_path / "ppo"
    _train(types.SimpleNamespace(recipe=str(REPO / "recipes" / "ppo_lora.yaml"), overrides=[
        "train.steps=3", "train.eval_every=1", "eval.num_prompts=16", "ppo.rollout_batch_size=16", "ppo.minibatch_size=8",
        "ppo.ppo_epochs=1", "tracking.wandb=false", f"output_dir={out}"]))
    page = write_report([out], tmp_path / "ppo.html")
    result = check_page(page, tmp_path / "ppo.png", min_plots=6)  # 5 learning curves + memory + time
    assert result["title"] == "align report: ppo"


def test_report_of_the_ppo_parity_study_renders_in_chromium(tmp_path):
    from align.report import write_report

    page = write_report([REPO / "results" / "parity_ppo"], tmp_path / "parity_ppo.html")
    check_page(page, tmp_path / "parity_ppo.png", min_plots=2)


def test_the_check_sees_errors(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<html><body><div class="plot"></div><script>console.error("boom"); null.x;</script></body></html>')
    result = render_report.render(page)
    assert any("boom" in e for e in result["errors"]) and any(e.startswith("exception") for e in result["errors"])
    assert result["plots"][0]["drawn"] == 0
