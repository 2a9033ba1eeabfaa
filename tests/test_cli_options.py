"""Options that cannot work together are refused before anything loads, leaving nothing behind."""

from __future__ import annotations

import pytest
from test_cli import embed_args, make_rows, write_input

from sk_instructor._cli import main
from sk_instructor._engine.entry import Encoder


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(self):
        raise AssertionError("the model was loaded for a run that cannot work")

    monkeypatch.setattr(Encoder, "load", refuse)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--id-column", "text", "--column", "text"], "--id-column and --column are both 'text'"),
        (["--id-column", "embedding"], "--id-column and --embedding-column are both"),
        (["--column", "absent"], "absent"),
        (["--id-column", "absent"], "absent"),
    ],
)
def test_options_that_cannot_work_are_refused_before_the_model_loads(
    tmp_path, tiny_t5_path, capsys, no_model_loads, options, message
):
    ids, texts = make_rows(6)
    input_path = write_input(tmp_path / "rows.csv", ids, texts)
    output = tmp_path / "vectors.parquet"
    assert main([*embed_args(input_path, output, tiny_t5_path), *options]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0], error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["rows.csv"]


def test_the_input_given_as_output_is_refused(tmp_path, tiny_t5_path, capsys, no_model_loads):
    ids, texts = make_rows(6)
    input_path = write_input(tmp_path / "rows.parquet", ids, texts)
    before = input_path.read_bytes()
    args = [*embed_args(input_path, input_path, tiny_t5_path), "--overwrite"]
    assert main(args) == 1
    assert "OUTPUT is the INPUT file" in capsys.readouterr().err
    assert input_path.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["rows.parquet"]
