"""Real FUSE mounts: what users and media servers see, and the commands around a mount."""
