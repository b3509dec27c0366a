"""``python -m pytest_kvm``: pytest-kvm's command line (see ``pytest_kvm.cli``)."""

import sys

from .cli import main

sys.exit(main())
