#!/usr/bin/env python
"""Screenshots of the Dagster UI for docs/dagster.md (headless Chromium from Debian:
``apt-get install -y chromium``).

Starts ``dagster dev`` (scripts/devserver.py) in a temporary directory, lets ``--files``
micro-batches flow through the sensor and the automation (so the graph shows materialized
assets), then captures the global asset graph (and, with --asset-page, the rmse_curve asset's embedded
plot as the UI shows it, clicked open through the DevTools protocol) and copies the PNG the
rmse_curve asset made:

    .venv/bin/python scripts/screenshot_dagster.py --out docs/img [--files 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devserver import DagsterDev  # noqa: E402

from als_core.datasets import load_shipped  # noqa: E402
from als_core.pipeline.replay import drop_file  # noqa: E402
from als_core.sql_session import sql_session  # noqa: E402

PAGES = {"asset_graph.png": "/asset-groups"}


def screenshot(url: str, path: Path, size: str = "1400,900", budget_ms: int = 15000) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--screenshot={path}", f"--window-size={size}",
                        f"--virtual-time-budget={budget_ms}", url],
                       check=True, capture_output=True, timeout=180)


def _chromium() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    return chromium


def plot_dialog_screenshot(url: str, path: Path, timeout: float = 120.0) -> bool:
    """Open the rmse_curve asset page, click its ``plot`` metadata ("[Show Markdown]") and
    capture the dialog once the embedded PNG has loaded (Chrome DevTools protocol over a
    loopback port). Returns whether the image rendered."""
    import base64
    import json
    import urllib.request

    from websockets.sync.client import connect

    from devserver import free_port

    port = free_port()
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                    "--no-first-run", f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
                                    "--remote-debugging-address=127.0.0.1", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout
            pages = None
            while time.monotonic() < deadline and not pages:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                        pages = [p for p in json.loads(response.read()) if p.get("type") == "page"]
                except OSError:
                    time.sleep(0.5)  # polling a bounded wait for the browser
            if not pages:
                raise TimeoutError("chromium did not open its debugging port")
            with connect(pages[0]["webSocketDebuggerUrl"], max_size=None) as ws:
                counter = iter(range(1, 10**6))

                def call(method, **params):
                    msg_id = next(counter)
                    ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
                    while True:
                        reply = json.loads(ws.recv(timeout=60))
                        if reply.get("id") == msg_id:
                            return reply.get("result", {})

                def js(expression):
                    return call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

                def wait_js(expression, what, until=None, required=True):
                    end = until or deadline
                    while time.monotonic() < end:
                        if js(expression):
                            return True
                        time.sleep(0.5)  # polling a bounded wait for the page
                    if required:
                        raise TimeoutError(f"timed out waiting for {what}")
                    return False

                call("Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1, mobile=False)
                call("Page.navigate", url=url)
                wait_js("[...document.querySelectorAll('*')].some(e => e.textContent === '[Show Markdown]')",
                        "the metadata table")
                # a real mouse click at the centre of the innermost "[Show Markdown]" of the plot row
                box = js("""(() => { const row = [...document.querySelectorAll('tr')].find(r => r.innerText.trim().startsWith('plot'));
                    const hits = [...(row || document).querySelectorAll('*')].filter(e => e.textContent.trim() === '[Show Markdown]');
                    const el = hits[hits.length - 1]; el.scrollIntoView({block: 'center'});
                    const r = el.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()""")
                for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
                    call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)
                rendered = wait_js("[...document.images].some(i => i.src.startsWith('data:image/png') && i.complete "
                                   "&& i.naturalWidth > 0)", "the embedded PNG", time.monotonic() + 30, required=False)
                if not rendered:
                    print("no embedded PNG in the page; dialog text:",
                          js("[...document.querySelectorAll('[role=dialog]')].map(d => d.innerHTML.slice(0, 1500)).join('\\n')"),
                          file=sys.stderr)
                time.sleep(1)  # let the dialog finish its animation (a picture, not synchronisation)
                shot = call("Page.captureScreenshot", format="png")
                path.write_bytes(base64.b64decode(shot["data"]))
                return rendered
        finally:
            browser.terminate()
            try:
                browser.wait(timeout=20)
            except subprocess.TimeoutExpired:
                browser.kill()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--asset-page", action="store_true",
                        help="also capture the rmse_curve asset's plot as the UI shows it (rmse_curve_in_ui.png)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="streaming-als-shots-"))
    env = {"STREAMING_ALS_WAREHOUSE": str(workdir / "warehouse"), "STREAMING_ALS_LANDING": str(workdir / "landing")}
    dev = DagsterDev(workdir, env=env)
    try:
        dev.start()
        dev.wait_ready(timeout=240)
        ratings = load_shipped()
        for k in range(args.files):
            drop_file(ratings.slice(k * 1000, 1000), workdir / "landing", f"ml-latest-small-batch-{k + 1:06d}.csv")
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:  # until the plot exists for the last batch (bounded poll)
            plot = workdir / "warehouse" / "_artifacts" / "rmse_curve.png"
            if plot.exists() and (workdir / "warehouse" / "factors").exists():
                with sql_session(str(workdir / "warehouse")) as con:
                    done = con.execute("SELECT coalesce(max(version), 0) FROM evaluations WHERE kind = 'holdout'").fetchone()[0]
                if done >= args.files:
                    break
            time.sleep(1.0)
        time.sleep(8)  # let the last run's events reach the UI (a picture, not synchronisation)
        for name, page in PAGES.items():
            screenshot(dev.url + page, args.out / name)
            print(args.out / name)
        if args.asset_page:
            plot_dialog_screenshot(dev.url + "/assets/rmse_curve", args.out / "rmse_curve_in_ui.png")
            print(args.out / "rmse_curve_in_ui.png")
        shutil.copy(plot, args.out / "rmse_curve.png")  # the PNG the rmse_curve asset embeds
        print(args.out / "rmse_curve.png")
    finally:
        dev.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
