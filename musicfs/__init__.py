"""musicfs: one read-only music library from several origins, behind a verified chunk cache."""

__version__ = "0.1.0"
