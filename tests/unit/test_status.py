"""The status file as the daemon writes it and every command reads it (musicfs.status)."""
import dataclasses
import json
from pathlib import Path

from musicfs.config import CacheConfig, Config, LayoutConfig, OriginConfig
from musicfs.origins.options import LocalOptions
from musicfs.status import (CacheFigures, DaemonStatus, LayoutStatus, OriginView, Reloads, ScanReport,
                            UnplacedFile, read_status_file, status_path, write_status)


def _status(cache_dir: Path) -> DaemonStatus:
    config = Config(origins=(OriginConfig(name="nas", path=Path("/srv/music"), options=LocalOptions()),
                             OriginConfig(name="backup", path=Path("/mnt/backup"), options=LocalOptions())),
                    cache=CacheConfig(dir=cache_dir, max_size=1 << 30), layout=LayoutConfig(mode="paths"))
    return DaemonStatus(
        pid=1234, mountpoint="/mnt/music", started=1000.5, updated=2000.25, version="1.0", cache_dir=str(cache_dir),
        config_file="/etc/musicfs.toml", config=config, passthrough=True, passthrough_reason="cache disk is read-only",
        origins={"backup": OriginView("unhealthy", None, "Connection refused", 3, 1999.0),
                 "nas": OriginView("healthy", 0.002, None, 0, 1999.5,
                                   ScanReport(True, 1500.0, None, 10, 8, 2, 1, 0, 0.5, ("a/b: Input/output error",)))},
        cache=CacheFigures(chunks=3, bytes=3 << 20, pinned_bytes=0, max_bytes=1 << 30, hits=7, misses=2),
        layout=LayoutStatus("tags", "$albumartist/$album", 1, (UnplacedFile("nas", "junk.mp3"),)),
        reloads=Reloads(2, 1900.0, "origins[0] (nas).bukket: unknown key"), requests_in_progress=4)


def test_the_status_file_reads_back_as_it_was_written(tmp_path, private_runtime_dir):
    written = _status(tmp_path / "cache")
    write_status(tmp_path / "cache", written)
    config = written.config
    published = Config(origins=config.origins, cache=config.cache, health=config.health, log=config.log)
    assert read_status_file(tmp_path / "cache") == dataclasses.replace(written, config=published)
    assert config != published   # (the layout is not published)


def test_the_origins_are_listed_in_the_configs_order_not_the_files():
    status = _status(Path("/var/cache/musicfs"))
    assert list(json.loads(json.dumps(status.to_json(), sort_keys=True))["origins"]) == ["backup", "nas"]
    assert status.origin_names() == ["nas", "backup"]


def test_a_file_with_missing_or_mistyped_keys_reads_as_defaults(tmp_path, private_runtime_dir):
    path = status_path(tmp_path / "cache")
    path.write_text(json.dumps({"pid": 99, "updated": "yesterday", "passthrough": "yes",
                                "origins": {"nas": {"status": 3, "scan": {"unreadable": "a/b"}}, "x": []},
                                "cache": {"bytes": "12"}, "layout": None, "reloads": {"count": True},
                                "config": {"origins": "nas"}}))
    status = read_status_file(tmp_path / "cache")
    assert status == DaemonStatus(pid=99, origins={"nas": OriginView(scan=ScanReport()), "x": OriginView()})


def test_a_file_naming_no_daemon_is_no_status(tmp_path, private_runtime_dir):
    for content in ("[1, 2]", '{"pid": "12"}', "not json", '{"mountpoint": "/mnt"}'):
        status_path(tmp_path / "cache").write_text(content)
        assert read_status_file(tmp_path / "cache") is None, content


def test_a_file_nested_too_deep_to_parse_is_no_status(tmp_path, private_runtime_dir):
    """Any file named like a status file is read by every command: one that cannot be parsed
    must not break them for every other mount."""
    status_path(tmp_path / "cache").write_text('{"pid": ' + "[" * 100000 + "]" * 100000 + "}")
    assert read_status_file(tmp_path / "cache") is None
