#!/usr/bin/env python3
"""Trains the tiny gpt-oss model's byte-level BPE tokenizer and encodes the corpus for training.

    python tools/train_tokenizer.py                       # train + encode with the defaults below
    python tools/train_tokenizer.py --no-train            # encode with an existing tokenizer.json

Reads build/corpus/corpus.txt (tools/prepare_corpus.sh) and writes into --out-dir (default
build/tiny_data, small enough to carry to the GPU machine):
  tokenizer.json   HF ``tokenizers`` format: GPT-2-style byte-level BPE (no unknown token, any
                   UTF-8 text round-trips), one special token ``<|endoftext|>``
  tokens.npy       the corpus as one token stream, uint16 (int32 if the vocabulary exceeds 65536);
                   ``<|endoftext|>`` stands between the corpus' sources
  tokens.json      what the stream is: vocab size, token count, eot id, sha256 of corpus and tokenizer
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

EOT = "<|endoftext|>"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train(corpus: Path, vocab_size: int, out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([str(corpus)], trainer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))


def documents(corpus: Path):
    """The corpus' sources: prepare_corpus.sh separates them with one blank line."""
    text = corpus.read_text(encoding="utf-8")
    return [d + "\n" for d in text.rstrip("\n").split("\n\n")]


def encode(corpus: Path, tokenizer_path: Path, out_dir: Path) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    eot = tok.token_to_id(EOT)
    if eot is None:
        sys.exit(f"train_tokenizer: {tokenizer_path} has no {EOT} token")
    V = tok.get_vocab_size()
    dtype = np.uint16 if V <= 65536 else np.int32
    pieces = []
    for doc in documents(corpus):
        lines = doc.splitlines(keepends=True)   # the byte-level pre-tokenizer never joins across "\n"
        for start in range(0, len(lines), 20000):
            enc = tok.encode_batch(lines[start:start + 20000], add_special_tokens=False)
            pieces.extend(np.asarray(e.ids, dtype=dtype) for e in enc)
        pieces.append(np.asarray([eot], dtype=dtype))
    tokens = np.concatenate(pieces)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "tokens.npy", tokens)
    meta = {"tokens": int(tokens.size), "vocab_size": V, "eot_id": eot, "dtype": np.dtype(dtype).name,
            "corpus_bytes": corpus.stat().st_size, "bytes_per_token": corpus.stat().st_size / tokens.size,
            "corpus_sha256": sha256(corpus), "tokenizer_sha256": sha256(tokenizer_path)}
    (out_dir / "tokens.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path("build/corpus/corpus.txt"))
    ap.add_argument("--out-dir", type=Path, default=Path("build/tiny_data"))
    ap.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary incl. 256 bytes and EOT")
    ap.add_argument("--no-train", action="store_true", help="reuse OUT_DIR/tokenizer.json")
    ap.add_argument("--no-encode", action="store_true", help="only train the tokenizer")
    args = ap.parse_args(argv)
    if not args.corpus.is_file():
        sys.exit(f"train_tokenizer: corpus not found: {args.corpus} (run tools/prepare_corpus.sh)")
    tok_path = args.out_dir / "tokenizer.json"
    if not args.no_train:
        t0 = time.time()
        train(args.corpus, args.vocab_size, tok_path)
        print(f"trained {tok_path} (vocab {args.vocab_size}) in {time.time() - t0:.1f} s")
    if not args.no_encode:
        t0 = time.time()
        meta = encode(args.corpus, tok_path, args.out_dir)
        print(f"encoded {meta['corpus_bytes']} bytes into {meta['tokens']} tokens "
              f"({meta['bytes_per_token']:.2f} bytes/token) -> {args.out_dir / 'tokens.npy'} "
              f"in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
