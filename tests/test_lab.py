"""The chapters in JupyterLab, as a reader runs them: headless Chromium opens each chapter in a real JupyterLab
server, runs all its cells at the smoke profile, and checks the rendered prose.

What a reader must see after "Run All": every number the prose quotes (MyST inline expressions, rendered by
jupyterlab-myst) with the value the kernel computed, figure references resolved to "Figure N", every figure image
loaded, no raw MyST role or directive text, and no standard-error strips left by progress bars. Opening a chapter
must not change its cells (jupyterlab-myst does store its inline results in the cells' metadata). The chapters are copied to a temporary folder first, so that JupyterLab's autosave can
never write outputs into the repository. A screenshot of each chapter goes to ``_build/screenshots/lab-*.png``.
"""

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.browser import chromium, chromium_path

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "_build" / "screenshots"
CHAPTERS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
RAW_MARKUP = re.compile(r"\{(eval|numref|cite:[tp]|figure|glue[^}]*|ref|doc)\}|```")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a copy of notebooks/ (and book/, which the chapters link to), at the smoke profile."""
    chromium_path()  # skip (or fail in CI) before starting a server when there is no browser
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns("figures", ".ipynb_*"))
    shutil.copytree(ROOT / "book", root / "book", ignore=shutil.ignore_patterns("_ext", "_static"))
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ("KDNB_PROFILE", "KDNB_CLAIMS_DIR", "KDNB_FIGURES_DIR", "MPLBACKEND")}
    settings = root / "settings"
    # Every cell in the page (no windowing), so that the whole chapter can be read off the DOM; no news pop-up.
    for plugin, values in {"notebook-extension/tracker": {"windowingMode": "none"},
                           "apputils-extension/notification": {"fetchNews": "false"}}.items():
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env.update(KDNB_PROFILE="smoke", KDNB_CLAIMS_DIR=str(root / "claims"), JUPYTER_CONFIG_DIR=str(root / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(root / "workspaces"))
    command = [str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", f"--port={port}",
               f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = open(root / "lab.log", "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                assert server.poll() is None, (root / "lab.log").read_text()
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start:\n" + (root / "lab.log").read_text())
        yield {"url": url, "token": token, "root": root}
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


KERNEL_EVAL = """async (code) => {
  const panel = window.jupyterapp.shell.currentWidget;
  const future = panel.sessionContext.session.kernel.requestExecute({code, store_history: false});
  let text = "";
  future.onIOPub = (msg) => { if (msg.header.msg_type === "stream") { text += msg.content.text; } };
  await future.done;
  return text;
}"""


def wait_for_run(page, n_code_cells: int, timeout_s: float = 300):
    """Wait until every code cell has an execution count and the kernel is idle; fail on an error output."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        state = page.evaluate("""() => {
          const panel = window.jupyterapp.shell.currentWidget;
          const cells = panel.content.widgets.filter(c => c.model.type === "code");
          return {done: cells.filter(c => c.model.executionCount !== null).length,
                  status: panel.sessionContext.session?.kernel?.status,
                  errors: panel.node.querySelectorAll('[data-mime-type="application/vnd.jupyter.error"]').length};
        }""")
        assert state["errors"] == 0, "a cell raised an error in JupyterLab"
        if state["done"] == n_code_cells and state["status"] == "idle":
            return
        time.sleep(1)
    pytest.fail(f"the chapter did not finish within {timeout_s} s: {state}")


@pytest.mark.book
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_renders_in_jupyterlab_after_run_all(lab, chapter):
    notebook = json.loads((ROOT / "notebooks" / chapter).read_text())
    markdown = "\n".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "markdown")
    quoted = sorted(set(re.findall(r"\{eval\}`prose\.(\w+)`", markdown)))
    n_figures = len(re.findall(r"```\{figure\}", markdown))
    n_code = sum(c["cell_type"] == "code" for c in notebook["cells"])
    assert quoted and n_figures, f"{chapter}: expected quoted numbers and figures in the prose"

    with chromium(width=1280, height=1000) as page:
        # A workspace of its own, so that JupyterLab does not reopen the chapters of earlier tests beside this one.
        workspace = Path(chapter).stem.replace("_", "-")
        page.goto(f"{lab['url']}/lab/workspaces/{workspace}/tree/notebooks/{chapter}?reset&token={lab['token']}")
        page.wait_for_function(f"""() => {{
          const panel = window.jupyterapp?.shell.currentWidget;
          return panel?.context?.path === "notebooks/{chapter}"
                 && panel.node.querySelector(".jp-MarkdownCell .myst") !== null
                 && panel.sessionContext?.session?.kernel?.status === "idle";
        }}""", timeout=120_000)
        open_paths = page.evaluate("() => Array.from(window.jupyterapp.shell.widgets('main')).map(w => w.context?.path)")
        assert open_paths == [f"notebooks/{chapter}"], f"other documents are open beside the chapter: {open_paths}"
        # jupyterlab-myst evaluates the prose's inline expressions as soon as a kernel is up and stores the results in
        # the cells' metadata ("user_expressions"), which JupyterLab counts as a modification. Nothing else may change:
        # the cells, their sources and their tags are the file's.
        model = page.evaluate("() => window.jupyterapp.shell.currentWidget.context.model.toJSON()")
        opened = [("".join(c["source"]) if isinstance(c["source"], list) else c["source"],
                   {k: v for k, v in c["metadata"].items() if k not in ("user_expressions", "trusted")})
                  for c in model["cells"]]
        stored = [("".join(c["source"]), c["metadata"]) for c in notebook["cells"]]
        assert opened == stored, f"{chapter}: opening the chapter changed its cells"

        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        wait_for_run(page, n_code)
        values = json.loads(page.evaluate(KERNEL_EVAL, "import json; print(json.dumps({k: repr(getattr(prose, k)) "
                                                       f"for k in {quoted!r}}}))"))
        # jupyterlab-myst renders a markdown cell into a ".myst" widget; the cell's hidden editor holds the source.
        # Everything is read off this chapter's panel only.
        panel = "window.jupyterapp.shell.currentWidget.node"
        # The markdown cells re-render after their expressions return, and their figures reload after the run has
        # rewritten them, later on a busy machine: wait for both (up to a minute) rather than a fixed time.
        deadline = time.time() + 60
        while True:
            rendered = page.evaluate(f"""() => Array.from({panel}.querySelectorAll('.jp-MarkdownCell .myst'))
                                         .map(e => e.textContent).join('\\n')""")
            images = page.evaluate(f"""() => Array.from({panel}.querySelectorAll('.jp-MarkdownCell img'))
                                       .map(i => ({{src: i.getAttribute('src'), w: i.naturalWidth}}))""")
            ready = (all(text in rendered for text in values.values())
                     and len(images) >= n_figures and all(i["w"] > 0 for i in images))
            if ready or time.time() > deadline:
                break
            page.wait_for_timeout(1000)
        stderr = page.evaluate(f"""() => {panel}.querySelectorAll(
                                   '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').length""")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"lab-{Path(chapter).stem}.png"), full_page=False)
        # The next chapter gets the CPUs to itself.
        page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")

    raw = sorted(set(m.group(0) for m in RAW_MARKUP.finditer(rendered)))
    assert not raw, f"{chapter}: raw MyST markup left in the rendered prose: {raw}"
    missing = {name: text for name, text in values.items() if text not in rendered}
    assert not missing, f"{chapter}: quoted numbers not shown in the prose: {missing}"
    # jupyterlab-myst writes "Figure&nbsp;3": \s matches the no-break space.
    assert re.search(r"\bFigure\s\d+\b", rendered), f"{chapter}: no resolved figure reference"
    assert len(images) >= n_figures and all(i["w"] > 0 for i in images), f"{chapter}: figures not loaded: {images}"
    assert stderr == 0, f"{chapter}: {stderr} standard-error outputs (progress bars?) left in the notebook"
