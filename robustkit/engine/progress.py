"""One progress bar for the whole sweep on stderr: samples/s and how many verdicts are still robust.

stdout is kept for the final leaderboard (so ``robustkit eval > board.md`` captures just the table);
``quiet`` turns the bar off. In a distributed run only rank 0 draws it, from counters every rank adds to
(:class:`robustkit.engine.distributed.SharedProgress`); the other ranks stay quiet.
"""
from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


class SweepProgress:
    """A tqdm bar counting evaluated (model, eps, sample) verdicts, with the number still robust as its postfix."""

    def __init__(self, description: str, total: int, *, done: int = 0, robust: int = 0, quiet: bool = False) -> None:
        self.robust = robust
        self.seen = done
        self._bar: Any = None
        if not quiet:
            self._bar = tqdm(total=total, initial=done, desc=description, unit="sample", file=sys.stderr,
                             dynamic_ncols=True, leave=True)
            self._bar.set_postfix_str(self._postfix(), refresh=False)

    def _postfix(self) -> str:
        return f"robust={self.robust}/{self.seen}"

    def note(self, text: str) -> None:
        """A one-off message (e.g. a batch-size halving) that does not break the bar."""
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)

    def update(self, n: int, robust: int) -> None:
        """``n`` more verdicts, ``robust`` of them robust."""
        self.seen += n
        self.robust += robust
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(), refresh=False)
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "SweepProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
