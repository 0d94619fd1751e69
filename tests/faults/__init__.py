"""Faults made the way they happen in the field: hung NAS, dying cache disk, crashes, the probe."""
