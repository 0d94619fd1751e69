"""What the tests share, by concern: mounts, origins that fail, real audio, beets as reference."""
