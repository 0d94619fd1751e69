"""The catalog: what the library looks like, kept in LMDB and served without the origins.

One owner per concern:

* :mod:`.records` - the only code that knows the byte layout of the catalog's records and keys;
* :mod:`.index` - the lookups of the FUSE layer, the reader and the commands (read side);
* :mod:`.scanner` - walks origins and folds what they hold into the records (write side);
* :mod:`.views` - what makes the shown tree out of the records: the paths view and the tag view,
  behind one interface;
* :mod:`.tree` - the shown tree's files and folders as a view changes them;
* :mod:`.layout` - the tag view's templates, fields and safe names (pure);
* :mod:`.tags` - reading audio tags with mutagen through an origin;
* :mod:`.query` - the search language (pure); :mod:`.smart` - the ``.search`` and
  ``.collections`` folders made from the tag view's records.

This module exports the read side only; import the scanner and views from their modules (they
depend on the chunk store, which itself keys manifests by :func:`.records.origin_key`).
"""
import importlib

# Loaded on first use: the configuration imports .layout, and the origins import the
# configuration, so importing the read side here eagerly would be circular.
_EXPORTS = {"Catalog": "index", "OpenedVersions": "index", "RecentChanges": "index", "CatalogEntry": "records",
            "decode_entry": "records", "origin_key": "records", "version_tag": "records"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
