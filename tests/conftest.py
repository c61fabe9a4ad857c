"""Session-wide fixtures. Real daemons come from ``tests/regtest_fixtures.py``."""
