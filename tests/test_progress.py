import io

import pytest
from rich.console import Console

from quantkit.memory import PeakRSS
from quantkit.progress import NullReporter, TqdmBridge
from quantkit.reporters import RichReporter

pytestmark = pytest.mark.unit


def test_tqdm_bridge_turns_layer_loops_into_one_layer_bar():
    rep = NullReporter()
    bridge = TqdmBridge(rep)
    for layer in range(1, 4):
        for phase in ("Calibrating", "Propagating"):
            assert list(bridge.tqdm(range(5), desc=f"({layer}/3): {phase}")) == list(range(5))
    bar = bridge.tqdm(range(2), desc="Grid search for model.layers.0.mlp")
    bar.set_postfix({"best_error": 1.0})
    assert list(bar) == [0, 1]
    bridge.close()
    assert rep.steps.count("calibrating layers") == 1
    assert rep.steps.count("  (2/3): Calibrating") == 1 and "  Grid search for model.layers.0.mlp" in rep.steps


def test_rich_reporter_renders_bars_and_failures():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=120)
    with RichReporter(console) as rep:
        with rep.task("loading model"):
            pass
        with rep.task("calibrating", total=4) as t:
            t.advance(4)
        try:
            with rep.task("saving"):
                raise RuntimeError
        except RuntimeError:
            pass
    out = buf.getvalue()
    assert "loading model" in out and "4/4" in out and "saving (failed)" in out


def test_peak_rss_sees_an_allocation():
    with PeakRSS() as base:
        pass
    import time

    with PeakRSS() as peak:
        block = bytearray(200_000_000)
        block[::4096] = b"x" * len(block[::4096])
        time.sleep(1.0)  # the sampler runs every 10 ms; a loaded machine may delay it
        del block
    assert peak.bytes - base.bytes > 150_000_000


def test_peak_rss_of_a_step_run_by_tools():
    """A step whose work runs in a child process (llama.cpp's tools) reports that child's peak, read
    from the kernel, not only this process's (measured in a fresh interpreter: pytest's own RSS is large)."""
    import subprocess
    import sys

    child = "b = bytearray(400_000_000); b[::4096] = b'x' * len(b[::4096])"
    code = ("import subprocess, sys\nfrom quantkit.memory import PeakRSS\n"
            "for tools in (False, True):\n"
            "    with PeakRSS(tools=tools) as peak:\n"
            f"        subprocess.run([sys.executable, '-c', {child!r}], check=True)\n"
            "    print(peak.bytes, peak.method)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    (own, own_method), (tools, tools_method) = [(int(line.split()[0]), line.split(" ", 1)[1]) for line in out.splitlines()]
    assert own < 200_000_000 and own_method == "sampled every 0.1 s"
    assert tools > 400_000_000 and tools_method == "ru_maxrss of the largest child process"


def test_peak_rss_of_a_step_that_raises_the_high_water_mark_is_exact():
    """A spike shorter than the sampling interval is caught by the kernel's high-water mark when it is the
    process's highest; a later, smaller step falls back to its own samples instead of the process's peak."""
    import subprocess
    import sys

    code = ("from quantkit.memory import PeakRSS\n"
            "for size in (500_000_000, 100_000_000):\n"
            "    with PeakRSS() as peak:\n"
            "        b = bytearray(size); b[::4096] = b'x' * len(b[::4096]); del b\n"
            "    print(peak.bytes, peak.method)\n")
    # through a small intermediate interpreter: Linux carries a parent's peak into its child's ru_maxrss
    # across fork and exec, and pytest's own peak is larger than the spike
    via = f"import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-c', {code!r}]).returncode)"
    out = subprocess.run([sys.executable, "-c", via], capture_output=True, text=True, check=True, timeout=120).stdout
    (spike, spike_method), (later, later_method) = [(int(line.split()[0]), line.split(" ", 1)[1]) for line in out.splitlines()]
    assert spike > 500_000_000 and spike_method == "ru_maxrss"
    assert later < 400_000_000 and later_method == "sampled every 0.1 s"
