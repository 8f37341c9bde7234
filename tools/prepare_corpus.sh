#!/usr/bin/env bash
# Builds the English training corpus of the tiny gpt-oss model (docs/tiny_model.md) from openly
# licensed texts that Debian packages ship, and writes
#   build/corpus/corpus.txt      one paragraph (or dictionary entry) a line, sources separated by a blank line
#   build/corpus/parts/*.txt     each source alone
#   build/corpus/SOURCES.txt     package, version, license and size of each source, and the corpus' sha256
# Installs the packages it reads (apt-get update once, and only if one is missing; needs root).
# Deterministic: the same package versions give a byte-identical corpus.
#   bash tools/prepare_corpus.sh [OUT_DIR]       (default build/corpus)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/corpus}

# package -> what it gives; bible-kjv holds the reader of bible-kjv-text's compressed text.
PKGS=(bible-kjv bible-kjv-text sword-text-web sword-comm-mhcc wordnet-base jargon-text dict-devil)
need=()
for p in "${PKGS[@]}"; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" = installed ] || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
versions=""
for p in "${PKGS[@]}"; do versions+="$p $(dpkg-query -W -f='${Version}' "$p")"$'\n'; done

mkdir -p "$OUT/parts"
PKG_VERSIONS="$versions" LC_ALL=C.UTF-8 python3 - "$OUT" <<'PY'
import glob, gzip, hashlib, html, os, re, struct, subprocess, sys, zlib

out_dir = sys.argv[1]
versions = dict(l.split(" ", 1) for l in os.environ["PKG_VERSIONS"].strip().splitlines())

QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " ",
                        "\u2002": " ", "\u2003": " ", "\u2009": " ", "\u200b": "", "\ufeff": ""})


def clean(s):
    """One paragraph: ASCII quotes, single spaces, no space before punctuation."""
    s = re.sub(r"\s+", " ", s.translate(QUOTES)).strip()
    s = re.sub(r"\s+([,.;:!?)])", r"\1", s)
    return re.sub(r"\(\s+", "(", s)


def prose(p, min_words):
    """A paragraph worth keeping: enough words, mostly letters (drops tables of contents, art)."""
    letters = sum(c.isalpha() or c.isspace() for c in p)
    return len(p.split()) >= min_words and letters >= 0.8 * len(p)


# ---- SWORD modules (zText / zCom): read the compressed blocks directly, in order. The verse
# index is not needed (and mod2imp misreads the MHCC module's), and markup is stripped here.
def sword_blocks(moddir):
    blocks = []
    for testament in ("ot", "nt"):
        for idx_path in sorted(glob.glob(os.path.join(moddir, testament + ".?zs"))):
            with open(idx_path, "rb") as f:
                idx = f.read()
            with open(idx_path[:-1] + "z", "rb") as f:
                data = f.read()
            for i in range(0, len(idx) - 11, 12):        # entries: offset, size, uncompressed size
                off, size, _ = struct.unpack("<III", idx[i:i + 12])
                if size:
                    blocks.append(zlib.decompress(data[off:off + size]).decode("utf-8", "replace"))
    if not blocks:
        sys.exit(f"prepare_corpus: no SWORD text blocks in {moddir}")
    return blocks


PAR = "\x00"
DROP = re.compile(r"<(note|title|table|rdg|speaker|catchWord)\b[^>]*?(?<!/)>.*?</\1>", re.S)
BREAK = re.compile(r"<(?:div|chapter|lg|/lg|p|/p|list|/list|item|/item|lb)\b[^>]*>|</div>")


def osis_paragraphs(text):
    text = DROP.sub(" ", text)                         # footnotes, headings, outlines
    text = re.sub(r"<title\b[^>]*/>", " ", text)
    text = re.sub(r'<div\b[^>]*type="x-milestone"[^>]*/>', "", text)   # verse milestones: no break
    text = BREAK.sub(PAR, text)                        # paragraphs, stanzas, chapters
    text = html.unescape(re.sub(r"<[^>]*>", "", text))  # <w lemma=...>word</w> -> word, etc.
    return [c for c in (clean(p) for p in text.split(PAR)) if c]


def sword(moddir, min_words):
    return [p for b in sword_blocks(moddir) for p in osis_paragraphs(b) if prose(p, min_words)]


def kjv():
    """The King James Version through bible-kjv's reader: one chapter a line."""
    text = subprocess.run(["bible", "-f", "gen1:1-rev22:21"], check=True, capture_output=True,
                          text=True).stdout
    chapters, verses, key = [], [], None
    for line in text.splitlines():
        m = re.match(r"^(\S+?)(\d+):\d+ (.*)$", line)
        if not m:
            continue
        if (m.group(1), m.group(2)) != key and verses:
            chapters.append(clean(" ".join(verses)))
            verses = []
        key = (m.group(1), m.group(2))
        verses.append(m.group(3))
    chapters.append(clean(" ".join(verses)))
    if len(chapters) != 1189:
        sys.exit(f"prepare_corpus: expected the KJV's 1189 chapters, read {len(chapters)}")
    return chapters


def wordnet(d="/usr/share/wordnet"):
    """Every synset: 'word, synonym (noun): gloss. For example: "example sentence".'"""
    entries = []
    for pos, name in (("noun", "noun"), ("verb", "verb"), ("adj", "adjective"), ("adv", "adverb")):
        with open(os.path.join(d, "data." + pos), encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:   # license header
                    continue
                head, gloss = line.split(" | ", 1)
                fields = head.split()
                words = []
                for w in fields[4:4 + 2 * int(fields[3], 16):2]:
                    w = re.sub(r"\([a-z]+\)$", "", w).replace("_", " ")
                    if w not in words:
                        words.append(w)
                parts = [g.strip() for g in gloss.strip().split(";")]
                defs = [p for p in parts if p and not p.startswith('"')]
                examples = [e for e in (p.strip('"').strip() for p in parts if p.startswith('"')) if e]
                s = (", ".join(words) + f" ({name}): " + "; ".join(defs)).rstrip(". ") + "."
                if examples:
                    s += " For example: " + "; ".join(f'"{e}"' for e in examples) + "."
                entries.append(clean(s))
    return entries


def unwrap(text, min_words):
    pars = (clean(p.replace("\n", " ")) for p in re.split(r"\n\s*\n", text))
    return [p for p in pars if prose(p, min_words)]


def jargon(path="/usr/share/doc/jargon-text/jargon.txt.gz"):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return unwrap(re.sub(r"[{}]", "", f.read()), 8)      # {cross reference} -> cross reference


def devil(path="/usr/share/dictd/devil.dict.dz"):            # dictzip is gzip
    with gzip.open(path, "rt", encoding="latin-1") as f:
        text = f.read()
    return unwrap(text[text.index("PREFACE"):].replace("_", ""), 4)


SOURCES = [  # name, packages, license, title, extractor
    ("kjv", "bible-kjv-text (text), bible-kjv (reader)", "public domain (KJV text, 1611)",
     "King James Version of the Bible", kjv),
    ("web", "sword-text-web", "public domain (dedicated by its translators)",
     "World English Bible with Deuterocanon (2020 stable text, modern English)",
     lambda: sword("/usr/share/sword/modules/texts/ztext/engWEB2015eb", 1)),
    ("mhcc", "sword-comm-mhcc", "public domain (1706)",
     "Matthew Henry's Concise Commentary on the Whole Bible",
     lambda: sword("/usr/share/sword/modules/comments/zcom/mhcc", 6)),
    ("wordnet", "wordnet-base", "WordNet 3.0 license (permissive, BSD-like; keep its notice)",
     "WordNet 3.0 glosses and example sentences", wordnet),
    ("jargon", "jargon-text", "public domain", "The Jargon File 4.4.7", jargon),
    ("devil", "dict-devil", "public domain (1911)", "The Devil's Dictionary by Ambrose Bierce", devil),
]

texts, lines = [], ["# build/corpus/corpus.txt, written by tools/prepare_corpus.sh (see docs/tiny_model.md)",
                    "# source | Debian package(s) = version | license | bytes | lines | title"]
for name, pkgs, lic, title, fn in SOURCES:
    text = "\n".join(fn()) + "\n"
    with open(os.path.join(out_dir, "parts", name + ".txt"), "w", encoding="utf-8") as f:
        f.write(text)
    texts.append(text)
    pv = ", ".join(f"{p.split()[0]}={versions[p.split()[0]]}" + (" " + " ".join(p.split()[1:]) if " " in p else "")
                   for p in pkgs.split(", "))
    lines.append(f"{name} | {pv} | {lic} | {len(text.encode())} | {text.count(chr(10))} | {title}")
corpus = "\n".join(texts).encode("utf-8")
with open(os.path.join(out_dir, "corpus.txt"), "wb") as f:
    f.write(corpus)
lines.append(f"corpus.txt | {len(corpus)} bytes | sha256 {hashlib.sha256(corpus).hexdigest()}")
with open(os.path.join(out_dir, "SOURCES.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines[1:]))
PY
echo "wrote $OUT/corpus.txt and $OUT/SOURCES.txt"
