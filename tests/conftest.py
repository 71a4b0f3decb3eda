"""Test-wide settings: every pass pipeline verifies the graph after each pass."""

import os

os.environ.setdefault("GRAPHNN_VERIFY", "1")
