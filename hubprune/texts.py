"""The text hubprune ships, and reading the texts users give: the ground floor's, since calibration, distillation,
the criteria check and the offline benchmarks all read them.

The shipped text is the Jargon File 4.4.7, chapters 1-8 (public domain). The offline suite scores its first
paragraphs; `--calibration shipped` reads the paragraphs from SHIPPED_CALIBRATION_START on, and check-criteria holds
out the ones before (shared_ngrams counts the 13-word sequences two texts share). A second text, of another domain
(OTHER_DOMAIN_FILE: fiction, Botchan in the 1919 translation, public domain), is scored by the offline suite only:
no calibration, default or tuning reads it, so the cards give each member's figure off the calibration's domain.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from hubprune.errors import CriterionError

TEXT_FILE = "jargon-file-4.4.7-ch1-8.txt"
SHIPPED_TEXT = f"hubprune/data/texts/{TEXT_FILE}"
OTHER_DOMAIN_FILE = "botchan-ch3-4.txt"
SHIPPED_CALIBRATION_START = 65
NGRAM = 13  # the span GPT-3's contamination check used; long enough that a shared one is no coincidence


def paragraphs(name: str = TEXT_FILE) -> list[str]:
    """The paragraphs of a shipped text (by default the Jargon File's), in order."""
    text = (resources.files("hubprune") / "data" / "texts" / name).read_text(encoding="utf-8")
    return [p for p in text.split("\n\n") if p.strip()]


def offline_suite_paragraphs() -> list[str]:
    """Every paragraph an offline task may score: a calibration or distillation text that shares a 13-word sequence
    with one of them flatters the cards' figures (shared_ngrams)."""
    return paragraphs() + paragraphs(OTHER_DOMAIN_FILE)


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of the file `path`, or CriterionError naming the problem (`what`: which text it is)."""
    path = Path(path)
    fix = "give a UTF-8 text file"
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CriterionError(f"the {what} {path} does not exist: {fix}") from None
    except IsADirectoryError:
        raise CriterionError(f"the {what} {path} is a folder, not a file: {fix}") from None
    except UnicodeDecodeError as exc:
        raise CriterionError(
            f"the {what} {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}): {fix}"
        ) from None
    except OSError as exc:
        raise CriterionError(f"cannot read the {what} {path} ({exc.strerror or exc}): {fix}") from None


def shared_ngrams(calibration: str, documents: list[str], n: int = NGRAM) -> int:
    """How many of `documents` share at least one n-word sequence with the calibration text (words compared
    lower-cased, punctuation dropped): 0 means the texts are disjoint for this purpose."""
    seen = _ngrams(calibration, n)
    return sum(1 for doc in documents if _ngrams(doc, n) & seen)


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}
