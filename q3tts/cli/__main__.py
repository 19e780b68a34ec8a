"""`python -m q3tts.cli`."""

import sys

from . import main

sys.exit(main())
