"""Signals at every moment of an ``sk-instructor embed`` run.

SIGTERM is handled from the command's first step (before the seconds of importing
scikit-learn, numpy and pyarrow), and a run killed at any moment, rerun until it finishes,
writes what an uninterrupted run writes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from sk_instructor._cli.stopping import EXIT_TERMINATED

# The command, its options module held at import (where the slow imports happen) until the
# test has sent its signal: the file named by the first argument says it got there.
_HELD_AT_IMPORT = """
import importlib.abc, sys, time

ready = sys.argv.pop(1)


class HoldOptions(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "sk_instructor._cli.options":
            open(ready, "w").close()
            deadline = time.monotonic() + 300  # the test's SIGTERM comes long before
            while time.monotonic() < deadline:
                time.sleep(0.01)
        return None


sys.meta_path.insert(0, HoldOptions())
from sk_instructor._cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_importing_the_command_line_leaves_the_slow_libraries_for_later():
    code = (
        "import sys, sk_instructor._cli\n"
        "print(sorted(m for m in ('sklearn', 'numpy', 'pyarrow', 'torch') if m in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert found.strip() == "[]"


def test_sigterm_while_the_libraries_import_exits_143(tmp_path):
    ready = tmp_path / "importing"
    args = ["embed", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.npy")]
    process = subprocess.Popen(
        [sys.executable, "-c", _HELD_AT_IMPORT, str(ready), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        # Polled without a deadline of its own: the process reaches the import or ends.
        while not ready.exists() and process.poll() is None:
            try:
                process.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass
        assert ready.exists(), process.communicate()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == EXIT_TERMINATED, stderr
    assert stderr.strip().splitlines()[-1] == "sk-instructor: error: terminated"
    assert not Path(tmp_path / "out.npy.parts").exists()
