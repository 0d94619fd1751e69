"""Config parsing and its errors (no FUSE)."""

import pytest

from musicfs import config as c
from musicfs.errors import ConfigError


def test_sizes_accept_suffixes():
    assert c.parse_size("500M") == 500 << 20
    assert c.parse_size("10G") == 10 << 30
    assert c.parse_size("1.5K") == 1536
    assert c.parse_size("2TB") == 2 << 40
    assert c.parse_size(4096) == 4096


def test_sizes_are_shown_in_the_units_they_are_given_in():
    assert [c.format_size(n) for n in (0, 1023, 1536, 10 << 30, 1288490188, None)] == \
        ["0 B", "1023 B", "1.5 KiB", "10 GiB", "1.2 GiB", "?"]
    assert c.parse_size(c.format_size(500 << 20).replace(" ", "").replace("iB", "")) == 500 << 20


@pytest.mark.parametrize("bad", ["ten gigs", "10X", "", "-5M"])
def test_bad_size_names_the_key(bad):
    with pytest.raises(ConfigError, match="cache.max_size"):
        c.parse({"cache": {"max_size": bad}})


@pytest.mark.parametrize("tiny", ["500", 500, "0", "512K"])
def test_a_cache_that_holds_no_chunk_is_refused(tiny):
    """max_size = "500" is 500 bytes, not 500 MiB: a cache that could not hold one chunk."""
    with pytest.raises(ConfigError, match=r"cache\.max_size: .* does not hold one 1 MiB chunk; give a size such as 500M"):
        c.parse({"cache": {"max_size": tiny}})
    assert c.parse({"cache": {"max_size": "1M"}}).cache.max_size == 1 << 20


def test_unknown_key_is_rejected_by_name():
    with pytest.raises(ConfigError, match=r"cache\.max_sise: unknown key"):
        c.parse({"cache": {"max_sise": "1G"}})
    with pytest.raises(ConfigError, match=r"fusee: unknown section"):
        c.parse({"fusee": {}})
    with pytest.raises(ConfigError, match=r"origins\[0\]\.pth: unknown key"):
        c.parse({"origins": [{"pth": "/x"}]})


def test_wrong_types_are_rejected_by_name():
    with pytest.raises(ConfigError, match=r"fuse\.read_timeout: expected"):
        c.parse({"fuse": {"read_timeout": "soon"}})
    with pytest.raises(ConfigError, match=r"health\.interval: expected"):
        c.parse({"health": {"interval": True}})
    with pytest.raises(ConfigError, match=r"fuse\.read_timeout: must be a positive"):
        c.parse({"fuse": {"read_timeout": 0}})
    with pytest.raises(ConfigError, match=r"log\.level"):
        c.parse({"log": {"level": "loud"}})


def test_origin_errors():
    with pytest.raises(ConfigError, match=r"origins\[0\] \(nas\)\.path: missing"):
        c.parse({"origins": [{"name": "nas"}]})
    with pytest.raises(ConfigError, match=r"used twice"):
        c.parse({"origins": [{"name": "a", "path": "/x"}, {"name": "a", "path": "/y"}]})
    with pytest.raises(ConfigError, match=r"origins\[0\]\.type: unknown origin type 'ftp'"):
        c.parse({"origins": [{"path": "/x", "type": "ftp"}]})
    with pytest.raises(ConfigError, match=r"empty"):
        c.parse({"origins": []})


def test_defaults_follow_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xc"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xs"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xcfg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = c.load()
    assert cfg.cache.dir == tmp_path / "xc" / "musicfs"
    assert cfg.log.file == tmp_path / "xs" / "musicfs" / "musicfs.log"
    assert [o.path for o in cfg.origins] == [tmp_path / "home" / "Music"]
    assert cfg.fuse.read_timeout == 30 and cfg.health.timeout == 5 and cfg.cache.max_size == 10 << 30


def test_xdg_music_dir_from_user_dirs(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "user-dirs.dirs").write_text('XDG_MUSIC_DIR="$HOME/Musik"\n')
    assert c.xdg_music_dir() == tmp_path / "home" / "Musik"


def test_cli_overrides_config(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[cache]\nmax_size = "1G"\ndir = "/nowhere"\n[fuse]\nread_timeout = 10\n'
                    '[[origins]]\nname = "nas"\npath = "/mnt/nas"\n')
    cfg = c.load(path)
    assert cfg.cache.max_size == 1 << 30 and cfg.origins[0].name == "nas"
    cfg = c.load(path, origins=[tmp_path], cache_dir=tmp_path / "cc", cache_size="500M", read_timeout=3)
    assert [o.path for o in cfg.origins] == [tmp_path]
    assert cfg.cache.dir == tmp_path / "cc" and cfg.cache.max_size == 500 << 20 and cfg.fuse.read_timeout == 3


def test_read_ahead_is_a_size_and_survives_a_read_timeout_override(tmp_path):
    assert c.parse({}).fuse.read_ahead == 1 << 20
    assert c.parse({"fuse": {"read_ahead": "4M"}}).fuse.read_ahead == 4 << 20
    assert c.parse({"fuse": {"read_ahead": 0}}).fuse.read_ahead == 0
    with pytest.raises(ConfigError, match=r"fuse\.read_ahead: cannot read size"):
        c.parse({"fuse": {"read_ahead": "lots"}})
    path = tmp_path / "config.toml"
    path.write_text('[fuse]\nread_ahead = "2M"\n')
    assert c.load(path, read_timeout=3).fuse.read_ahead == 2 << 20


def test_an_error_in_a_config_file_names_the_file_then_the_origin_and_key(tmp_path):
    path = tmp_path / "musicfs.toml"
    path.write_text('[[origins]]\nname = "nas"\npath = "/x"\n\n[[origins]]\nname = "cloud"\ntype = "s3"\n'
                    'bucket = "music"\n\n[[origins]]\nname = "bucket"\ntype = "s3"\nbukket = "music"\n')
    with pytest.raises(ConfigError) as raised:
        c.load(path)
    assert str(raised.value).startswith(f"{path}: origins[2] (bucket).bukket: unknown key for an s3 origin"), \
        raised.value


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        c.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[cache\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        c.load(bad)


def test_a_config_file_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    path = tmp_path / "musicfs.toml"
    path.write_bytes(b"\xff\xfe[cache]\n")
    with pytest.raises(ConfigError, match=f"config file {path} is not UTF-8 text"):
        c.load(path)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308", "0", "-5"])
def test_a_time_no_timer_can_hold_is_refused_naming_the_key(tmp_path, value):
    """TOML takes nan, inf and 1e308: each would make every read's deadline fail or overflow."""
    for section, key in (("fuse", "read_timeout"), ("health", "timeout"), ("health", "interval"),
                         ("catalog", "rescan_interval")):
        document = {"cache": {"dir": str(tmp_path / "cache")}, "origins": [{"name": "a", "path": str(tmp_path)}],
                    section: {key: float(value)}}
        with pytest.raises(ConfigError, match=f"^{section}.{key}: must be a positive number of seconds"):
            c.parse(document)
    c.parse({"cache": {"dir": str(tmp_path / "cache")}, "origins": [{"name": "a", "path": str(tmp_path)}],
             "catalog": {"rescan_interval": 86400.0 * 30}})
