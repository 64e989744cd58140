"""kdnb.core.progress: bars are drawn in a Jupyter kernel or a terminal, never into a file or a log, unless forced;
fit and sweep follow it."""

import io
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from tqdm import notebook, std

from kdnb.core import progress
from kdnb.core.progress import in_jupyter_kernel, progress_bar, progress_enabled, stderr_is_terminal

ROOT = Path(__file__).resolve().parents[2]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


class _Closed:
    def isatty(self):
        raise ValueError("I/O operation on closed file")


def _fake_ipython(monkeypatch, shell_class_name):
    shell_class = type(shell_class_name, (), {})
    module = types.ModuleType("IPython")
    module.get_ipython = lambda: shell_class()
    monkeypatch.setitem(sys.modules, "IPython", module)
    return shell_class


def test_terminal_detection(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert stderr_is_terminal()
    for stream in (io.StringIO(), _Closed(), None, object()):
        monkeypatch.setattr(sys, "stderr", stream)
        assert not stderr_is_terminal()


def test_jupyter_kernel_detection(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not in_jupyter_kernel()  # IPython not loaded: a script
    kernel = _fake_ipython(monkeypatch, "ZMQInteractiveShell")
    assert in_jupyter_kernel()
    colab = type("Shell", (kernel,), {})  # a subclass of the kernel's shell (Colab's) is a kernel too
    sys.modules["IPython"].get_ipython = lambda: colab()
    assert in_jupyter_kernel()
    _fake_ipython(monkeypatch, "TerminalInteractiveShell")  # IPython in a terminal is not a kernel
    assert not in_jupyter_kernel()
    sys.modules["IPython"].get_ipython = lambda: None  # IPython imported by a script
    assert not in_jupyter_kernel()


def test_auto_shows_in_a_kernel_or_a_terminal_only(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress_enabled(None) is False
    assert progress_enabled(True) is True and progress_enabled(False) is False
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert progress_enabled(None) is True and progress_enabled(False) is False
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    _fake_ipython(monkeypatch, "ZMQInteractiveShell")
    assert progress_enabled(None) is True


def test_the_bar_writes_only_when_shown(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    bar = progress_bar(range(5), desc="quiet")
    assert bar.disable and list(bar) == list(range(5))
    bar.set_postfix(loss="1.0")
    bar.close()
    with progress_bar(total=3, desc="quiet too") as bar:
        bar.update(3)
    assert log.getvalue() == ""
    assert list(progress_bar(range(4), desc="forced", enabled=True)) == list(range(4))
    assert "forced:" in log.getvalue() and "/4 [" in log.getvalue()
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(progress_bar(range(2), desc="on a terminal")) == [0, 1]
    assert "on a terminal" in terminal.getvalue()


def test_the_widget_is_used_in_a_kernel_with_ipywidgets_and_text_otherwise(monkeypatch):
    assert progress._bar_class(False) is std.tqdm
    monkeypatch.setattr(notebook, "IProgress", None)
    assert progress._bar_class(True) is std.tqdm  # no ipywidgets: text on stderr, without tqdm.auto's warning
    monkeypatch.setattr(notebook, "IProgress", object)
    assert progress._bar_class(True) is notebook.tqdm


@pytest.mark.parametrize("kwargs, error, message", [
    ({"enabled": "yes"}, TypeError, "enabled must be True or False"),
    ({"enabled": 1, "name": "progress"}, TypeError, "progress must be True or False"),
    ({"leave": None}, TypeError, "leave must be True or False"),
    ({"desc": 3}, TypeError, "desc must be a str or None"),
    ({"total": -1}, ValueError, "total"),
    ({"total": 2.5}, TypeError, "total"),
])
def test_bad_arguments_are_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        progress_bar(range(3), **kwargs)


def run_with_stderr_to_file(script: str, tmp_path: Path) -> str:
    """Run ``script`` in a fresh interpreter whose stderr is a file (not a TTY); return what it wrote there."""
    log = tmp_path / "stderr.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    with open(log, "w") as stderr:
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, timeout=300)
    text = log.read_text()
    assert result.returncode == 0, text
    return text


def test_fit_and_sweep_are_silent_in_a_log_unless_forced(tmp_path):
    text = run_with_stderr_to_file("""
        import sys
        import torch
        from kdnb.core.sweeps import sweep
        from kdnb.core.training import cross_entropy_objective, fit, train_classifier

        x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
        def train(progress, desc):
            model = torch.nn.Linear(3, 2)
            kwargs = {} if progress is None else {"progress": progress}
            fit(model, cross_entropy_objective(), x, [y], epochs=30, generator=torch.Generator(), desc=desc,
                **kwargs)
            train_classifier(model, x, y, epochs=5, generator=torch.Generator(), desc=desc + " classifier",
                             **kwargs)

        train(None, "auto fit")
        train(False, "off fit")
        sweep(lambda a, repeat: {"b": a}, {"a": [1, 2, 3]}, 2, desc="auto sweep")
        sys.stderr.write("MARK\\n")
        train(True, "forced fit")
        sweep(lambda a, repeat: {"b": a}, {"a": [1, 2, 3]}, 2, desc="forced sweep", progress=True)
    """, tmp_path)
    quiet, forced = text.split("MARK\n")
    assert quiet == ""
    for desc in ("forced fit", "forced fit classifier", "forced sweep"):
        assert desc in forced
    assert "loss=" in forced  # fit's postfix


def test_kdnb_progress_0_turns_the_default_off_but_not_an_explicit_choice(monkeypatch):
    monkeypatch.setattr("kdnb.core.progress.stderr_is_terminal", lambda: True)
    assert progress_enabled(None)
    monkeypatch.setenv("KDNB_PROGRESS", "0")
    assert not progress_enabled(None)
    assert progress_enabled(True)
    monkeypatch.setenv("KDNB_PROGRESS", "1")
    assert progress_enabled(None)
