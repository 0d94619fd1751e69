"""Client-side commands: what `musicfs status`, `rescan`, `pin`, `search` and `reload` do in the
user's process (mounts.py: finding a mount's daemon, asking it, printing its answers) and the
cache's own commands (cache.py: `cache stats`, `cache verify`)."""
