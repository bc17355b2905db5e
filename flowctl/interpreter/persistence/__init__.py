"""Persistence: the run store port, the SQLite store (opening, errors) and the journal that replays recorded calls."""
