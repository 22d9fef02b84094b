"""English texts of other domains than the calibration's, from registry packages, for measuring members on text
that no calibration, default or tuning read. Each is fetched once into a cache folder (not committed):

- news: lee_background.cor from the gensim 4.4.0 wheel (PyPI): 300 ABC news paragraphs, 2001-02, the Lee et al.
  (2005) similarity corpus; the package is LGPL-2.1, the text has no licence of its own. Read by an earlier
  probe (DESIGN.md) that chose generated calibration data: report it, but do not call it untouched.
- fiction: Botchan (Natsume Soseki, tr. Yasotaro Morri, 1919), Project Gutenberg eBook #8868, public domain in the
  USA, as test/botchan.txt of the sentencepiece 0.2.3 sdist (PyPI, Apache-2.0 package); the Gutenberg header and
  licence at both ends are cut off.
- faq: the Python 3.11 FAQ (faq/*.rst.txt of Debian's python3.11-doc 3.11.2, PSF licence): its prose paragraphs,
  without code blocks, directives or headings, reST roles reduced to their text.

    python bench/other_texts.py [CACHE]   # fetch all three, print their sizes and sha256
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

CACHE = Path.home() / ".cache" / "hubprune" / "bench-texts"


def _pip_download(spec: str, folder: Path, *flags: str) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", spec, "--no-deps", "-q", "-d", str(folder), *flags], check=True
    )
    name = spec.split("==")[0]
    return next(p for p in folder.iterdir() if p.name.lower().startswith(name.lower()))


def news(cache: Path = CACHE) -> Path:
    target = cache / "news-lee_background.txt"
    if not target.exists():
        wheel = _pip_download("gensim==4.4.0", cache / "download", "--only-binary=:all:")
        _write(target, zipfile.ZipFile(wheel).read("gensim/test/test_data/lee_background.cor").decode("utf-8"))
    return target


def fiction(cache: Path = CACHE) -> Path:
    target = cache / "fiction-botchan.txt"
    if not target.exists():
        sdist = _pip_download("sentencepiece==0.2.3", cache / "download", "--no-binary=:all:")
        with tarfile.open(sdist) as archive:
            raw = archive.extractfile("sentencepiece-0.2.3/test/botchan.txt").read().decode("utf-8-sig")  # type: ignore[union-attr]
        body = raw.split("*** START OF THIS PROJECT GUTENBERG EBOOK", 1)[1].split("\n", 1)[1]
        body = body.split("End of Project Gutenberg", 1)[0].split("*** END OF THIS PROJECT GUTENBERG", 1)[0]
        _write(target, body.strip() + "\n")
    return target


def faq(cache: Path = CACHE) -> Path:
    target = cache / "faq-python311.txt"
    if not target.exists():
        folder = cache / "download"
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "python3.11-doc=3.11.2-6+deb12u8"], cwd=folder, check=True)
        deb = next(folder.glob("python3.11-doc_*.deb"))
        unpacked = folder / "python3.11-doc"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
        pages = sorted((unpacked / "usr/share/doc/python3.11/html/_sources/faq").glob("*.rst.txt"))
        _write(target, "\n\n".join(p for page in pages for p in prose(page.read_text(encoding="utf-8"))) + "\n")
    return target


def prose(rest: str) -> list[str]:
    """The prose paragraphs of a reST page: no directive, code block (after `::` or indented), heading or table."""
    found = []
    after_code_marker = False
    for block in re.split(r"\n\s*\n", rest):
        lines = block.splitlines()
        if not lines:
            continue
        starts_indented = lines[0][:1] in (" ", "\t")
        if starts_indented and after_code_marker:
            continue
        after_code_marker = block.rstrip().endswith("::") or (after_code_marker and starts_indented)
        if starts_indented or lines[0].startswith(("..", ">>>", "|", "+", "=", "*")):
            continue
        if any(re.fullmatch(r"[=\-~^*#+\"']{3,}", line.strip()) for line in lines):
            continue
        text = " ".join(line.strip() for line in lines)
        text = re.sub(r":\w+:`~?([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", text)  # :func:`x` -> x
        text = re.sub(r"`([^`<]*?)\s*<[^>]*>`_+", r"\1", text)  # `text <url>`_ -> text
        text = text.replace("``", "").replace("::", ":")
        if len(text.split()) >= 8:
            found.append(text)
    return found


def _write(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")


def all_texts(cache: Path = CACHE) -> dict[str, Path]:
    return {"news": news(cache), "fiction": fiction(cache), "faq": faq(cache)}


if __name__ == "__main__":
    for name, path in all_texts(Path(sys.argv[1]) if len(sys.argv) > 1 else CACHE).items():
        data = path.read_bytes()
        print(f"{name}: {path.name}, {len(data.split())} words, sha256 {hashlib.sha256(data).hexdigest()[:16]}")
