"""Remote origins against real servers on loopback (OpenSSH, S3)."""
