"""Synthetic libraries for tests and benchmarks: small FLAC containers with real tags around
random payloads (tag readers parse them; nothing decodes them), and the chunk store's files."""
from __future__ import annotations

import random
import struct
from pathlib import Path


def flac_like(tags: dict[str, str], payload: bytes) -> bytes:
    """A FLAC container (STREAMINFO + VORBIS_COMMENT) around `payload`: tag readers parse it."""
    info = struct.pack(">HH", 4096, 4096) + bytes(6) + ((44100 << 44) | (1 << 41) | (15 << 36)).to_bytes(8, "big") + bytes(16)
    vendor = b"musicfs-tests"
    comments = struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", len(tags))
    for key, value in tags.items():
        entry = f"{key}={value}".encode()
        comments += struct.pack("<I", len(entry)) + entry
    return (b"fLaC" + bytes([0]) + len(info).to_bytes(3, "big") + info
            + bytes([0x84]) + len(comments).to_bytes(3, "big") + comments + payload)


def make_library(root: Path, files: int, size: int, *, per_album: int = 12, seed: int = 1) -> list[Path]:
    """`files` tagged files of about `size` bytes under root/Artist NNNN/Album NN/NN Track.flac."""
    rng = random.Random(seed)
    paths = []
    for i in range(files):
        album, track = divmod(i, per_album)
        artist = album // 4
        folder = root / f"Artist {artist:04d}" / f"Album {album % 4:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{track + 1:02d} Track.flac"
        tags = {"ARTIST": f"Artist {artist:04d}", "ALBUM": f"Album {album % 4:02d}", "TITLE": f"Track {track + 1}"}
        path.write_bytes(flac_like(tags, rng.randbytes(size)))
        paths.append(path)
    return paths


def chunk_files(chunks_dir: Path) -> list[Path]:
    """The chunk files (chunks/aa/bb/<hex>), temp files excluded, sorted."""
    return sorted(f for f in Path(chunks_dir).glob("??/??/*") if f.is_file())


def chunk_bytes_on_disk(chunks_dir: Path) -> int:
    """Sum of the sizes of the chunk files."""
    return sum(f.stat().st_size for f in chunk_files(chunks_dir))
