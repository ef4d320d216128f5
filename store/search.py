"""Search text for Chinese and Latin scripts, the same meaning on both engines.

Tokens: every CJK character is a token of its own; a run of other letters/digits is one token (lower-cased,
diacritics removed), as SQLite FTS5's unicode61 tokenizer sees them. A query term matches as a phrase of its
tokens: a Chinese term where its characters stand side by side (substring search: "勾股" finds "勾股定理"), a
term ending in Latin letters or digits as a prefix of a word ("Pythag" finds "Pythagoras"). Terms are ANDed.

- SQLite: FTS5 (unicode61 alone keeps "勾股定理" as ONE token and trigram needs three characters per term), fed
  with ``segment()``-ed text, queried with ``fts_query()``.
- PostgreSQL: ``search_text()`` keeps each column's tokens with CJK characters side by side and other tokens
  apart (" pythagoras 勾股定理 "), so a term is ``LIKE '%勾股%'`` or ``LIKE '% pythag%'`` (``like_patterns()``),
  accelerated by a pg_trgm GIN index on that column for terms of three characters or more. The CJK characters
  count as word characters for pg_trgm only in a database whose LC_CTYPE is a UTF-8 locale (the results are
  right either way; only the index's help differs): docs/deploy.md says how to create it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Final

MAX_QUERY_CHARS: Final[int] = 200
MAX_QUERY_TERMS: Final[int] = 16
# between the columns of search_text: never inside a token, so no phrase spans two columns
COLUMN_SEPARATOR: Final[str] = "~"

# CJK ideographs (with extensions and compatibility), kana, hangul, bopomofo: one token per character.
_CJK = (r"\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3190-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
        r"\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003134f")
_CJK_CHAR_RE = re.compile(f"([{_CJK}])")
_CJK_ONLY_RE = re.compile(f"^[{_CJK}]+$")
_TOKEN_RE = re.compile(r"[^\W_]+")


def segment(text: str) -> str:
    """Text as FTS5 input: each CJK character set apart by spaces; everything else left to unicode61."""
    return _CJK_CHAR_RE.sub(r" \1 ", text)


def _terms(query: str) -> list[str]:
    return query[:MAX_QUERY_CHARS].split()[:MAX_QUERY_TERMS]


def fts_query(query: str) -> str | None:
    """A user's search box text as a safe FTS5 MATCH expression, or None when there is nothing to match.

    Every whitespace-separated term becomes a quoted phrase (so no FTS5 operator or column syntax from
    the user is ever interpreted) and terms are ANDed; a term ending in Latin letters or digits is a prefix.
    """
    phrases = []
    for term in _terms(query):
        tokens = re.findall(r"\w+", segment(term))
        if not tokens:
            continue
        phrase = '"' + " ".join(tokens).replace('"', '""') + '"'
        if not _CJK_ONLY_RE.match(tokens[-1]):
            phrase += "*"
        phrases.append(phrase)
    return " ".join(phrases) if phrases else None


def tokens(text: str) -> list[str]:
    """Search tokens of ``text``: CJK characters one by one, other words lower-cased without diacritics."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", segment(text).lower())
                     if not unicodedata.combining(c))
    return _TOKEN_RE.findall(folded)


def _joined(toks: Sequence[str]) -> str:
    """Tokens in one string: CJK characters side by side (so that pg_trgm's trigrams span them), every other
    token set apart by one space."""
    out, prev_cjk = [], False
    for tok in toks:
        cjk = bool(_CJK_ONLY_RE.match(tok))
        if out and not (cjk and prev_cjk):
            out.append(" ")
        out.append(tok)
        prev_cjk = cjk
    return "".join(out)


def search_text(columns: Sequence[str]) -> str:
    """The PostgreSQL search column: each column's tokens (``_joined``) between spaces, columns apart."""
    return COLUMN_SEPARATOR.join(" " + _joined(tokens(c)) + " " for c in columns)


def like_patterns(query: str) -> list[str]:
    """One LIKE pattern per query term (ANDed), matching what fts_query matches on FTS5. Tokens hold letters
    and digits only, so no pattern holds a LIKE wildcard from the user."""
    patterns = []
    for term in _terms(query):
        toks = tokens(term)
        if not toks:
            continue
        # a CJK character is a token of its own: it matches wherever it stands; a Latin token starts a word (after
        # a space) and, but for the last (a prefix), ends before the next token
        phrase = ("" if _CJK_ONLY_RE.match(toks[0]) else " ") + _joined(toks)
        patterns.append(f"%{phrase}%")
    return patterns
