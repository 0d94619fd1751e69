"""The command line (typer). ``musicfs MOUNTPOINT`` is short for ``musicfs mount MOUNTPOINT``."""
from __future__ import annotations

import difflib
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup

from . import __version__, config as config_module
from .errors import CommandError, ConfigError

# The click that typer runs on (its own copy since typer 0.2x, click itself before): its errors.
click_errors = sys.modules[typer.BadParameter.__module__]


class Command(TyperCommand):
    """Help in the README's words: `--read-timeout SECONDS`, `MOUNTPOINT`, flags bare.

    typer labels every value with its Python type (`<float>`, `<list[Path]>`) and writes a
    required argument as `{mountpoint} <path>`. A parameter declared without a metavar gets its
    own name in capitals, the way click always did."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.metavar is None and (param.param_type_name == "argument"
                                          or not (param.is_flag or param.count)):
                param.metavar = param.name.upper()

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click_errors.UsageError as e:
            e.ctx = e.ctx or ctx   # typer's parser leaves it out: the one-line error names the command
            raise

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":   # a metavar may already say "..." or "[...]"
                name = param.metavar
                name += "..." if param.nargs != 1 and "..." not in name else ""
                pieces.append(name if param.required or name.startswith("[") else f"[{name}]")
        return pieces

    def format_options(self, ctx, formatter) -> None:
        params = self.get_params(ctx)
        arguments = [(p.metavar, getattr(p, "help", None) or "") for p in params if p.param_type_name == "argument"]
        options = [record for p in params if p.param_type_name == "option" and (record := p.get_help_record(ctx))]
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class UnknownCommand(click_errors.UsageError):
    """`musicfs helth`, `musicfs cache stat`: one line naming the command meant, if one is close.
    `group`: the words before the unknown one ("cache ", or "" at the top)."""

    def __init__(self, group: str, word: str, commands, ctx=None):
        guess = _closest(word, commands)
        hint = f"; did you mean '{group}{guess}'?" if guess else f" (see musicfs {group}--help)"
        super().__init__(f"no command '{group}{word}'{hint}", ctx)


class Group(TyperGroup):
    """A command group whose unknown command is an UnknownCommand."""

    def resolve_command(self, ctx, args):
        if args and not args[0].startswith("-") and self.get_command(ctx, args[0]) is None:
            group = "".join(f"{word} " for word in ctx.command_path.split()[1:])
            raise UnknownCommand(group, args[0], self.list_commands(ctx), ctx)
        return super().resolve_command(ctx, args)


class App(typer.Typer):
    """typer.Typer with musicfs's defaults (make new command groups with App too): plain help,
    no rich markup (it takes `[cache]` in `[cache].dir` for a style tag and drops it), our help
    style and error lines for every command registered."""

    def __init__(self, **kwargs):
        kwargs.setdefault("cls", Group)
        kwargs.setdefault("rich_markup_mode", None)
        kwargs.setdefault("no_args_is_help", True)
        super().__init__(**kwargs)

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)


app = App(add_completion=False, pretty_exceptions_enable=False, help="""\
musicfs: one read-only music library from several origins, with a verified local cache.

\b
  musicfs MOUNTPOINT [OPTIONS]   means musicfs mount MOUNTPOINT [OPTIONS]
  musicfs COMMAND --help         what a command does and takes""")
cache_app = App(help="Inspect and check the chunk cache.")
app.add_typer(cache_app, name="cache")

ConfigOption = typer.Option(None, "-c", "--config", metavar="PATH",
                            help="Config file (default $XDG_CONFIG_HOME/musicfs/config.toml).")
CacheDirOption = typer.Option(None, "--cache-dir", metavar="DIR", help="Overrides [cache].dir.")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _param_name(param) -> str:
    """How the user wrote (or should write) a parameter: --read-timeout, -o, MOUNTPOINT."""
    if param.param_type_name == "argument":
        return param.metavar or param.name.upper()
    return max(param.opts, key=len)


def _closest(word: str, choices, cutoff: float = 0.6) -> str | None:
    """The one choice close to `word` (a typo of it), or None. difflib's 0.6 finds `pni` for
    `pin`; options ask for 0.7, or every `--x` would be close to some `--y`."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return close[0] if close else None


def usage_line(error) -> str:
    """A usage error as one line: what is wrong and, unless it is a bad value, where to look."""
    see = f" (see {error.ctx.command_path} --help)" if error.ctx is not None else ""
    param = getattr(error, "param", None)
    if isinstance(error, click_errors.MissingParameter) and param is not None:
        return f"missing {_param_name(param)}{see}"
    if isinstance(error, click_errors.BadParameter) and param is not None:
        return f"{_param_name(param)}: {_one_line(error.message)}"
    if isinstance(error, UnknownCommand):
        return error.message
    if isinstance(error, click_errors.NoSuchOption):
        guess = _closest(error.option_name, error.possibilities or (), cutoff=0.7)
        return f"no option {error.option_name}{f'; did you mean {guess}?' if guess else see}"
    message = _one_line(error.format_message()).rstrip(".")
    return message[:1].lower() + message[1:] + see


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds):
        raise typer.BadParameter(f"{value!r} is not a number")
    return seconds


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
    mountpoint: Path = typer.Argument(..., metavar="MOUNTPOINT", help="Where to mount the library (an existing directory)."),
    config: Optional[Path] = ConfigOption,
    origin: Optional[List[Path]] = typer.Option(None, "-O", "--origin", metavar="DIR", help="A local origin directory; repeatable; replaces the config's origins."),
    cache_dir: Optional[Path] = CacheDirOption,
    cache_size: Optional[str] = typer.Option(None, "--cache-size", metavar="SIZE", help="Overrides [cache].max_size (e.g. 500M, 10G)."),
    read_timeout: Optional[float] = typer.Option(None, "--read-timeout", metavar="SECONDS", parser=_seconds, help="Overrides [fuse].read_timeout."),
    layout: Optional[str] = typer.Option(None, "--layout", metavar="tags|paths", help="Overrides [layout].mode: tags (the tree from audio tags) or paths (the origins' folders merged)."),
    template: Optional[str] = typer.Option(None, "--template", metavar="TEMPLATE", help="Overrides [layout].template, e.g. '$albumartist/$album/$track $title'."),
    foreground: bool = typer.Option(False, "-f", "--foreground", help="Stay in the foreground (default: daemonize, return once mounted)."),
    fuse_option: Optional[List[str]] = typer.Option(None, "-o", metavar="OPTIONS", help="Extra FUSE options, comma separated (e.g. allow_other)."),
    verbose: int = typer.Option(0, "-v", "--verbose", count=True, show_default=False, help="Debug logging."),
):
    """Mount the library at MOUNTPOINT."""
    from .daemon import process as daemon

    def load_config():   # again on SIGHUP: the same file, the same command-line overrides
        return config_module.load(config, origins=origin, cache_dir=cache_dir, cache_size=cache_size,
                                  read_timeout=read_timeout, layout=layout, template=template)
    try:
        daemon.mount(load_config(), mountpoint, foreground=foreground,
                     fuse_options=parse_fuse_options(fuse_option or []), verbose=verbose, load_config=load_config)
    except ConfigError as e:
        _fail(str(e), 2)
    except CommandError as e:
        _fail(str(e), 1)


# Mountpoint arguments are str, not Path: typer stat()s every Path argument before the command
# runs, and a stat of a mount whose daemon does not answer (stopped, wedged) never returns -
# `musicfs health MOUNTPOINT` and `musicfs unmount` must work exactly then.
@app.command()
def unmount(mountpoint: str = typer.Argument(..., metavar="MOUNTPOINT", help="The mountpoint to unmount.")):
    """Unmount MOUNTPOINT and wait for its daemon to finish."""
    from .daemon import process as daemon

    try:
        note = daemon.unmount(Path(mountpoint))
    except CommandError as e:
        _fail(str(e), 1)
    if note:
        typer.echo(f"musicfs: {note}", err=True)


@app.command()
def health(mountpoint: Optional[str] = typer.Argument(None, metavar="MOUNTPOINT", help="The mount to check (the daemon whose status names it); default: the daemon of the config's cache."),
           config: Optional[Path] = ConfigOption,
           as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the plugin line."),
           prometheus: Optional[Path] = typer.Option(None, "--prometheus", metavar="FILE", help="Also write the verdict as Prometheus metrics to FILE (node_exporter's textfile collector reads *.prom), atomically, whatever the verdict; a failure to write it is one line on stderr and leaves the exit code alone.")):
    """The cron probe: check the daemon and its mount, the origins and the cache. With a live
    daemon, each origin's verdict is the daemon's own (at most two health rounds old): the
    probe needs no origin credentials; it checks origins itself (bounded by [health].timeout)
    only without a daemon or a recent verdict. Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
    (Nagios plugin convention). Always finishes within the timeout."""
    import logging
    import os

    from . import logs
    from .health.probe import UNKNOWN, probe
    from .status import read_status
    from .metrics import write_textfile_or_warn

    mountpoint = Path(mountpoint) if mountpoint is not None else None   # (a str argument: see the comment above unmount)
    try:
        # With a MOUNTPOINT the daemon serving it publishes its own config; -c is the fallback.
        cfg = config_module.load(config) if config is not None or mountpoint is None else None
        if cfg is not None and cfg.source is None and mountpoint is None and read_status(cfg.cache.dir) is None:
            raise ConfigError(f"no config file ({config_module.default_config_path()}) and no musicfs running "
                              f"on the default cache: give the MOUNTPOINT to check, or -c CONFIG")
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


@app.command()
def status(targets: Optional[List[str]] = typer.Argument(None, metavar="[MOUNTPOINT | FILE...]",
                                                          help="A mountpoint (the daemon), or files inside a mount."),
           config: Optional[Path] = ConfigOption,
           as_json: bool = typer.Option(False, "--json", help="Print JSON (exact integers) instead of text.")):
    """The live daemon (origins, cache, scans, uptime), or per file of a mount: the origin
    serving it, its path there, replicas and how much of it is cached."""
    from .commands import mounts as operations

    targets = [Path(t) for t in targets or ()]   # (str arguments: see the comment above unmount)
    try:
        if not targets or (len(targets) == 1 and operations.live_mount(targets[0]) is not None):
            cfg = None if targets else _load(config)
            mount = operations.mount_for(targets[0] if targets else None, cfg.cache.dir if cfg else None)
            typer.echo(json.dumps(operations.daemon_report(mount), sort_keys=True) if as_json
                       else "\n".join(operations.format_daemon(mount)))
            return
        reports = operations.file_reports(list(targets))
    except CommandError as e:
        _fail(str(e), 1)
    if as_json:
        typer.echo(json.dumps(reports if len(reports) != 1 else reports[0], sort_keys=True))
    else:
        lines = [line for report in reports for line in operations.format_file(report)]
        if lines:
            typer.echo("\n".join(lines))
        for report in reports:
            error = operations.format_file_error(report)
            if error:
                typer.echo(f"musicfs: {error}", err=True)
    if any("error" in report for report in reports):
        raise typer.Exit(1)


@app.command()
def rescan(mountpoint: str = typer.Argument(..., help="The mount whose origins to rescan.")):
    """Rescan the origins now and print what changed (kill -USR1 on the daemon starts one
    without waiting)."""
    from .commands import mounts as operations

    try:
        result = operations.rescan(operations.mount_for(Path(mountpoint), None))
    except CommandError as e:
        _fail(str(e), 1)
    typer.echo("\n".join(operations.format_rescan(result)))
    if not all(origin.get("complete") for origin in result.get("origins", [])):
        raise typer.Exit(1)


@app.command()
def reload(mountpoint: str = typer.Argument(..., help="The mount whose daemon reads its config file again.")):
    """Read the mount's config file again and apply it without unmounting; print what changed.
    A config that is wrong or cannot be applied is refused (exit 1, naming the file and key)
    and the mount keeps the configuration it runs with. (kill -HUP on the daemon does the same,
    with the outcome in its log.)"""
    from .commands import mounts as operations

    try:
        result = operations.reload(operations.mount_for(Path(mountpoint), None),
                                   lambda note: typer.echo(f"musicfs: waiting for {note['waiting']}", err=True))
    except CommandError as e:
        _fail(f"reload refused, {mountpoint} keeps its configuration: {e}", 1)
    typer.echo(result["summary"])
    for change in result["changes"] or ["(no setting changed)"]:
        typer.echo(f"  {change}")


# (a query may start with "-": a negated term is not an option)
@app.command(context_settings={"ignore_unknown_options": True})
def search(mountpoint: Path = typer.Argument(..., help="The mount to search."),
           words: List[str] = typer.Argument(..., metavar="QUERY...",
                                             help='A query, e.g. miles year:1955..1965 -genre:fusion (one argument '
                                                  'or several, joined with spaces; see the README, "Search and '
                                                  'collections").'),
           limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Print at most N tracks."),
           as_json: bool = typer.Option(False, "--json", help="One JSON object: count and the tracks' fields.")):
    """The tracks of a mount a query matches, their paths in the mount one a line, in album
    artist, album, disc, track order. Exit 1 when nothing matched, 2 when the query does not
    parse."""
    from .commands import mounts as operations
    from .catalog.query import QueryError, parse

    query = " ".join(words)
    try:
        parse(query)
    except QueryError as e:
        _fail(f"bad query: {e}", 2)
    try:
        result = operations.search(operations.mount_for(mountpoint, None), query, limit)
    except CommandError as e:
        _fail(str(e), 1)
    if as_json:
        typer.echo(json.dumps(result, sort_keys=True, ensure_ascii=False))
    else:
        for track in result["tracks"]:
            typer.echo(track["path"])
    if not result["count"]:
        raise typer.Exit(1)


@app.command()
def pin(paths: List[Path] = typer.Argument(..., metavar="PATH...", help="Files or folders inside a mount."),
        unpin: bool = typer.Option(False, "--unpin", help="Release these pins instead."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")):
    """Fetch files or folders of a mount into the cache and keep them there (they play with
    every origin gone); --unpin releases them. Exit 1 if something did not fit or failed."""
    from .commands import mounts as operations

    bar = operations.ProgressBar()
    try:
        results = operations.pin(paths, unpin, progress=None if as_json else bar)
    except CommandError as e:
        bar.end()
        _fail(str(e), 1)
    bar.end()
    if as_json:
        typer.echo(json.dumps([result for _, result in results] if len(results) != 1 else results[0][1],
                              sort_keys=True))
    else:
        for _, result in results:
            typer.echo("\n".join(operations.format_pin(result, unpin)))
    if not unpin and any(result["not_fitting"] or result["failed"] or result.get("skipped")
                         for _, result in results):
        raise typer.Exit(1)


@cache_app.command("stats")
def cache_stats(config: Optional[Path] = ConfigOption, cache_dir: Optional[Path] = CacheDirOption,
                as_json: bool = typer.Option(False, "--json", help="Print one JSON object (sizes in bytes).")):
    """Print the index's view of the cache: chunks, size, limit, hits, misses, passthrough."""
    from .commands.cache import cache_stats as collect
    from .status import read_status

    cfg = _load(config, cache_dir=cache_dir)
    try:
        stats = collect(cfg)
    except CommandError as e:
        _fail(str(e), 1)
    # The limit that counts is the running daemon's (it may have been started with --cache-size).
    status = read_status(cfg.cache.dir)
    published = status.config.cache.max_size if status is not None and status.config is not None else None
    from_daemon = stats.get("daemon_pid") is not None and published is not None
    stats.update(config_max_bytes=stats["max_bytes"], limit_from="daemon" if from_daemon else "config")
    if from_daemon:
        stats["max_bytes"] = published
    if as_json:
        typer.echo(json.dumps(stats, sort_keys=True))
        return
    limit = config_module.format_size(stats["max_bytes"])
    if from_daemon:
        limit += ", the running daemon's"
        if stats["config_max_bytes"] != stats["max_bytes"]:
            limit += f" (the config says {config_module.format_size(stats['config_max_bytes'])})"
    else:
        limit += ", from the config"
    rows = [("cache dir", stats["cache_dir"]), ("chunks", stats["chunks"]),
            ("stored", f"{config_module.format_size(stats['bytes'])} ({stats['bytes']} bytes)"),
            ("pinned", config_module.format_size(stats["pinned_bytes"])), ("limit", limit),
            ("chunk size", config_module.format_size(stats["chunk_size"]) if stats["chunk_size"] else "not set yet"),
            ("hits", stats["hits"]), ("misses", stats["misses"]),
            ("passthrough", "yes (the cache disk is not written)" if stats["passthrough"] else "no"),
            ("daemon", f"pid {stats['daemon_pid']}" if stats["daemon_pid"] is not None else "not running")]
    for label, value in rows:
        typer.echo(f"{label:12} {value}")


@cache_app.command("verify")
def cache_verify(config: Optional[Path] = ConfigOption, cache_dir: Optional[Path] = CacheDirOption,
                 repair: bool = typer.Option(False, "--repair", help="Fix what is found."),
                 as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")):
    """Check every cache invariant (exit 0 when consistent); --repair fixes what it finds."""
    from .commands.cache import verify_cache

    cfg = _load(config, cache_dir=cache_dir)
    try:
        report = verify_cache(cfg, repair=repair, progress=not as_json and sys.stderr.isatty())
    except CommandError as e:
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


def route(args: list[str], group) -> list[str]:
    """`musicfs /mnt/music [OPTIONS]` (options first too) is `musicfs mount /mnt/music [OPTIONS]`;
    `musicfs help [COMMAND]` is `musicfs [COMMAND] --help`. A first word that names no existing
    path, has no '/' and is close to a command is a typo of it: `musicfs helth` is not a mount.
    The commands are the group's, whoever registered them."""
    commands = group.list_commands(None)
    own_options = {opt for param in group.params for opt in param.opts} | {"--help"}
    if not args or args[0] in commands or args[0] in own_options:
        return args
    first = args[0]
    if not first.startswith("-") and "/" not in first and not os.path.lexists(first):
        if first == "help":
            return [*args[1:], "--help"]
        if _closest(first, commands):
            raise UnknownCommand("", first, commands)
    return ["mount", *args]


def main(argv: list[str] | None = None) -> None:
    # Commands that set up no log file (cache verify, status...) must not have logging's
    # last-resort handler print their warnings to stderr beside their own output.
    logging.getLogger("musicfs").addHandler(logging.NullHandler())
    args = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    try:
        code = command.main(args=route(args, command), prog_name="musicfs", standalone_mode=False)
    except click_errors.UsageError as e:
        if isinstance(e, getattr(click_errors, "NoArgsIsHelpError", ())):
            e.show()   # `musicfs` or `musicfs cache` alone: the help
            code = 2
        elif e.ctx is not None and e.ctx.command.name == "health":
            # The probe speaks the Nagios plugin convention even when misused: a status line on
            # stdout and 3 (UNKNOWN), which monitoring tells from CRITICAL (2).
            summary = f"usage: {usage_line(e)}"
            typer.echo(json.dumps({"status": "UNKNOWN", "exit_code": 3, "summary": summary}) if "--json" in args
                       else f"MUSICFS UNKNOWN - {summary}")
            code = 3
        else:
            typer.echo(f"musicfs: {usage_line(e)}", err=True)
            code = 2
    except click_errors.ClickException as e:
        typer.echo(f"musicfs: {_one_line(e.format_message())}", err=True)
        code = e.exit_code
    except typer.Abort:
        typer.echo("musicfs: aborted", err=True)
        code = 1
    # A command's return value is not an exit status; typer.Exit(n) comes back as n.
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
