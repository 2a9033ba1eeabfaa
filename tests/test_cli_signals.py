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

import pytest

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


def test_ctrl_c_in_a_file_smaller_than_a_part_loses_at_most_the_batch_in_flight(
    tmp_path, tiny_t5_path, monkeypatch, capsys
):
    import numpy as np
    from test_cli import embed_args, expected_vectors

    from sk_instructor._cli import main
    from sk_instructor._cli.stopping import EXIT_INTERRUPTED
    from sk_instructor._engine.model import EmbeddingModel

    texts = [f"row {k}: " + "fox river bank " * (k % 5) for k in range(400)]
    input_path = tmp_path / "rows.csv"
    input_path.write_text("text\n" + "\n".join(texts) + "\n")
    output = tmp_path / "vectors.npy"
    # One part would hold every row, and no commit falls due by time: before, an interrupt
    # kept nothing of the run.
    args = [*embed_args(input_path, output, tiny_t5_path), "--batch-size", "8"]
    args += ["--chunk-size", "100000", "--commit-seconds", "100000", "--cache", "none"]
    original, encoded = EmbeddingModel._forward, []

    def forward(self, input_ids, *rest, **kwargs):
        # The 36th batch (of at most 8 rows): some 70% of the run, inside its third piece (on a
        # quiet machine 256 rows: pieces grow from 16 rows as the run measures its speed).
        if len(encoded) == 35:
            raise KeyboardInterrupt
        encoded.append(len(input_ids))
        return original(self, input_ids, *rest, **kwargs)

    monkeypatch.setattr(EmbeddingModel, "_forward", forward)
    assert main(args) == EXIT_INTERRUPTED
    done_before = sum(encoded)

    monkeypatch.setattr(EmbeddingModel, "_forward", original)
    encoded.clear()

    def counting(self, input_ids, *rest, **kwargs):
        encoded.append(len(input_ids))
        return original(self, input_ids, *rest, **kwargs)

    monkeypatch.setattr(EmbeddingModel, "_forward", counting)
    capsys.readouterr()
    assert main(args) == 0
    assert sum(encoded) == len(texts) - done_before  # nothing encoded twice
    np.testing.assert_allclose(np.load(output), expected_vectors(tiny_t5_path, texts), atol=1e-6)
    assert not (tmp_path / "vectors.npy.parts").exists()


# Moments of a run of 40 rows in 5 parts: its start, before its model loads, before its
# manifest, before each part, before the output's assembly, while the output is written (before
# its rename), and after the rename, before the work folder is removed.
_KILL_POINTS = [
    "main:main:1",
    "main:_open_encoder:1",
    "OutputParts:open:1",
    *(f"OutputParts:write_part:{k}" for k in range(1, 6)),
    "OutputParts:assemble:1",
    "OutputParts:_write_npy:1",
    "OutputParts:_release:1",
]


@pytest.mark.parametrize("kill_point", _KILL_POINTS)
def test_a_run_killed_at_any_moment_then_rerun_writes_what_an_uninterrupted_run_writes(
    tmp_path, tiny_t5_path, kill_point
):
    import numpy as np
    from test_cli import _release, _start_cli, _wait_until_gated, embed_args, make_rows, write_input

    from sk_instructor._cli import main

    ids, texts = make_rows(40)
    input_path = write_input(tmp_path / "rows.csv", ids, texts)
    uninterrupted = tmp_path / "uninterrupted.npy"
    output = tmp_path / "vectors.npy"
    options = ["--chunk-size", "8", "--commit-seconds", "0", "--cache", "none"]
    assert main([*embed_args(input_path, uninterrupted, tiny_t5_path), *options]) == 0

    killed = _start_cli(
        [*embed_args(input_path, output, tiny_t5_path), *options], tmp_path, gate=kill_point
    )
    try:
        assert _wait_until_gated(killed), killed.communicate()
        killed.kill()  # SIGKILL: nothing of the run's own runs after this
        killed.wait()
    finally:
        if killed.poll() is None:
            _release(killed)
            killed.kill()
    for _ in range(3):  # rerun until done (once is expected)
        code = main([*embed_args(input_path, output, tiny_t5_path), *options, "--overwrite"])
        if code == 0:
            break
    assert code == 0
    # Equal to float32 rounding: the rerun batches the rows it has left differently.
    np.testing.assert_allclose(np.load(output), np.load(uninterrupted), rtol=0, atol=1e-6)
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []
