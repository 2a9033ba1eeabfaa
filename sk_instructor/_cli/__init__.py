"""The ``sk-instructor`` command line: embed a text column of a file, resumably.

``main.py`` parses the options and runs the loop, ``table_input.py`` checks and reads CSV, TSV,
Parquet and JSON Lines, ``commits.py`` decides when the work done is committed,
``chunked_output.py`` commits each chunk atomically and assembles the output. Only ``main`` is
imported here, so ``--help`` stays fast; the modules that need pyarrow import it at their top
and are imported when a file is embedded.
"""

from .main import main

__all__ = ["main"]
