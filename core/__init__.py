"""Shared core of Tally: settings, database, errors, ids, money, clock and the composition root."""
