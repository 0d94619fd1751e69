"""The command line as a newcomer meets it: the installed `musicfs` command, its help and its
errors, run as a user runs them (a subprocess of the console script, not the module)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from musicfs import cli

from tests.support.mounts import ROOT, force_unmount, is_mounted, tree

# The console script pip installed beside this interpreter (make test: .venv/bin/musicfs).
MUSICFS = Path(sys.executable).with_name("musicfs")


def musicfs(*args, cwd=None, env=None, timeout=60) -> subprocess.CompletedProcess:
    assert MUSICFS.exists(), f"no {MUSICFS}: install musicfs into this environment (make install)"
    environment = {**os.environ, "COLUMNS": "80", **(env or {})}
    return subprocess.run([str(MUSICFS), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or ROOT, env=environment)


def isolated_env(tmp_path: Path) -> dict:
    """No config file, log or status of the user's own musicfs in the way."""
    (tmp_path / "xdg-run").mkdir(mode=0o700, exist_ok=True)
    return {"XDG_CONFIG_HOME": str(tmp_path / "xdg-config"), "XDG_STATE_HOME": str(tmp_path / "xdg-state"),
            "XDG_RUNTIME_DIR": str(tmp_path / "xdg-run")}


def unmount(mountpoint: Path, env: dict) -> None:
    """`musicfs unmount` as the user would; fusermount -u -z if that fails, so no test leaves a mount."""
    if is_mounted(mountpoint):
        result = musicfs("unmount", mountpoint, env=env)
        if result.returncode != 0:
            force_unmount(mountpoint)
        assert result.returncode == 0, result.stderr


def command_paths(group=None, prefix=()) -> list[tuple[str, ...]]:
    """Every command and group of the app, as the words that name it (("cache", "stats"), ...)."""
    group = group or typer.main.get_command(cli.app)
    paths = []
    for name, command in group.commands.items():
        paths.append((*prefix, name))
        if hasattr(command, "commands"):
            paths += command_paths(command, (*prefix, name))
    return paths


# -- help ---------------------------------------------------------------------------------------

def test_help_of_every_command_uses_plain_metavars_and_keeps_brackets():
    paths = command_paths()
    assert {("mount",), ("unmount",), ("health",), ("cache",), ("cache", "stats")} <= set(paths)
    for path in [(), *paths]:
        result = musicfs(*path, "--help")
        assert result.returncode == 0 and result.stderr == "", (path, result.stderr)
        assert result.stdout.startswith(f"Usage: {' '.join(('musicfs', *path))} "), (path, result.stdout)
        # typer's own labels (<float>, <list[Path]>, {mountpoint}) are not in any help
        assert not re.search(r"<[a-z][^>]*>|\{[a-z]+\}", result.stdout), (path, result.stdout)
        usage = result.stdout.splitlines()[0]
        assert "[[" not in usage and "......" not in usage and "...]..." not in usage, usage


def test_mount_help_says_what_each_option_takes():
    text = musicfs("mount", "--help").stdout
    assert text.startswith("Usage: musicfs mount [OPTIONS] MOUNTPOINT\n")
    for option in ("-c, --config PATH ", "-O, --origin DIR ", "--cache-dir DIR ", "--cache-size SIZE ",
                   "--read-timeout SECONDS ", "--layout tags|paths ", "--template TEMPLATE ", "-o OPTIONS "):
        assert re.search(rf"^  {re.escape(option)}", text, re.M), (option, text)
    # flags take no value: their help follows right after the names
    assert re.search(r"^  -f, --foreground +Stay in the foreground", text, re.M), text
    assert re.search(r"^  -v, --verbose +Debug logging\.$", text, re.M), text
    # the config keys they override, brackets and all (rich markup ate "[cache]" once)
    for key in ("[cache].dir", "[cache].max_size", "[fuse].read_timeout", "[layout].mode", "[layout].template"):
        assert key in text, (key, text)


def test_health_help_names_the_timeout_key():
    assert "bounded by [health].timeout" in musicfs("health", "--help").stdout


def test_top_level_help_mentions_the_mountpoint_shorthand():
    text = musicfs("--help").stdout
    assert "musicfs MOUNTPOINT [OPTIONS]   means musicfs mount MOUNTPOINT [OPTIONS]" in text, text


# -- usage errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("args, line", [
    (["/tmp", "--read-timeout", "abc"], "musicfs: --read-timeout: 'abc' is not a number"),
    (["mount", "/tmp", "--read-timeout", "inf"], "musicfs: --read-timeout: 'inf' is not a number"),
    (["/tmp", "--read-timeout"], "musicfs: option '--read-timeout' requires an argument (see musicfs mount --help)"),
    (["mount"], "musicfs: missing MOUNTPOINT (see musicfs mount --help)"),
    (["unmount"], "musicfs: missing MOUNTPOINT (see musicfs unmount --help)"),
    (["/tmp", "--foregruond"], "musicfs: no option --foregruond; did you mean --foreground?"),
    (["cache", "stats", "--json=yes"], "musicfs: option '--json' does not take a value (see musicfs cache stats --help)"),
    (["--frobnicate"], "musicfs: no option --frobnicate (see musicfs mount --help)"),   # options first: a mount
])
def test_a_usage_error_is_one_line_and_exit_2(args, line):
    result = musicfs(*args)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", line + "\n")


@pytest.mark.parametrize("args, line", [
    (["health", "--frobnicate"], "MUSICFS UNKNOWN - usage: no option --frobnicate (see musicfs health --help)"),
    (["health", "/mnt/a", "/mnt/b"],
     "MUSICFS UNKNOWN - usage: got unexpected extra argument(s) (/mnt/b) (see musicfs health --help)"),
])
def test_a_usage_error_of_the_probe_is_unknown_in_the_plugin_convention(args, line):
    # cron and Nagios run the probe: misused, it says UNKNOWN (3), not CRITICAL (2), on stdout.
    result = musicfs(*args)
    assert (result.returncode, result.stdout, result.stderr) == (3, line + "\n", "")
    result = musicfs(*args, "--json")      # (and in JSON when JSON was asked for)
    assert result.returncode == 3 and json.loads(result.stdout)["status"] == "UNKNOWN", result.stdout


def test_a_bad_value_the_config_rejects_is_one_line_too():
    result = musicfs("/tmp", "--read-timeout", "-1")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("musicfs: --read-timeout: "), result.stderr


# -- a mistyped command -------------------------------------------------------------------------

def test_a_mistyped_command_is_not_taken_for_a_mountpoint(tmp_path):
    for args, line in ((["helth"], "musicfs: no command 'helth'; did you mean 'health'?"),
                       (["umount", "/mnt/music"], "musicfs: no command 'umount'; did you mean 'unmount'?"),
                       (["pni", "x.flac"], "musicfs: no command 'pni'; did you mean 'pin'?"),
                       (["cache", "stat"], "musicfs: no command 'cache stat'; did you mean 'cache stats'?"),
                       (["cache", "frob"], "musicfs: no command 'cache frob' (see musicfs cache --help)")):
        result = musicfs(*args, cwd=tmp_path)
        assert (result.returncode, result.stdout, result.stderr) == (2, "", line + "\n"), args
    # a word close to no command is a mountpoint, as before
    result = musicfs("music", cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.startswith("musicfs: mountpoint "), result.stderr


def test_commands_added_to_the_app_are_known_to_the_shorthand_and_the_typo_check():
    """What `musicfs` routes comes from the typer app, so a command registered later (status,
    rescan, pin...) is run, and a typo of it named, without a list to keep up to date."""
    script = ("import sys\n"
              "from musicfs import cli\n"
              "@cli.app.command()\n"
              "def rescan_now():\n"
              "    print('rescanning')\n"
              "cli.main(sys.argv[1:])\n")
    ran = subprocess.run([sys.executable, "-c", script, "rescan-now"], capture_output=True, text=True, cwd=ROOT)
    assert (ran.returncode, ran.stdout) == (0, "rescanning\n"), ran.stderr
    typo = subprocess.run([sys.executable, "-c", script, "rescan-nwo"], capture_output=True, text=True, cwd=ROOT)
    assert (typo.returncode, typo.stderr) == (2, "musicfs: no command 'rescan-nwo'; did you mean 'rescan-now'?\n")


def test_help_as_a_word():
    assert musicfs("help").stdout == musicfs("--help").stdout != ""
    result = musicfs("help", "cache", "stats")
    assert result.returncode == 0 and result.stdout.startswith("Usage: musicfs cache stats ")


@pytest.mark.mount
def test_an_existing_directory_named_like_a_command_typo_still_mounts(tmp_path):
    origin = tmp_path / "music"
    (origin / "a").mkdir(parents=True)
    (origin / "a" / "song.flac").write_bytes(b"fLaC" + bytes(1000))
    (tmp_path / "helth").mkdir()
    env = isolated_env(tmp_path)
    try:
        result = musicfs("helth", "-O", origin, "--cache-dir", tmp_path / "cache", "--layout", "paths",
                         cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        assert is_mounted(tmp_path / "helth")
        assert (tmp_path / "helth" / "a" / "song.flac").read_bytes() == (origin / "a" / "song.flac").read_bytes()
    finally:
        unmount(tmp_path / "helth", env)


@pytest.mark.mount
def test_an_option_libfuse_does_not_know_is_named_and_a_usage_error(tmp_path):
    origin, mountpoint = tmp_path / "music", tmp_path / "mnt"
    origin.mkdir()
    mountpoint.mkdir()
    env = isolated_env(tmp_path)
    try:
        result = musicfs(mountpoint, "-O", origin, "--cache-dir", tmp_path / "cache", "-o", "nonsense_opt", env=env)
        assert result.returncode == 2
        assert result.stderr.strip() == ("musicfs: -o: unknown option `nonsense_opt'; see man mount.fuse for the "
                                         "options libfuse knows")
        assert not is_mounted(mountpoint)
    finally:
        unmount(mountpoint, env)


def test_a_mount_and_unmount_leave_nothing_behind_in_the_runtime_dir(tmp_path):
    origin, mountpoint = tmp_path / "music", tmp_path / "mnt"
    origin.mkdir()
    (origin / "a.flac").write_bytes(b"a" * 100)
    mountpoint.mkdir()
    env = isolated_env(tmp_path)
    try:
        result = musicfs(mountpoint, "-O", origin, "--cache-dir", tmp_path / "cache", "--layout", "paths", env=env)
        assert result.returncode == 0, result.stderr
        assert (mountpoint / "a.flac").read_bytes() == b"a" * 100
        assert musicfs("unmount", mountpoint, env=env).returncode == 0
    finally:
        unmount(mountpoint, env)
    # (no empty musicfs-*.stderr for each mount; the status file and lock go with the daemon)
    assert sorted(p.name for p in (tmp_path / "xdg-run").iterdir()) == []


def test_unmount_of_a_path_that_does_not_exist_and_an_origin_given_twice(tmp_path):
    result = musicfs("unmount", tmp_path / "nowhere")
    assert (result.returncode, result.stderr.strip()) == (1, f"musicfs: {tmp_path / 'nowhere'} does not exist")
    (tmp_path / "mnt").mkdir()
    twice = musicfs(tmp_path / "mnt", "-O", tmp_path, "-O", f"{tmp_path}/", env=isolated_env(tmp_path))
    assert (twice.returncode, twice.stderr.strip()) == (2, f"musicfs: -O {tmp_path} is given twice; give each "
                                                           f"origin directory once")


def test_health_without_config_or_daemon_is_unknown_not_a_critical_about_a_default_library(tmp_path):
    result = musicfs("health", env=isolated_env(tmp_path))
    assert result.returncode == 3
    assert result.stdout.startswith("MUSICFS UNKNOWN - configuration: no config file (") and "-c CONFIG" in result.stdout


# -- cache stats --------------------------------------------------------------------------------

@pytest.mark.mount
def test_cache_stats_shows_human_sizes_and_the_running_daemons_limit(tmp_path):
    origin, mountpoint, cache = tmp_path / "music", tmp_path / "mnt", tmp_path / "cache"
    origin.mkdir()
    mountpoint.mkdir()
    (origin / "song.flac").write_bytes(os.urandom(3 * 1024 * 1024 + 100))
    env = isolated_env(tmp_path)
    try:
        result = musicfs(mountpoint, "-O", origin, "--cache-dir", cache, "--cache-size", "200M", "--layout", "paths",
                         env=env)
        assert result.returncode == 0, result.stderr
        assert (mountpoint / "song.flac").read_bytes() == (origin / "song.flac").read_bytes()
        # no --cache-size here: the config's limit is the default 10G, the daemon's 200M
        stats = json.loads(musicfs("cache", "stats", "--cache-dir", cache, "--json", env=env).stdout)
        assert stats["bytes"] == 3 * 1024 * 1024 + 100 and stats["chunks"] == 4
        assert (stats["max_bytes"], stats["config_max_bytes"], stats["limit_from"]) == \
            (200 * 1024 * 1024, 10 * 1024 ** 3, "daemon")
        text = musicfs("cache", "stats", "--cache-dir", cache, env=env)
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        assert f"stored       3 MiB ({3 * 1024 * 1024 + 100} bytes)" in lines, text.stdout
        assert "limit        200 MiB, the running daemon's (the config says 10 GiB)" in lines, text.stdout
        assert "chunk size   1 MiB" in lines and f"daemon       pid {stats['daemon_pid']}" in lines, text.stdout
    finally:
        unmount(mountpoint, env)
    stopped = musicfs("cache", "stats", "--cache-dir", cache, env=env).stdout.splitlines()
    assert "limit        10 GiB, from the config" in stopped and "daemon       not running" in stopped, stopped


# -- make demo ----------------------------------------------------------------------------------

DEMO_TREE = {
    "Sine Quartet/Pure Tones (2019)/01 A Major.flac", "Sine Quartet/Pure Tones (2019)/04 G Major.flac",
    "The Harmonics/Overtones (2021)/02 Second Partial.mp3",
    "Ångström Ensemble/Ünïcode Études (2023)/03 Étude in B♭.ogg",
}


def make(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


@pytest.mark.mount
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("make") is None, reason="needs ffmpeg and make")
def test_make_demo_serves_playable_tagged_audio_and_demo_stop_can_run_twice(tmp_path):
    mountpoint = tmp_path / "demo-mnt"
    env = isolated_env(tmp_path)
    # -o install: this environment is the one installed; the demo is what is tested
    variables = [f"VENV={Path(sys.executable).parent.parent}", f"PYTHON={sys.executable}",
                 f"DEMO_DIR={tmp_path / 'demo'}", f"DEMO_MNT={mountpoint}"]
    try:
        demo = make("-o", "install", "demo", *variables, env=env)
        assert demo.returncode == 0, demo.stderr
        assert is_mounted(mountpoint)
        shown = tree(mountpoint)
        assert len(shown) == 11 and DEMO_TREE <= shown, shown   # placed by their tags
        for name in sorted(DEMO_TREE):
            decoded = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(mountpoint / name),
                                      "-f", "null", "-"], capture_output=True, text=True, timeout=60)
            assert decoded.returncode == 0 and decoded.stderr == "", (name, decoded.stderr)
        stop = make("demo-stop", *variables, env=env)
        assert stop.returncode == 0 and not is_mounted(mountpoint), stop.stderr
        again = make("demo-stop", *variables, env=env)
        assert (again.returncode, again.stdout, again.stderr) == (0, f"{mountpoint} is not mounted\n", "")
    finally:
        unmount(mountpoint, env)
