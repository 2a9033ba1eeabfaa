"""The ``sk-instructor`` command line: embed a text column of a file, resumably.

``main.py`` runs a command: it checks the output, reads the input whole, then embeds the rows
in pieces and commits them in parts. ``options.py`` declares the options (those of the shared
parameters from ``_params``). The input: ``table_input.py`` opens and checks it, through
``input_file.py`` (what every format gives), ``csv_input.py`` and ``csv_records.py`` (CSV and
TSV, read strictly), ``dataset_input.py`` and ``jsonl_checks.py`` (Parquet and JSON Lines), and
``row_reader.py`` cuts its rows into pieces. The output: ``commits.py`` decides when the work
done is committed, ``output_parts.py`` commits each part atomically and assembles the output.
``notices.py``, ``stopping.py`` and ``errors.py`` say what happens, on one line each.

Only ``main`` is imported here, so ``--help`` stays fast; the modules that need pyarrow import
it at their top and are imported when a file is embedded.
"""

from .main import main

__all__ = ["main"]
