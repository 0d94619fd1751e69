"""The daemon: the process (process.py: daemonizing, signals, mount and unmount), the service
wiring its parts (service.py), config reloads (reload.py), the control socket (control.py),
pins (pinning.py) and systemd's notify protocol (systemd.py)."""
