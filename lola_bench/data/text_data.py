"""Training text for linearization: files (or a hub dataset) -> documents -> packed, shuffled token sequences.

Formats (chosen by suffix; a directory means every supported file below it, in sorted order):
  .txt     documents separated by blank lines; a file without blank lines has one document per line
           (the convention of wiki_demo.txt: one article per line)
  .raw     WikiText raw (CRLF lines): one document per article, split at top-level " = Title = " headings
  .jsonl   one record per line: {"text": ...} or Alpaca fields {instruction, input, output}
  .json    a list of such records (Alpaca-style instruction data), or {"data": [...]}
  org/name[:config]  a Hugging Face hub dataset (train split), only when online
Documents are tokenized without special tokens, joined with EOS after each one, cut into ``seq_len`` token
chunks (the tail remainder is dropped) and shuffled deterministically per epoch from ``seed``.

The RULER haystack (Paul Graham essays) and the held-out WikiText-2 test split are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError

SUFFIXES = (".txt", ".raw", ".jsonl", ".json")
REFUSED = ("paulgraham", "pg_essays")
HELD_OUT = ("wiki.test.raw", "wikitext-2-raw-wiki.test.raw", "wikitext-103-raw-wiki.test.raw")

ALPACA_PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                 "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n{output}")
ALPACA_PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                       "{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}")

_WIKI_HEADING = re.compile(r"^ = [^=].* = $")


def check_allowed(path: str | os.PathLike) -> None:
    """Refuse the RULER haystack and the held-out perplexity split (one-line UserError)."""
    s = str(path)
    low = s.lower()
    if any(r in low for r in REFUSED):
        raise UserError(f"refusing to train on {s}: Paul Graham essays are the RULER haystack and must stay unseen")
    if Path(s).name.lower() in HELD_OUT:
        raise UserError(f"refusing to train on {s}: the WikiText test split is the held-out perplexity set")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def alpaca_text(record: dict) -> str:
    """One training text from an Alpaca record (instruction / optional input / output)."""
    instruction = str(record.get("instruction", "")).strip()
    inp = str(record.get("input", "") or "").strip()
    output = str(record.get("output", "")).strip()
    if inp:
        return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=inp, output=output)
    return ALPACA_PROMPT.format(instruction=instruction, output=output)


def record_text(record, where: str) -> str:
    """A jsonl/json record -> text: its "text" field, else the Alpaca fields."""
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        if isinstance(record.get("text"), str):
            return record["text"]
        if "instruction" in record and "output" in record:
            return alpaca_text(record)
    raise UserError(f"{where}: record has neither a 'text' field nor Alpaca fields (instruction, output)")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text: {e}") from None


def read_txt(path: Path) -> list[str]:
    text = _read(path).replace("\r\n", "\n")
    if re.search(r"\n[ \t]*\n", text):
        docs = re.split(r"\n[ \t]*\n", text)
    else:
        docs = text.split("\n")
    return [d.strip() for d in docs if d.strip()]


def read_wikitext_raw(path: Path) -> list[str]:
    docs, cur = [], []
    for line in _read(path).replace("\r\n", "\n").split("\n"):
        if _WIKI_HEADING.match(line) and any(x.strip() for x in cur):
            docs.append("\n".join(cur).strip())
            cur = []
        cur.append(line)
    if any(x.strip() for x in cur):
        docs.append("\n".join(cur).strip())
    return docs


def read_jsonl(path: Path) -> list[str]:
    out = []
    for n, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: invalid JSON: {e}") from None
        out.append(record_text(rec, f"{path}:{n}"))
    return [t for t in out if t.strip()]


def read_json(path: Path) -> list[str]:
    try:
        data = json.loads(_read(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of records (Alpaca format)")
    return [t for i, rec in enumerate(data) if (t := record_text(rec, f"{path} record {i}")).strip()]


READERS = {".txt": read_txt, ".raw": read_wikitext_raw, ".jsonl": read_jsonl, ".json": read_json}


def expand_paths(paths) -> list[Path]:
    """Files named directly or found (recursively, sorted) in directories; each checked by ``check_allowed``."""
    files = []
    for p in paths:
        check_allowed(p)
        path = Path(p).expanduser()
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
            if not found:
                raise UserError(f"no {'/'.join(SUFFIXES)} files in directory {p}")
            for f in found:
                check_allowed(f)
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise UserError(f"unsupported data file {p}: use {', '.join(SUFFIXES)} (or a directory of them)")
            files.append(path)
        else:
            raise UserError(f"data path not found: {p}")
    return files


def _hub_id(p: str) -> bool:
    name = p.split(":", 1)[0]
    parts = name.split("/")
    return (len(parts) == 2 and all(parts) and not name.lower().endswith(SUFFIXES)
            and not p.startswith((".", "~", "/")) and not Path(p).expanduser().exists())


def _offline() -> bool:
    return any(os.environ.get(v, "0") not in ("0", "", "false", "False")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket

    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def read_hub(spec: str) -> list[str]:
    """``org/name[:config]`` -> texts of its train split via ``datasets.load_dataset`` (online only)."""
    if _offline() or not _hub_reachable():
        raise UserError(f"data path not found: {spec} (as a hub dataset id it needs the internet, which is "
                        f"unavailable here)")
    import datasets

    name, _, config = spec.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split="train")
    except Exception as e:  # noqa: BLE001 - any hub/loader failure becomes a one-line user error
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot load hub dataset {spec}: {first}") from None
    return [t for i, rec in enumerate(ds) if (t := record_text(rec, f"{spec} row {i}")).strip()]


@dataclass
class SourceInfo:
    path: str
    format: str
    sha256: str | None      # files only; hub datasets record their fingerprint instead
    documents: int
    tokens: int = 0
    fingerprint: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def read_sources(paths) -> list[tuple[SourceInfo, list[str]]]:
    """Every source's documents, with provenance (sha256 of each file)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise UserError("no training data given")
    out = []
    for p in paths:
        check_allowed(p)
        if _hub_id(str(p)):
            docs = read_hub(str(p))
            out.append((SourceInfo(str(p), "hub", None, len(docs)), docs))
            continue
        for f in expand_paths([p]):
            docs = READERS[f.suffix.lower()](f)
            out.append((SourceInfo(str(f.resolve()), f.suffix.lower().lstrip("."), file_sha256(f), len(docs)), docs))
    return out


def tokenize_documents(docs: list[str], tokenizer, batch: int = 256) -> list[int]:
    """Token ids of all documents, each followed by EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError("the tokenizer has no EOS token to separate documents")
    ids: list[int] = []
    for i in range(0, len(docs), batch):
        enc = tokenizer(docs[i:i + batch], add_special_tokens=False)["input_ids"]
        for seq in enc:
            ids.extend(seq)
            ids.append(eos)
    return ids


@dataclass
class PackedData:
    """Token chunks (N, seq_len) and a deterministic order: epoch e visits chunks in randperm(N, seed + e)."""
    chunks: torch.Tensor
    seed: int
    sources: list[SourceInfo] = field(default_factory=list)
    _orders: dict = field(default_factory=dict, repr=False)

    @property
    def num_sequences(self) -> int:
        return self.chunks.shape[0]

    @property
    def seq_len(self) -> int:
        return self.chunks.shape[1]

    @property
    def num_tokens(self) -> int:
        return self.chunks.numel()

    def order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._orders = {epoch: torch.randperm(self.num_sequences, generator=g)}
        return self._orders[epoch]

    def sequence(self, position: int) -> torch.Tensor:
        """The ``position``-th sequence of the endless shuffled stream (epochs repeat with a new order)."""
        epoch, i = divmod(position, self.num_sequences)
        return self.chunks[self.order(epoch)[i]]

    def batch(self, position: int, batch_size: int) -> torch.Tensor:
        """Sequences position .. position+batch_size-1 as a (batch_size, seq_len) LongTensor."""
        return torch.stack([self.sequence(position + j) for j in range(batch_size)])

    def fingerprint(self) -> str:
        """Identity of the data (sources' hashes + packing) for resume checks."""
        parts = [f"{s.path}|{s.sha256 or s.fingerprint}" for s in self.sources]
        parts.append(f"{self.num_sequences}x{self.seq_len}|{self.seed}")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    def describe(self) -> dict:
        return {"sources": [s.to_dict() for s in self.sources], "sequences": self.num_sequences,
                "seq_len": self.seq_len, "tokens": self.num_tokens, "seed": self.seed}


def load_packed(paths, tokenizer, seq_len: int = 1024, seed: int = 0) -> PackedData:
    """Read, tokenize (EOS between documents), pack into ``seq_len`` chunks. Refuses PG essays."""
    if seq_len < 2:
        raise UserError(f"seq_len must be >= 2, got {seq_len}")
    stream: list[int] = []
    infos = []
    for info, docs in read_sources(paths):
        ids = tokenize_documents(docs, tokenizer)
        info.tokens = len(ids)
        stream.extend(ids)
        infos.append(info)
    n = len(stream) // seq_len
    if n == 0:
        raise UserError(f"the training data has {len(stream)} tokens, fewer than one sequence of {seq_len}")
    chunks = torch.tensor(stream[:n * seq_len], dtype=torch.long).view(n, seq_len)
    return PackedData(chunks=chunks, seed=seed, sources=infos)
