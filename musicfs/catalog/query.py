"""Queries over the tag view's tracks (beets' conventions), for search and smart collections.

Syntax (the contract of ``musicfs search``, ``.search/`` and ``[[collections]]``)::

    miles year:1955..1965 -genre:fusion "kind of blue" album:"a love supreme" added:30d

* Terms are separated by spaces and all must match. ``-term`` negates one.
* ``field:value`` is a case-insensitive substring of that field: artist, albumartist, album,
  title, genre, year, format, origin, comp, path (the file's path on its origin).
* A bare word matches artist, album artist, album or title.
* ``"..."`` quotes a value (or a bare word) with spaces; ``field:"two words"``.
* ``year:A..B`` is a range (``1980..`` and ``..1989`` leave one end open); ``year:1984`` is
  a substring as for any field.
* ``added:30d`` (also ``h``, ``w``): tracks the catalog first saw within that time.

A query that does not parse raises QueryError naming the problem. Everything here is pure: the
fields a query looks at are handed in (:class:`Track`); the catalog keeps them
(:mod:`.views`, the ``search`` records).
"""
from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import dataclass
from typing import NamedTuple

FIELDS = ("artist", "albumartist", "album", "title", "genre", "year", "format", "origin", "comp", "path")
BARE_FIELDS = ("artist", "albumartist", "album", "title")
UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400}
_TOKEN = re.compile(r'\s*(-?)(?:([a-z]+):)?("(?:[^"]*)"|[^\s"]+|"[^"]*$)', re.IGNORECASE)


class QueryError(ValueError):
    """A query that does not parse; the message says why, for the user."""


class Track(NamedTuple):
    """What a query can look at of one track (text fields as shown, not yet folded). A tuple:
    the search loop hands in plain sequences of the same fields in this order."""
    artist: str
    albumartist: str
    album: str
    title: str
    genre: str
    year: str
    format: str
    origin: str
    comp: str
    path: str
    added: int          # time_ns the catalog first saw the track


TRACK_FIELDS = Track._fields
INDEX = {name: i for i, name in enumerate(TRACK_FIELDS)}
BARE_INDEXES = tuple(INDEX[name] for name in ("artist", "albumartist", "album", "title"))
YEAR, ADDED = INDEX["year"], INDEX["added"]


@dataclass(frozen=True, slots=True)
class Term:
    field: str | None        # None: a bare word
    value: str               # casefolded
    negated: bool = False
    low: int | None = None   # year ranges
    high: int | None = None
    within_ns: int | None = None   # added:

    def matches(self, track: Track, now_ns: int) -> bool:
        return self.test(track, now_ns)

    def test(self, values, now_ns: int) -> bool:
        """Whether the track whose Track fields are `values` (a Track, or a sequence in Track's
        field order) matches; the form the search loop uses, without making Tracks."""
        return self._matches(values, now_ns) != self.negated

    def _matches(self, values, now_ns: int) -> bool:
        if self.within_ns is not None:
            return values[ADDED] >= now_ns - self.within_ns
        if self.low is not None or self.high is not None:
            year = values[YEAR]
            return year.isdigit() and (self.low is None or int(year) >= self.low) \
                and (self.high is None or int(year) <= self.high)
        if self.field is None:
            return any(self.value in values[i].casefold() for i in BARE_INDEXES)
        return self.value in values[INDEX[self.field]].casefold()


@dataclass(frozen=True)
class Query:
    text: str
    terms: tuple[Term, ...]

    def matches(self, track, now_ns: int | None = None) -> bool:
        """Whether a Track (or a sequence of its fields in Track's order) matches."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        return all(term.test(track, now_ns) for term in self.terms)

    @property
    def uses_added(self) -> bool:
        return any(term.within_ns is not None for term in self.terms)

    def looks_at(self, field: str) -> bool:
        return any(term.field == field for term in self.terms)

    def required_text(self) -> tuple[str, ...]:
        """Texts every matching track holds somewhere (its positive substring terms')."""
        return tuple(t.value for t in self.terms
                     if not t.negated and t.within_ns is None and t.low is None and t.high is None)

    def may_match(self, folded: str) -> bool:
        """False when a track whose fields, casefolded and joined, are `folded` cannot match:
        a cheap test before the exact one."""
        return all(text in folded for text in self.required_text())


def parse(text: str) -> Query:
    """The query `text` says; QueryError naming what is wrong otherwise."""
    terms = []
    position = 0
    stripped = unicodedata.normalize("NFC", text).rstrip()   # (tags are NFC; macOS and Samba send NFD)
    while position < len(stripped):
        match = _TOKEN.match(stripped, position)
        if match is None or match.end() == position:
            raise QueryError(f"cannot read the query at {stripped[position:].strip()!r}")
        position = match.end()
        negated, field, value = bool(match.group(1)), (match.group(2) or "").lower() or None, match.group(3)
        if value.startswith('"'):
            if len(value) < 2 or not value.endswith('"'):
                raise QueryError(f"a quote is never closed: {value}")
            value = value[1:-1]
        terms.append(_term(field, value, negated, match.group(0).strip()))
    if not terms:
        raise QueryError("the query is empty (give words, or field:value terms)")
    return Query(text, tuple(terms))


def _term(field: str | None, value: str, negated: bool, written: str) -> Term:
    if field is None:
        if not value:
            raise QueryError(f"an empty term: {written}")
        if value.endswith(":") and value[:-1].lower() in (*FIELDS, "added"):
            raise QueryError(f"{value} has no value (write {value}something, or quote it: {value}\"two words\")")
        return Term(None, value.casefold(), negated)
    if field == "added":
        match = re.fullmatch(r"(\d+)([hdw])", value.strip().lower())
        if match is None:
            raise QueryError(f"added: takes a time like 30d, 12h or 2w, not {value!r}")
        return Term("added", value, negated, within_ns=int(match.group(1)) * UNITS[match.group(2)] * 10**9)
    if field not in FIELDS:
        raise QueryError(f"unknown field {field}: (known: {', '.join(FIELDS)}, added)")
    if field == "year" and ".." in value:
        low, _, high = value.partition("..")
        if not re.fullmatch(r"\d*", low) or not re.fullmatch(r"\d*", high) or not (low or high):
            raise QueryError(f"year: takes a range like 1980..1989, not {value!r}")
        if low and high and int(low) > int(high):
            raise QueryError(f"year:{value}: the range is empty ({low} is after {high})")
        return Term("year", value, negated, low=int(low) if low else None, high=int(high) if high else None)
    if not value:
        raise QueryError(f"{field}: has no value (write {field}:something, or quote it: {field}:\"two words\")")
    return Term(field, value.casefold(), negated)
