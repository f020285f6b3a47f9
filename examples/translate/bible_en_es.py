#!/usr/bin/env python3
"""Builds a verse-aligned English-Spanish parallel corpus (TSV) from two public-domain Bible
translations packaged by Debian: the King James Version (`sword-text-kjv`) and the Reina-Valera
1909 (`sword-text-sparv`). Both modules number verses the same way (KJV versification), so the
n-th verse of one is the n-th verse of the other.

    mkdir -p /tmp/bible && cd /tmp/bible && apt-get download sword-text-kjv sword-text-sparv
    for f in sword-text-*.deb; do dpkg-deb -x "$f" x; done
    python3 examples/translate/bible_en_es.py /tmp/bible/x bible-en-es.tsv

Reads SWORD "zText" modules: `.bzs` lists the compressed blocks (offset, size, uncompressed
size: three little-endian u32), `.bzz` holds the zlib blocks, `.bzv` indexes verses (block u32,
offset u32, size u16). Verse text is OSIS markup: notes and titles are dropped, other tags
stripped. Writes `english<TAB>spanish` lines for verses present in both.
"""
import re
import struct
import sys
import zlib
from pathlib import Path


def verses(module: Path) -> list[str]:
    out = []
    for testament in ("ot", "nt"):
        sizes = (module / f"{testament}.bzs").read_bytes()
        data = (module / f"{testament}.bzz").read_bytes()
        index = (module / f"{testament}.bzv").read_bytes()
        blocks = []
        for i in range(0, len(sizes), 12):
            offset, size, _ = struct.unpack_from("<III", sizes, i)
            blocks.append(zlib.decompress(data[offset : offset + size]))
        for i in range(0, len(index), 10):
            block, offset, size = struct.unpack_from("<IIH", index, i)
            text = blocks[block][offset : offset + size].decode("utf-8", "replace") if size else ""
            out.append(text)
    return out


def clean(osis: str) -> str:
    osis = re.sub(r"<note\b.*?</note>", "", osis, flags=re.S)
    osis = re.sub(r"<title\b.*?</title>", "", osis, flags=re.S)
    osis = re.sub(r"<[^>]+>", "", osis)
    return re.sub(r"\s+", " ", osis).strip()


def main() -> None:
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    texts = root / "usr/share/sword/modules/texts/ztext"
    english = verses(texts / "engKJV2006eb")
    spanish = verses(texts / "spaRV1909eb")
    assert len(english) == len(spanish), (len(english), len(spanish))
    pairs = [(clean(e), clean(s)) for e, s in zip(english, spanish)]
    pairs = [(e, s) for e, s in pairs if e and s]
    with out.open("w", encoding="utf-8") as f:
        for e, s in pairs:
            f.write(e.replace("\t", " ") + "\t" + s.replace("\t", " ") + "\n")
    print(f"{len(pairs)} verse pairs -> {out}")


if __name__ == "__main__":
    main()
