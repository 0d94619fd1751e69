"""The query language of search and collections, without any catalog."""
import pytest

from musicfs import config as config_module
from musicfs.catalog.query import QueryError, Track, parse
from musicfs.errors import ConfigError

NOW = 1_800_000_000 * 10**9
DAY = 86400 * 10**9


def track(**fields):
    base = dict(artist="Miles Davis", albumartist="Miles Davis", album="Kind of Blue", title="So What",
                genre="Jazz", year="1959", format="flac", origin="nas", comp="", path="Jazz/Miles/01.flac",
                added=NOW - 40 * DAY)
    return Track(**{**base, **fields})


@pytest.mark.parametrize("text, expected", [
    ("miles", True), ("MILES", True), ("blue", True), ("so what", True), ("jazz", False),   # bare: 4 fields
    ("artist:davis", True), ("artist:coltrane", False), ("Artist:DAVIS", True),
    ("album:\"kind of\"", True), ("\"kind of blue\"", True), ("\"of what\"", False),
    ("genre:jaz", True), ("format:flac", True), ("origin:na", True), ("path:miles/01", True),
    ("comp:1", False), ("year:1959", True), ("year:195", True),
    ("year:1950..1960", True), ("year:1960..1970", False), ("year:..1959", True), ("year:1960..", False),
    ("added:30d", False), ("added:6w", True), ("added:1000h", True), ("added:950h", False),
    ("-genre:rock", True), ("-genre:jazz", False), ("miles -title:what", False), ("miles year:1959 genre:jazz", True),
])
def test_every_form_of_term(text, expected):
    assert parse(text).matches(track(), NOW) is expected


def test_a_track_without_a_year_is_in_no_range():
    assert not parse("year:1900..2100").matches(track(year=""), NOW)
    assert parse("-year:1900..2100").matches(track(year=""), NOW)


@pytest.mark.parametrize("text, problem", [
    ("", "empty"), ("   ", "empty"), ("bogus:x", "unknown field bogus:"), ("artist:", "artist: has no value"),
    ('album:"never closed', "never closed"), ("year:80s..90s", "range like 1980..1989"),
    ("year:1990..1980", "the range is empty"), ("added:30", "30d, 12h or 2w"), ("added:soon", "30d, 12h or 2w"),
    ("genre: jazz", "genre: has no value"),
])
def test_a_query_that_does_not_parse_says_why(text, problem):
    with pytest.raises(QueryError, match=problem):
        parse(text)


def test_collections_are_checked_at_configuration():
    default = config_module.parse({})
    assert default.collections == (("Recently Added", "added:30d"),)
    config = config_module.parse({"collections": [{"name": "80s Jazz", "query": "genre:jazz year:1980..1989"}],
                                  "search": {"limit": 20}})
    assert config.collections == (("80s Jazz", "genre:jazz year:1980..1989"),) and config.search.limit == 20
    with pytest.raises(ConfigError, match=r"collections\[0\] \(Bad\)\.query: unknown field bogus"):
        config_module.parse({"collections": [{"name": "Bad", "query": "bogus:1"}]})
    with pytest.raises(ConfigError, match=r"collections\[0\]\.query: missing"):
        config_module.parse({"collections": [{"name": "No query"}]})
    with pytest.raises(ConfigError, match=r"collections\[1\]\.nmae: unknown key"):
        config_module.parse({"collections": [{"name": "A", "query": "a"}, {"nmae": "B", "query": "b"}]})
    with pytest.raises(ConfigError, match="two collections are named 'A'"):
        config_module.parse({"collections": [{"name": "A", "query": "a"}, {"name": "A", "query": "b"}]})
    with pytest.raises(ConfigError, match="search.limit: must be at least 1"):
        config_module.parse({"search": {"limit": 0}})


def test_queries_are_nfc_like_the_tags():
    assert parse("bjo\u0308rk").matches(track(artist="Bj\u00f6rk"), NOW)          # NFD typed, NFC tagged


def test_a_collection_cannot_be_named_like_a_playlist():
    with pytest.raises(ConfigError, match=r"collections\[0\] \(80s.m3u8\)\.name: may not end in .m3u8"):
        config_module.parse({"collections": [{"name": "80s.m3u8", "query": "year:1980..1989"}]})
