"""The ``sk-instructor`` command line: embed a text column of a file, resumably.

``main.py`` parses the options and runs the chunk loop, ``table_input.py`` reads CSV, TSV,
Parquet and JSON Lines in exact-size chunks, ``chunked_output.py`` commits each chunk atomically
and assembles the output. Only ``main`` is imported here, so ``--help`` stays fast; the modules
that need pyarrow import it at their top and are imported when a file is embedded.
"""

from .main import main

__all__ = ["main"]
