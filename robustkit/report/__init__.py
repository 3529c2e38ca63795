"""What people look at after a run: plots, the self-contained ``report.html``, run comparison and export.

Modules: :mod:`.run_folder` (a finished output folder, read back), :mod:`.summaries` (counts behind the
plots), :mod:`.examples` (a few adversarial examples per model, a finishing stage), :mod:`.plots` and
:mod:`.example_grid` (matplotlib figures), :mod:`.html` (+ ``template.html``), :mod:`.compare`,
:mod:`.export`, :mod:`.stage` (the finishing stage the runner calls). See docs/report.md.
"""
from __future__ import annotations

# The runner calls this package's finishing stage, and these modules read the engine's files: load the
# engine first, so that whichever module is imported first, each one finds the other complete.
import robustkit.engine  # noqa: F401
