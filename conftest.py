"""pytest session setup, shared by tests/ and nbval's run over notebooks/.

Chapters executed by the tests (nbval, papermill) run in the smoke profile and write their claims to a temporary
folder, so they never overwrite the claims of the built book. Tests that need other values set them explicitly.
"""

import os
import tempfile

os.environ.setdefault("KDNB_PROFILE", "smoke")
os.environ.setdefault("KDNB_CLAIMS_DIR", tempfile.mkdtemp(prefix="kdnb-test-claims-"))
os.environ.setdefault("MPLBACKEND", "Agg")

from kdnb.core.runtime import configure_allocator  # noqa: E402  (the setting of every chapter; see kdnb.core.runtime)

configure_allocator()
