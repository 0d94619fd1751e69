"""Applying an edited config file to the running daemon: SIGHUP and `musicfs reload`."""
from __future__ import annotations

import logging
import threading

from ..config import config_differences
from ..errors import CommandError, MusicfsError

log = logging.getLogger(__name__)


class Reloader:
    """Reading the config again and applying it (SIGHUP, `musicfs reload`), one at a time in
    the order asked. A config that is wrong or cannot be applied is refused, and the running
    one stays."""

    def __init__(self, service, load_config, warn, to_systemd=None):
        self.service = service
        self.load_config = load_config   # None: started without a config file (-O only)
        self.warn = warn
        self.to_systemd = to_systemd
        self._lock = threading.Lock()

    def on_signal(self) -> None:
        """SIGHUP: the outcome goes to the log (and the status file), as now() writes it."""
        log.info("received SIGHUP: reloading the configuration")
        try:
            self.now()
        except Exception:  # noqa: BLE001 - logged by now(); a bug must not take the mount down
            pass

    def now(self, progress=None) -> dict:
        """Reload and return {"summary", "changes": one line per changed setting}; raises
        (ConfigError naming the file and key, CommandError...) when refused. `progress` hears
        {"waiting": why} when the reload has to wait (for a scan under way)."""
        if self.load_config is None:
            raise CommandError("this daemon was started without a config file (origins given with -O): "
                               "there is nothing to read again; unmount and mount with -c CONFIG")
        with self._lock:
            if self.to_systemd is not None:
                self.to_systemd.reloading()
            try:
                old = self.service.config
                new = self.load_config()
                if old.source is None and new.source is None:
                    raise CommandError("mounted without a config file (origins given with -O, and there is no "
                                       "default config file): there is nothing to read again")
                if progress is not None and self.service.scanning():
                    # (the reload swaps origins and the view: not under a scan's feet)
                    progress({"waiting": "a scan under way; the reload is applied when it ends"})
                summary = self.service.reload(new, self.warn)
            except MusicfsError as e:
                log.error("reload refused, still running with the previous configuration: %s", e)
                self.service.note_reload(str(e))
                raise
            except Exception as e:
                log.exception("reload failed, still running with the previous configuration")
                self.service.note_reload(f"{type(e).__name__}: {e}")
                raise
            finally:
                if self.to_systemd is not None:
                    self.to_systemd.reloaded()
            self.service.note_reload(None)
            changes = config_differences(old, self.service.config)
            for change in changes:   # (SIGHUP's only report: the log)
                log.info("reload: %s", change)
            return {"summary": summary, "changes": changes}
