"""``python -m sk_instructor._cli``: the same as the ``sk-instructor`` command."""

import sys

from .main import main

sys.exit(main())
