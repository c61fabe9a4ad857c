"""Session-wide test set-up. Real daemons come from ``tests/regtest/conftest.py``."""

from __future__ import annotations

import warnings

# bitcoinlib 0.7 warns at import time (SQLAlchemy 2.0 deprecations, a config file
# it opens without closing). Tests turn warnings into errors, so import it once
# here with those warnings silenced; warnings from our own code stay errors.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import bitcoinlib.keys  # noqa: F401
