"""Test-wide settings: every pass pipeline verifies the graph after each pass, and compiled code
is cached in a fresh folder (not the user's cache)."""

import os
import tempfile

os.environ.setdefault("GRAPHNN_VERIFY", "1")
os.environ.setdefault("GRAPHNN_CACHE_DIR", tempfile.mkdtemp(prefix="graphnn-test-cache-"))
