"""The command line (typer). ``musicfs MOUNTPOINT`` is short for ``musicfs mount MOUNTPOINT``."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import __version__, config as config_module
from .errors import ConfigError, StartupError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="musicfs: one read-only music library from several origins, with a verified local cache.")
cache_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Inspect and check the chunk cache.")
app.add_typer(cache_app, name="cache")

SUBCOMMANDS = {"mount", "unmount", "health", "cache"}

ConfigOption = typer.Option(None, "-c", "--config", help="Config file (default $XDG_CONFIG_HOME/musicfs/config.toml).")
CacheDirOption = typer.Option(None, "--cache-dir", help="Overrides [cache].dir.")


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"musicfs: {message}", err=True)
    raise typer.Exit(code)


def _load(config: Optional[Path], **overrides) -> config_module.Config:
    try:
        return config_module.load(config, **overrides)
    except ConfigError as e:
        _fail(str(e), 2)


def parse_fuse_options(values: List[str]) -> dict:
    """-o allow_other,max_read=131072 -> {"allow_other": True, "max_read": "131072"}"""
    options = {}
    for value in values:
        for item in filter(None, (part.strip() for part in value.split(","))):
            key, sep, val = item.partition("=")
            options[key] = val if sep else True
    return options


@app.command()
def mount(
    mountpoint: Path = typer.Argument(..., help="Where to mount the library (an existing directory)."),
    config: Optional[Path] = ConfigOption,
    origin: Optional[List[Path]] = typer.Option(None, "-O", "--origin", help="A local origin directory; repeatable; replaces the config's origins."),
    cache_dir: Optional[Path] = CacheDirOption,
    cache_size: Optional[str] = typer.Option(None, "--cache-size", help="Overrides [cache].max_size (e.g. 500M, 10G)."),
    read_timeout: Optional[float] = typer.Option(None, "--read-timeout", help="Overrides [fuse].read_timeout (seconds)."),
    layout: Optional[str] = typer.Option(None, "--layout", help="tags (the tree from audio tags) or paths (the origins' folders merged); overrides the layout mode."),
    template: Optional[str] = typer.Option(None, "--template", help="The tag view's path template, e.g. '$albumartist/$album/$track $title'; overrides the layout template."),
    foreground: bool = typer.Option(False, "-f", "--foreground", help="Stay in the foreground (default: daemonize, return once mounted)."),
    fuse_option: Optional[List[str]] = typer.Option(None, "-o", help="Extra FUSE options, comma separated (e.g. allow_other)."),
    verbose: int = typer.Option(0, "-v", "--verbose", count=True, help="More logging."),
):
    """Mount the library at MOUNTPOINT."""
    from . import daemon

    try:
        cfg = config_module.load(config, origins=origin, cache_dir=cache_dir, cache_size=cache_size,
                                 read_timeout=read_timeout, layout=layout, template=template)
        daemon.mount(cfg, mountpoint, foreground=foreground, fuse_options=parse_fuse_options(fuse_option or []),
                     verbose=verbose)
    except ConfigError as e:
        _fail(str(e), 2)
    except StartupError as e:
        _fail(str(e), 1)


@app.command()
def unmount(mountpoint: Path = typer.Argument(..., help="The mountpoint to unmount.")):
    """Unmount MOUNTPOINT and wait for its daemon to finish."""
    from . import daemon

    try:
        note = daemon.unmount(mountpoint)
    except StartupError as e:
        _fail(str(e), 1)
    if note:
        typer.echo(f"musicfs: {note}", err=True)


@app.command()
def health(mountpoint: Optional[Path] = typer.Argument(None, help="The mount to check (the daemon whose status names it); default: the daemon of the config's cache."),
           config: Optional[Path] = ConfigOption,
           as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the plugin line."),
           prometheus: Optional[Path] = typer.Option(None, "--prometheus", metavar="FILE", help="Also write the verdict as Prometheus metrics to FILE (node_exporter's textfile collector reads *.prom), atomically, whatever the verdict; a failure to write it is one line on stderr and leaves the exit code alone.")):
    """The cron probe: check the daemon and its mount, the origins (the daemon's view and the
    probe's own check, bounded by the health timeout) and the cache. Exit 0 OK, 1 WARNING,
    2 CRITICAL, 3 UNKNOWN (Nagios plugin convention). Always finishes within the timeout."""
    import logging
    import os

    from . import logs
    from .health.probe import UNKNOWN, probe
    from .metrics import write_textfile_or_warn

    try:
        # With a MOUNTPOINT the daemon serving it publishes its own config; -c is the fallback.
        cfg = config_module.load(config) if config is not None or mountpoint is None else None
        verdict = probe(cfg, mountpoint)
    except ConfigError as e:
        write_textfile_or_warn(prometheus, None, mountpoint)
        _probe_exit(f"MUSICFS UNKNOWN - configuration: {e}", UNKNOWN, as_json, str(e))
    except Exception as e:  # noqa: BLE001 - UNKNOWN is the documented answer to an internal error
        write_textfile_or_warn(prometheus, None, mountpoint)
        _probe_exit(f"MUSICFS UNKNOWN - internal error: {type(e).__name__}: {e}", UNKNOWN, as_json, str(e))
    write_textfile_or_warn(prometheus, verdict, mountpoint)
    line = verdict.first_line()
    try:
        log_config = (verdict.config or cfg or config_module.load(None)).log
        logs.setup(log_config.file, log_config.level)
        level = logging.INFO if verdict.code == 0 else logging.WARNING
        logging.getLogger("musicfs.health").log(level, "health probe: %s", line)
        logging.shutdown()
    except Exception as e:  # noqa: BLE001 - a log that cannot be written must not hide the verdict
        line += f" (log not written: {e})"
    typer.echo(json.dumps(verdict.as_dict(), sort_keys=True) if as_json else line)
    sys.stdout.flush()
    # Checks still stuck in a dead origin are abandoned child processes: leave without them.
    os._exit(verdict.code)


def _probe_exit(line: str, code: int, as_json: bool, error: str) -> None:
    import os
    typer.echo(json.dumps({"status": "UNKNOWN", "exit_code": code, "error": error}) if as_json else line)
    sys.stdout.flush()
    os._exit(code)


@cache_app.command("stats")
def cache_stats(config: Optional[Path] = ConfigOption, cache_dir: Optional[Path] = CacheDirOption,
                as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")):
    """Print the index's view of the cache: chunks, bytes, limit, hits, misses, passthrough."""
    from .inspect import cache_stats as collect

    cfg = _load(config, cache_dir=cache_dir)
    try:
        stats = collect(cfg)
    except StartupError as e:
        _fail(str(e), 1)
    if as_json:
        typer.echo(json.dumps(stats, sort_keys=True))
        return
    for key in ("chunks", "bytes", "max_bytes", "chunk_size", "hits", "misses", "passthrough", "daemon_pid"):
        typer.echo(f"{key:12} {stats.get(key)}")


@cache_app.command("verify")
def cache_verify(config: Optional[Path] = ConfigOption, cache_dir: Optional[Path] = CacheDirOption,
                 repair: bool = typer.Option(False, "--repair", help="Fix what is found."),
                 as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")):
    """Check every cache invariant (exit 0 when consistent); --repair fixes what it finds."""
    from .inspect import verify_cache

    cfg = _load(config, cache_dir=cache_dir)
    try:
        report = verify_cache(cfg, repair=repair, progress=not as_json and sys.stderr.isatty())
    except StartupError as e:
        _fail(str(e), 1)
    findings = [{"invariant": f.invariant, "detail": f.detail, "repaired": f.repaired} for f in report.findings]
    if as_json:
        typer.echo(json.dumps({"consistent": report.consistent, "findings": findings,
                               "chunks_checked": report.chunks_checked, "bytes": report.total_recorded,
                               "bytes_on_disk": report.total_on_disk}, sort_keys=True))
    else:
        for f in findings:
            typer.echo(f"{f['invariant']}: {f['detail']}{' (repaired)' if f['repaired'] else ''}")
        typer.echo(f"{report.chunks_checked} chunks checked, index total {report.total_recorded} bytes, "
                   f"{report.total_on_disk} bytes on disk: "
                   f"{'consistent' if report.consistent else ('repaired' if repair else 'INCONSISTENT')}")
    if not report.consistent and not repair:
        raise typer.Exit(1)


def version_callback(value: bool):
    if value:
        typer.echo(f"musicfs {__version__}")
        raise typer.Exit()


@app.callback()
def common(version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                        help="Print the version and exit.")):
    pass


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    # `musicfs /mnt/music ...` is `musicfs mount /mnt/music ...`
    if args and not args[0].startswith("-") and args[0] not in SUBCOMMANDS:
        args.insert(0, "mount")
    app(args=args, prog_name="musicfs")


if __name__ == "__main__":
    main()
