r"""What real beets makes of a library: the reference musicfs's tag view is compared with.

    beets_tree(source, workdir, MUSICFS_LIKE_PATHS, config_overrides=DISC_IF_MANY)

runs ``beet import -q -A`` (as-is: no autotagger, no MusicBrainz) over `source` with a fresh
configuration and library in `workdir`, copying the files into ``workdir/library``, and returns
the files' paths relative to that directory. beets runs in a child process with plugins off
(``plugins: []``; the default list holds ``musicbrainz``) and an audit hook that ends it at its
first socket connect or name lookup, so a test can never wait on the network.

Read in beets 2.14.1 (source in the venv's site-packages/beets) and checked by experiment.

How ``beet import -A`` makes albums
-----------------------------------
* Per directory (importer/tasks.py: ``albums_in_dir``, ``ImportTaskFactory.paths``): every
  directory holding media files is one album task. Two exceptions merge directories: sibling
  directories named like the discs of one set ("Album CD1", "Album CD2"; markers disc, cd,
  cassette, digital media, vinyl followed by a digit, ``MULTIDISC_PATTERNS``), and a directory
  whose only content is such subdirectories. ``--flat`` makes the whole tree one task. Hidden
  files (the ``ignore: [".*", ...]`` default) and non-audio files are not imported.
* ``-g`` / ``import.group_albums`` (importer/stages.py: ``group_albums``) then splits each
  directory task by ``(albumartist or artist, album)``. It never joins directories: one album
  spread over two directories stays two beets albums (each with its own album-level fields;
  they share a folder when their paths come out equal).
* Without ``-g`` a directory of mixed albums is one album whose album-level fields come from
  its first file (see below).

How album-level fields are decided (as-is)
------------------------------------------
* albumartist and comp: importer/tasks.py ``ImportTask.align_album_level_fields`` (ASIS branch)
  takes the most common ``albumartist or artist`` of the album's items (``util.plurality``). If
  every item has it, or it occurs more than once and on at least 25 % of the items
  (``SINGLE_ARTIST_THRESH``), that is the albumartist of every item and ``comp`` is set False;
  otherwise albumartist = ``va_name`` ("Various Artists") and ``comp`` = True. The files'
  compilation flag (TCMP, cpil, COMPILATION) is overwritten either way. Because ``-g`` groups by
  that same ``albumartist or artist``, every album of a ``-g`` import is single-artist: **with
  -g beets never files anything under the comp path**, a compilation without album artist tags
  is split into one album per track artist, and one tagged albumartist "Various Artists" goes to
  the default path as ``Various Artists/...``.
* Every other album-level field (album, year, genres, disctotal, mb_albumid, ...:
  ``Album.item_keys``) is copied from the album's first item (library/library.py:
  ``Library.add_album``: "metadata from the first item"), first in file-name order
  (util: ``sorted_walk``, case-insensitive). In a path they take precedence over the item's own
  value (library/models.py: ``FormattedItemMapping._get`` with ``for_path``). So $year is the
  first file's year, not the most common one.

How beets' path formats correspond to the musicfs template
----------------------------------------------------------
Sources: library/models.py ``Item.destination``, ``FormattedItemMapping.__getitem__``,
``DefaultTemplateFunctions.tmpl_if``; library/fields.py ``TYPE_BY_FIELD``; dbcore/types.py
``BasePaddedInt.format``, ``DelimitedString.format``; dbcore/db.py
``FormattedMapping._get_formatted``; util/__init__.py ``legalize_path``, ``sanitize_path``,
``unique_path``; config_default.yaml ``replace``, ``paths``; util/pathformats.py
``PF_KEY_QUERIES``; mediafile (fields, ``DateField._get_date_tuple``).

=========================  ==================================  ==================================
topic                      musicfs contract                    beets 2.14.1 (``import -A``)
=========================  ==================================  ==================================
which template             comp_template for a compilation,    ``comp`` when the item's comp is
                           singleton_template for a file       true (query ``comp:true``), which
                           without album (what                 as-is means "the album's artists
                           ``no_album_as_singletons`` mimics)  differ" (above), never the tag;
                                                               ``singleton`` only for files
                                                               imported with ``-s``: in album
                                                               mode a file without album tag is
                                                               an album named ""
optional part              ``{ ($year)}``: dropped when a      ``%if{$year, ($year)}`` (year 0
                           field inside is empty               counts as false);
                                                               ``%if{$a,...}`` tests one value
$track                     2 digits; no track tag: empty       ``PaddedInt(2)``: "03", "100";
                                                               no track tag: "00"
$disc                      unpadded, "" on a one-disc album    ``PaddedInt(2)``: always there,
                           (total <= 1 or highest disc of      "01"; no disc tag: "00". Core has
                           the album <= 1)                     no "one disc" test: see
                                                               ``DISC_IF_MANY`` (inline plugin,
                                                               disctotal > 1; a disc tag without
                                                               total counts as one disc)
$year                      first 4 digits of date; the year    mediafile: the date cut at the
                           most tracks carry (earliest on      first T or space, then the part
                           tie), one per album                 before - or / if it is a number
                                                               ("2004-03-01" -> 2004, "circa
                                                               1970" -> none); the album's FIRST
                                                               file's; none: "0000"
$albumartist fallback      albumartist -> artist ->            plurality as above (artist when
                           "Unknown Artist"; "Various          no albumartist), else "Various
                           Artists" for a compilation          Artists"; nothing at all: "" ->
                                                               the leading empty segment becomes
                                                               ``_`` (``_/Album/01 T.flac``)
$artist fallback           artist -> albumartist ->            artist -> albumartist -> "", and
                           "Unknown Artist"                    an empty segment inside a path is
                                                               dropped: ``Non-Album/Title.flac``
$album missing             "Unknown Album"                     "": segment dropped,
                                                               ``Artist/01 T.flac``; with a year
                                                               ``Artist/(2004)/01 T.flac``
$title missing             file name without extension         "": ``01.flac``; singleton:
                                                               ``Non-Album/Artist.flac``
multi-valued tags          all values joined with ", "         $artist, $albumartist: the FIRST
                                                               value only; $artists comes from
                                                               the separate ARTISTS tag;
                                                               $genres: all values joined "; "
                                                               (album-level: first file's)
$genre                     the genre tag                       not a field in 2.14 (left as the
                                                               literal text "$genre"); $genres
/ \ in a value              ``_``                               ``_`` (path_sep_replace)
: * ? " < > |              ``_``                               ``_`` (replace)
control chars              ``_``                               \x00-\x1f -> ``_``; \x7f kept
leading "."                ``_``                               ``_``
trailing "."               not in the contract (kept today)    ``_``
leading "-"                not in the contract (kept today)    ``_``
surrounding whitespace     stripped                            stripped
empty segment              rare (fallbacks); ``_`` today       dropped (a leading one: ``_``)
same path twice            not in the contract                 ``.1`` before the extension
                                                               (``01 T.1.flac``)
long names                 NAME_MAX 255 bytes a segment,       each segment cut to the file
                           whole path <= 440 bytes             system's name limit, extension
                                                               kept (``truncate_path``)
=========================  ==================================  ==================================

The musicfs default templates written for beets are :data:`MUSICFS_LIKE_PATHS` together with
:data:`DISC_IF_MANY`; run without ``-g`` (``group_albums=False``) when the library has
compilations, since ``-g`` never yields one.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

# The musicfs defaults (template, comp_template, singleton_template) in beets' syntax. The
# disc part needs the inline field of DISC_IF_MANY; with $disc instead beets writes "01-"
# on every album.
MUSICFS_LIKE_PATHS = {
    "default": "$albumartist/$album%if{$year, ($year)}/%if{$disc_if_many,$disc_if_many-}$track $title",
    "comp": "Compilations/$album%if{$year, ($year)}/%if{$disc_if_many,$disc_if_many-}$track $title",
    "singleton": "Non-Album/$artist/$title",
}
# A disc number only on multi-disc albums, unpadded like musicfs's: the inline plugin (shipped
# with beets, no network), after the "multidisc" field of its documentation.
DISC_IF_MANY = {"plugins": ["inline"],
                "item_fields": {"disc_if_many": "str(disc) if disctotal > 1 else ''"}}

# beets runs under this: its first socket connect or name lookup ends the process (exit 97),
# so a configuration that would reach for MusicBrainz fails the test instead of hanging it.
_NO_NETWORK_BEETS = """
import os, sys
def refuse_network(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
        sys.stderr.write(f"beets_reference: beets tried the network ({event} {args!r})\\n")
        sys.stderr.flush()
        os._exit(97)
sys.addaudithook(refuse_network)
from beets.ui import main
main(sys.argv[1:])
"""


def beets_tree(source: Path, workdir: Path, paths: dict[str, str], *, group_albums: bool = True,
               no_album_as_singletons: bool = True, config_overrides: dict | None = None) -> set[str]:
    """Import `source` with real beets, as-is, into a new library under `workdir` (which must
    not hold a previous run) and return the imported files' paths relative to the library
    directory, with forward slashes.

    `paths` are beets path formats with the keys ``default``, ``comp`` and ``singleton``.
    `group_albums` is ``import -g`` (see the module docstring: with it no album is ever a
    compilation). beets in album mode makes no singletons; `no_album_as_singletons` imports the
    files without an album tag (as beets reads it) with ``import -s`` instead, which is the
    musicfs rule; False leaves them to album mode. `config_overrides` are top-level beets
    settings laid over this module's (e.g. :data:`DISC_IF_MANY`)."""
    source, workdir = Path(source), Path(workdir)
    beetsdir, library = workdir / "beetsdir", workdir / "library"
    beetsdir.mkdir(parents=True)
    library.mkdir()
    config = {
        "directory": str(library),
        "library": str(workdir / "library.db"),
        "statefile": str(workdir / "state.pickle"),
        "create_backup_before_migrations": False,
        "plugins": [],
        # one thread: the import order (so album-level fields, ".1" suffixes) is reproducible
        "threaded": False,
        "import": {"copy": True, "move": False, "write": False, "autotag": False, "quiet": True,
                   "resume": False, "incremental": False, "group_albums": group_albums,
                   # an album met twice (two directories, or two -g groups) is kept twice,
                   # not skipped or asked about
                   "duplicate_action": "keep",
                   "log": str(workdir / "import.log")},
        "paths": dict(paths),
    }
    config.update(config_overrides or {})
    # BEETSDIR keeps beets away from ~/.config/beets: this file is its whole configuration.
    (beetsdir / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    env = {**os.environ, "BEETSDIR": str(beetsdir)}

    runs = [(source, [])]
    if no_album_as_singletons:
        albums, singletons = _split_by_album_tag(source, workdir / "staging")
        runs = [(albums, []), (singletons, ["-s"])]
    for directory, mode in runs:
        if not any(path.is_file() for path in directory.rglob("*")):
            continue                          # nothing for this run: spare the process
        command = [sys.executable, "-c", _NO_NETWORK_BEETS, "import", "-q", "-A", *mode,
                   *(["-g"] if group_albums and not mode else []), str(directory)]
        result = subprocess.run(command, env=env, capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"beet import exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return {Path(root, name).relative_to(library).as_posix()
            for root, _, names in os.walk(library) for name in names}


def _split_by_album_tag(source: Path, staging: Path) -> tuple[Path, Path]:
    """Copy `source` into staging/albums and staging/singletons, each file at its own relative
    path, by whether beets' tag reader (mediafile) finds an album tag in it. Keeping relative
    paths keeps beets' per-directory grouping of the albums unchanged."""
    from mediafile import FileTypeError, MediaFile, UnreadableFileError

    albums, singletons = staging / "albums", staging / "singletons"
    albums.mkdir(parents=True)
    singletons.mkdir()
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        try:
            has_album = bool(MediaFile(str(path)).album)
        except (FileTypeError, UnreadableFileError):
            has_album = True                  # not audio: beets skips it in either run
        target = (albums if has_album else singletons) / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return albums, singletons
