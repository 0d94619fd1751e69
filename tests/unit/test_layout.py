"""The tag view's rules without any file: template syntax, fields, fallbacks, safe names."""
import dataclasses

import pytest

from musicfs import config as config_module
from musicfs.errors import ConfigError
from musicfs.catalog.layout import (DEFAULT_TEMPLATE, Album, IgnoreRules, Template, directory_name, field_values,
                                    file_name, safe_segment)


def place(tags, name=b"file.flac", template=DEFAULT_TEMPLATE, discs=None, origin="nas"):
    """Where a track goes, alone on its album (or, with `discs`, on an album of that many discs)."""
    album = Album.of([tags])
    if discs is not None:
        album = dataclasses.replace(album, discs=discs)
    values = field_values(tags, name, origin, album)
    segments = Template(template).render(values)
    return "/".join([*(directory_name(s) for s in segments[:-1]), file_name(segments[-1], values["ext"])])


FULL = {"artist": "Artist", "albumartist": "Band", "album": "Album", "title": "Song", "track": "3/12",
        "disc": "2/2", "date": "2001-05-02", "genre": "Rock", "format": "flac"}


def test_default_template_with_every_field():
    assert place(FULL, discs=2) == "Band/Album (2001)/2-03 Song.flac"


def test_fallbacks():
    assert place({}, b"My Song.MP3") == "Unknown Artist/Unknown Album/My Song.mp3"
    assert place({"artist": "Solo"}) == "Solo/Unknown Album/file.flac"          # albumartist -> artist
    assert place({"albumartist": "Band"}, template="$artist") == "Band.flac"     # artist -> albumartist
    assert place({"title": "T", "track": "7"}) == "Unknown Artist/Unknown Album/07 T.flac"
    assert place({"track": "x"}, template="{$track }$title") == "file.flac"      # unknown track: empty


def test_optional_groups_are_left_out_when_a_field_is_empty():
    assert place({"album": "A", "date": "sometime"}) == "Unknown Artist/A/file.flac"
    assert place({"album": "A", "date": "1999"}) == "Unknown Artist/A (1999)/file.flac"
    assert place({"genre": "Jazz"}, template="{[$genre] }{<$year> }$title") == "[Jazz] file.flac"
    assert place({}, template="{a{$year}b}$title") == "abfile.flac"              # nested: inner group only


def test_compilations():
    assert place({"artist": "X", "compilation": "1", "album": "Hits"}) == "Various Artists/Hits/file.flac"
    assert place({"artist": "X", "albumartist": "DJ", "compilation": "1", "album": "Hits"}) == "DJ/Hits/file.flac"
    assert place({"artist": "X", "compilation": "1"}, template="$artist") == "X.flac"


def test_discs():
    # the disc number only when the album has more than one disc (an album-level fact)
    assert place({"disc": "1/1", "track": "1"}) == "Unknown Artist/Unknown Album/01 file.flac"
    assert place({"disc": "1", "track": "1"}) == "Unknown Artist/Unknown Album/01 file.flac"
    assert place({"disc": "1/2", "track": "1"}) == "Unknown Artist/Unknown Album/1-01 file.flac"   # its total
    assert place({"disc": "1", "track": "1"}, discs=2) == "Unknown Artist/Unknown Album/1-01 file.flac"
    assert place({"track": "1"}, discs=2) == "Unknown Artist/Unknown Album/01 file.flac"   # no disc of its own


def test_album_level_fields_have_one_value_per_album():
    album = Album.of([{"date": "2004"}, {"date": "2004-03-01"}, {"date": "2005"}])
    assert album.year == "2004"                                    # the year most tracks carry
    assert Album.of([{"date": "2005"}, {"date": "1999"}]).year == "1999"   # the earliest on a tie
    assert Album.of([{}, {"date": "sometime"}]).year == ""
    assert Album.of([{"artist": "A"}, {"artist": "B", "compilation": "1"}]).compilation   # any track flagged
    assert Album.of([{"albumartist": "various artists"}]).compilation                    # any case
    assert not Album.of([{"albumartist": "Various Artists Tribute"}]).compilation
    assert Album.of([{"disc": "1"}, {"disc": "3"}]).discs == 3
    assert Album.of([{"disc": "1/2"}]).discs == 2


def test_genre_and_comp_fields():
    assert place({"title": "T"}, template="$genre/$title") == "Unknown Genre/T.flac"
    assert place({"title": "T", "genre": "Jazz, Blues"}, template="$genre/$title") == "Jazz, Blues/T.flac"
    assert place({"title": "T", "compilation": "1"}, template="{c$comp }$title") == "c1 T.flac"
    assert place({"title": "T"}, template="{c$comp }$title") == "T.flac"


@pytest.mark.parametrize("relpath, ignored", [
    (b"a/._01 Song.flac", True), (b".hidden/x.flac", True), (b"@eaDir/x.jpg", True), (b"a/THUMBS.DB", True),
    (b"#recycle/x.mp3", True), (b"$RECYCLE.BIN/x", True), (b"lost+found/1", True), (b"Desktop.ini", True),
    (b"a/01 Song.flac", False), (b"a..b/x.flac", False), (b"Thumbs.db.flac", False),
])
def test_default_ignore_list(relpath, ignored):
    assert IgnoreRules().ignored(relpath) is ignored


def test_ignore_patterns_are_checked():
    assert not IgnoreRules([]).ignored(b".x/y")              # an empty list ignores nothing
    with pytest.raises(ConfigError, match="layout.ignore: 'a/b' is not a file name pattern"):
        IgnoreRules(["a/b"])
    assert IgnoreRules(["[]]"]).ignored(b"a/]") and IgnoreRules(["[abc"]).ignored(b"[abc")   # fnmatch's own rules
    with pytest.raises(ConfigError, match="layout.ignore: must be a list of strings"):
        config_module.parse({"layout": {"ignore": [1]}})
    with pytest.raises(ConfigError, match="layout.comp_template: unknown field"):
        config_module.parse({"layout": {"comp_template": "$nope/$title"}})
    assert config_module.parse({"layout": {"ignore": ["*.bak"]}}).layout.ignore == ("*.bak",)


def test_literal_dollar_and_braced_fields():
    assert place(FULL, template="$$${artist}x") == "$Artistx.flac"


def test_unsafe_characters_and_dots():
    assert safe_segment('a/b\\c:d*e?f"g<h>i|j\x01k') == "a_b_c_d_e_f_g_h_i_j_k"
    assert safe_segment("  .hidden  ") == "_hidden"
    assert safe_segment("..") == "__"
    assert safe_segment("a\x85b\x9bc\u2028d") == "a_b_c_d"        # C1 controls, line separators
    assert safe_segment("-rf") == "_rf" and safe_segment("Vol.") == "Vol_" and safe_segment("a-b.c") == "a-b.c"
    assert safe_segment("   ") == "_"
    assert place({"albumartist": "AC/DC", "title": ".hidden"}) == "AC_DC/Unknown Album/_hidden.flac"


def test_nfc_and_names_that_are_not_utf8():
    decomposed = "Ã…ngstro\u0308m".encode().decode()    # NFD o + combining diaeresis
    assert place({"artist": decomposed}, template="$artist") == "Ã…ngstr\u00f6m.flac"
    assert place({}, b"caf\xe9.flac", template="$title") == "caf\ufffd.flac"


def test_names_are_cut_to_255_bytes_keeping_the_extension_and_whole_characters():
    title = "\u00e9" * 300    # two bytes each
    name = place({"title": title}, template="$title")
    assert name.endswith(".flac") and len(name.encode()) <= 255
    assert name.encode().decode() == name          # no character split
    folder = place({"album": "x" * 300}, template="$album/$title").split("/")[0]
    assert len(folder.encode()) == 255
    suffixed = file_name(title, "flac", " [abcdef]")
    assert suffixed.endswith(" [abcdef].flac") and len(suffixed.encode()) <= 255


@pytest.mark.parametrize("template, problem", [
    ("$artist/$nope", "unknown field $nope"),
    ("$artist/{$album", "never closed"),
    ("$artist}", "closes no"),
    ("{$artist/$album}", "inside a {...} group"),
    ("$artist//$title", "empty path segment"),
    ("$ title", "not followed by a field name"),
    ("${artist", "never closed"),
])
def test_template_errors_name_the_problem(template, problem):
    with pytest.raises(ConfigError) as info:
        Template(template)
    assert problem in str(info.value) and str(info.value).startswith("layout.template:")


def test_config_rejects_a_bad_layout_naming_the_key():
    with pytest.raises(ConfigError, match="layout.template: unknown field"):
        config_module.parse({"layout": {"template": "$artst"}})
    with pytest.raises(ConfigError, match="layout.mode: must be one of tags, paths"):
        config_module.parse({"layout": {"mode": "genre"}})
    assert config_module.parse({}).layout.mode == "tags"


def test_a_whole_path_fits_the_catalog_and_an_album_stays_in_one_directory():
    from musicfs.catalog.layout import DIRS_MAX, PATH_MAX, fit_directories, shown_path
    dirs = fit_directories((directory_name("A" * 115), directory_name("B" * 197), directory_name("C" * 250)))
    assert sum(len(d.encode()) + 1 for d in dirs) <= DIRS_MAX
    long_title = shown_path(dirs, "T" * 225, "flac")
    short_title = shown_path(dirs, "Intro", "flac", " [abcdef]")
    assert len(("/" + long_title).encode()) <= PATH_MAX and long_title.endswith(".flac")
    assert long_title.rsplit("/", 1)[0] == short_title.rsplit("/", 1)[0]     # the same album directory
    assert fit_directories(("Short", "Also short")) == ("Short", "Also short")


def test_a_template_whose_file_name_has_no_field_is_refused():
    for template in ("{}", "..", "$artist/static"):
        with pytest.raises(ConfigError, match="the file name .* has no field"):
            Template(template)


def test_layout_keys_of_the_wrong_type_or_empty_say_so():
    with pytest.raises(ConfigError, match=r"layout.ignore: expected a list, got '\*.log'"):
        config_module.parse({"layout": {"ignore": "*.log"}})
    with pytest.raises(ConfigError, match=r"layout.comp_template: empty; the default is Compilations/\$album"):
        config_module.parse({"layout": {"comp_template": " "}})
