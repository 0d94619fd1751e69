"""The tag view's rules without any file: template syntax, fields, fallbacks, safe names."""
import pytest

from musicfs import config as config_module
from musicfs.errors import ConfigError
from musicfs.catalog.layout import (DEFAULT_TEMPLATE, Template, directory_name, field_values, file_name,
                            safe_segment)


def place(tags, name=b"file.flac", template=DEFAULT_TEMPLATE, discs=1, origin="nas"):
    values = field_values(tags, name, origin, discs)
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
    assert place({}, template="{a{$genre}b}$title") == "abfile.flac"              # nested: inner group only


def test_compilations():
    assert place({"artist": "X", "compilation": "1", "album": "Hits"}) == "Various Artists/Hits/file.flac"
    assert place({"artist": "X", "albumartist": "DJ", "compilation": "1", "album": "Hits"}) == "DJ/Hits/file.flac"
    assert place({"artist": "X", "compilation": "1"}, template="$artist") == "X.flac"


def test_discs():
    # the disc number only when the album has more than one disc
    assert place({"disc": "1/1", "track": "1"}, discs=1) == "Unknown Artist/Unknown Album/01 file.flac"
    assert place({"disc": "1", "track": "1"}, discs=1) == "Unknown Artist/Unknown Album/01 file.flac"
    assert place({"disc": "1", "track": "1"}, discs=2) == "Unknown Artist/Unknown Album/1-01 file.flac"
    assert place({"disc": "1/1", "track": "1"}, discs=2) == "Unknown Artist/Unknown Album/01 file.flac"


def test_literal_dollar_and_braced_fields():
    assert place(FULL, template="$$${artist}x") == "$Artistx.flac"


def test_unsafe_characters_and_dots():
    assert safe_segment('a/b\\c:d*e?f"g<h>i|j\x01k') == "a_b_c_d_e_f_g_h_i_j_k"
    assert safe_segment("  .hidden  ") == "_hidden"
    assert safe_segment("..") == "_."
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
