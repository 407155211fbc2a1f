"""A Ctrl-C that Python would drop reaches the command: one raised inside a garbage-collector
callback (JAX runs one at every collection) is reported as "Exception ignored" and lost, and the
command would go on to its end."""

import subprocess
import sys

import pytest

from tests.helpers import ROOT

# A command that, once running, has a Ctrl-C land in a gc callback as JAX's can, then works on
# for up to a minute; with `recording`, under a handler that records SIGINT, as a training loop's.
SCRIPT = """
import gc, importlib, signal, sys, time
cli = importlib.import_module("adaptive.cli.main")
recorded = []

def command(args, overrides):
    if sys.argv[1] == "recording":
        signal.signal(signal.SIGINT, lambda signum, frame: recorded.append(signum))
    armed = [True]
    def callback(phase, info):
        if armed:
            armed.clear()
            raise KeyboardInterrupt
    gc.callbacks.append(callback)
    gc.collect()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not recorded:
        pass
    print("recorded" if recorded else "ran to its end")
    return 0

cli._report = command
sys.exit(cli.main(["report", "W"]))
"""


@pytest.mark.parametrize(("handler", "code", "said"), [("default", 130, ""), ("recording", 0, "recorded\n")])
def test_a_ctrl_c_dropped_inside_a_gc_callback_is_delivered_again(handler, code, said):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, handler], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == code, proc.stderr[-2000:]
    assert proc.stdout == said  # never "ran to its end"
    if handler == "default":
        assert proc.stderr == "adaptive: interrupted\n"  # no "Exception ignored" traceback
