"""pytest session setup, shared by tests/ and nbval's run over notebooks/.

Chapters executed by the tests (nbval, papermill) run in the smoke profile and write their claims and figures to
temporary folders, so they never overwrite the claims and figures of the built book (nbval runs the chapters in
notebooks/, where the book's figures are). Tests that need other values set them explicitly.
"""

import os
import tempfile

os.environ.setdefault("KDNB_PROFILE", "smoke")
os.environ.setdefault("KDNB_CLAIMS_DIR", tempfile.mkdtemp(prefix="kdnb-test-claims-"))
os.environ.setdefault("MPLBACKEND", "Agg")
# Figures of chapters run by the tests go here, not to notebooks/figures/ (see kdnb.core.plotting.save_figure).
os.environ.setdefault("KDNB_FIGURES_DIR", tempfile.mkdtemp(prefix="kdnb-test-figures-"))
# Trained weights cached by the chapters run in tests stay in the session (see kdnb.core.cache).
os.environ.setdefault("KDNB_CACHE_DIR", tempfile.mkdtemp(prefix="kdnb-test-cache-"))

from kdnb.core.runtime import configure_allocator  # noqa: E402  (the setting of every chapter; see kdnb.core.runtime)

configure_allocator()
