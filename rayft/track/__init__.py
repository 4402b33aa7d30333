"""Tracking: terminal tables, the HTML sweep report and W&B offline-run checks (logging is wired in
:mod:`rayft.sweep.run`)."""

from rayft.track.table import print_table, trials_table

__all__ = ["print_table", "trials_table"]
