"""The content-addressed chunk store (format: :mod:`musicfs.database`)."""
from .check import CacheChecker, recover
from .store import (DEFAULT_CHUNK_SIZE, CacheWriteError, ChunkStore, chunk_count, digest_of,
                    manifest_key)

__all__ = ["CacheChecker", "CacheWriteError", "ChunkStore", "DEFAULT_CHUNK_SIZE", "chunk_count",
           "digest_of", "manifest_key", "recover"]
