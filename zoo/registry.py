"""Register, list and fetch encoders.

Registration checks everything before anything becomes visible: the card validates, the
weights are safetensors (never pickle) and load strictly into the declared architecture,
ONNX export matches PyTorch on a probe input. Files go to the content-addressed store;
the revision becomes visible in one database transaction; if that fails, blobs written
by this call are removed again.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from rules.vocabulary import Vocabulary, load_vocabulary

from .access import ANONYMOUS, ORG, OWNER, Reader, repo_id, visible
from .cards import EncoderCard, FileEntry, StoredCard, declared_part, now
from .catalog import EncoderRow, FileRow, RevisionRow
from .search import anatomy_words, query_anatomy, query_modalities, query_words, spellings
from .storage import BlobStore

COMMIT = re.compile(r"^[0-9a-f]{40}$")
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
CONFIG = "config.json"
README = "README.md"
FILES = (CONFIG, README, WEIGHTS, ONNX)


class RegistrationError(ValueError):
    """The upload is refused; `field` says which part, the message says why."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


class RegistrationConflict(RegistrationError):
    """The upload repeats the latest revision (same weights, same card)."""


def _detail(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())


PICKLE_SIGNATURES = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def check_safetensors(data: bytes) -> dict[str, Any]:
    """Refuse pickles and anything that is not a safetensors file, by content.

    A safetensors file is an 8-byte little-endian header length N and N bytes of JSON
    object; that structure is checked first, so a valid file is never mistaken for a
    pickle whatever its length bytes are (a header of 128 + 256k bytes starts with 0x80,
    like a pickle). Only a file that is not safetensors is then named as a pickle or zip
    checkpoint, to say what to do instead. Returns the parsed header."""
    header_len = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    if 2 <= header_len <= min(len(data) - 8, 100_000_000) and data[8:9] == b"{":
        try:
            header = json.loads(data[8:8 + header_len])
        except ValueError:
            header = None
        if isinstance(header, dict):
            return header
    if data.startswith(PICKLE_SIGNATURES):
        raise RegistrationError("weights", "pickle-based checkpoints (torch.save, .pt/.pth/.bin) "
                                "are refused; save with safetensors.torch.save_file")
    if len(data) < 8:
        raise RegistrationError("weights", "not a safetensors file (too short)")
    raise RegistrationError("weights", "not a safetensors file (an 8-byte header length "
                            "followed by a JSON header was expected)")


def check_fit(architecture: str, expected: dict[str, tuple[int, ...]],
              given: dict[str, tuple[int, ...]]) -> None:
    """Refuse weights whose tensor names or shapes differ from the architecture's."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(k for k in set(expected) & set(given) if expected[k] != given[k])
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} tensors (e.g. {unexpected[:3]})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: weights {given[k]}, "
                     f"{architecture} expects {expected[k]})")
    raise RegistrationError("weights", "weights do not fit the declared architecture: "
                            + "; ".join(parts))


@dataclass
class Prepared:
    card: EncoderCard
    weights: bytes
    onnx: bytes
    feature_dim: int
    parity: float
    parameters: int


def prepare(card_data: dict[str, Any], weights: bytes, onnx: bytes | None = None) -> Prepared:
    """Validate and convert an upload; nothing is stored yet.

    With `onnx` given (a mirrored encoder), that file is verified instead of re-exported.
    Fields the server computes (revision, files, feature_dim, parity...) are ignored, so
    a card downloaded from a zoo uploads again unchanged; they are measured anew.
    """
    import torch
    from safetensors.torch import load as load_safetensors

    from .architectures import ArchitectureError, build_encoder
    from .export import (
        PARITY_TOLERANCE,
        ExportError,
        export_onnx,
        parity,
        probe_input,
        probe_size,
        size_agnostic,
    )
    from .task_models import build_task_model

    try:
        card = EncoderCard.model_validate(declared_part(card_data))
    except ValidationError as err:
        raise RegistrationError("config", _detail(err)) from None
    header = check_safetensors(weights)

    def build() -> torch.nn.Module:
        if card.task is None:
            return build_encoder(card.architecture.name, card.spatial_dims, card.in_channels,
                                 card.input_size, card.architecture.args)
        return build_task_model(card)

    try:
        # On the meta device first: the declared architecture's tensor shapes, without
        # allocating them, so widths of 65536 in a tiny upload cost nothing before refusal.
        with torch.device("meta"):
            skeleton = build()
    except ArchitectureError as err:
        raise RegistrationError("config.architecture", str(err)) from None
    declared = {k: tuple(v.get("shape", ())) for k, v in header.items()
                if k != "__metadata__" and isinstance(v, dict)}
    check_fit(card.architecture.name,
              {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}, declared)
    model = build()
    try:
        state = load_safetensors(weights)
    except Exception as err:  # safetensors raises its own error types
        raise RegistrationError("weights", f"unreadable safetensors: {err}") from None
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model = model.float().eval()
    size = probe_size(model, card.input_size)
    encoder = model.encoder if card.task is not None else model
    with torch.inference_mode():
        feature_dim = int(encoder(probe_input(card.in_channels, size, batch=1)).shape[1])
    output = "features" if card.task is None else "probabilities"
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / ONNX
        try:
            if onnx is None:
                export_onnx(model, probe_input(card.in_channels, size), onnx_path, output)
                # Dynamic spatial axes are checked at a second size too.
                sizes = [size, [s + 4 for s in size]] if size_agnostic(model) else [size]
            else:  # a mirrored file may have fixed spatial axes: check it as declared
                onnx_path.write_bytes(onnx)
                sizes = [list(card.input_size)]
            diff = max(parity(model, onnx_path, probe_input(card.in_channels, s, batch=3,
                                                            seed=1)) for s in sizes)
        except ExportError as err:
            raise RegistrationError("weights", f"ONNX export failed: {err}") from None
        except Exception as err:  # onnxruntime cannot load or run a provided file
            raise RegistrationError("onnx", f"ONNX file unusable: {err}") from None
        if not diff < PARITY_TOLERANCE:
            raise RegistrationError("weights", f"ONNX output differs from PyTorch by {diff:.2e} "
                                    f"(tolerance {PARITY_TOLERANCE:g})")
        onnx_bytes = onnx_path.read_bytes()
    return Prepared(card=card, weights=weights, onnx=onnx_bytes, feature_dim=feature_dim,
                    parity=diff, parameters=sum(p.numel() for p in model.parameters()))


def _same(stored: dict[str, Any], weights_sha: str, declared: dict[str, Any]) -> bool:
    """Whether an upload repeats a stored revision: the same weights and the same card."""
    return (stored.get("files", {}).get(WEIGHTS, {}).get("sha256") == weights_sha
            and declared_part(stored) == declared)


def commit_id(name: str, number: int, shas: dict[str, str]) -> str:
    """A 40-hex id per revision, as Hugging Face clients expect of a commit."""
    text = name + "\n" + str(number) + "\n" + "\n".join(f"{k}={v}" for k, v in sorted(shas.items()))
    return hashlib.sha1(text.encode()).hexdigest()


def _text_match(text: str, vocab: Vocabulary) -> Any:
    """SQL condition: `text` in an encoder's name, description, modality or dataset names,
    or a modality the vocabulary reads it as; an anatomy also matches its other names in
    that text ("thorax" finds "chest")."""
    card = RevisionRow.card
    columns = (EncoderRow.name, EncoderRow.description, EncoderRow.modality,
               card[("pretraining_data", "name")].as_string(),
               card[("lineage", "dataset")].as_string())
    words = {text.lower()}
    anatomy = query_anatomy(vocab, text)
    if anatomy:
        words |= anatomy_words(vocab, anatomy)
    terms = [func.lower(column).contains(word, autoescape=True)
             for column in columns for word in sorted(words)]
    named = set().union(*(spellings(vocab, m) for m in query_modalities(vocab, text)))
    if named:
        terms.append(func.lower(EncoderRow.modality).in_(sorted(named)))
    return or_(*terms)


class Registry:
    def __init__(self, sessions: sessionmaker[Session], store: BlobStore):
        self.sessions, self.store = sessions, store

    def register(self, prepared: Prepared, family: str | None = None, *, owner: str = ORG,
                 private: bool | None = None,
                 within: Callable[[Session, StoredCard], None] | None = None) -> StoredCard:
        """Store files and add a revision to the repository `owner/card.name`. Whether the
        caller may write there is the caller's check. An upload that repeats the latest
        revision (same weights, same card) raises RegistrationConflict. Without a family,
        the pretext family is the encoder's earlier one; without `private`, a new
        repository is public and an existing one keeps its visibility. `within` runs in the
        registering transaction before it commits (a job marks itself done there); if it
        raises, nothing is registered."""
        from .modelcard import render

        card = prepared.card
        if not OWNER.match(owner):
            raise RegistrationError("owner", f"owner {owner!r} is not a valid namespace (lower "
                                    "case letters, digits, '.', '_' and '-')")
        repo = repo_id(owner, card.name)
        written: list[str] = []
        try:
            w_sha, w_size, new = self.store.put_bytes(prepared.weights)
            if new:
                written.append(w_sha)
            o_sha, o_size, new = self.store.put_bytes(prepared.onnx)
            if new:
                written.append(o_sha)
            with self.sessions.begin() as session:
                row = session.scalars(select(EncoderRow).where(EncoderRow.name == repo)
                                      .with_for_update()).first()
                family = card.pretext.family or family or (row.family if row else None)
                pretext = card.pretext.model_copy(update={"family": family})
                number = 1
                if row is not None:
                    latest = session.scalars(select(RevisionRow).where(
                        RevisionRow.encoder_id == row.id,
                        RevisionRow.number == row.latest_revision)).first()
                    declared = json.loads(card.model_copy(update={"pretext": pretext})
                                          .model_dump_json())
                    if latest is not None and _same(latest.card, w_sha, declared):
                        raise RegistrationConflict(
                            "weights", f"identical to revision {row.latest_revision} of "
                            f"{repo} (same weights and card); revisions are immutable, "
                            "nothing to add")
                    number = row.latest_revision + 1
                files = {WEIGHTS: FileEntry(sha256=w_sha, size=w_size),
                         ONNX: FileEntry(sha256=o_sha, size=o_size)}
                created = now()
                stored = StoredCard(**card.model_dump(exclude={"pretext"}), pretext=pretext,
                                    repo_id=repo, revision=number, commit="0" * 40,
                                    created_at=created, feature_dim=prepared.feature_dim,
                                    parameters=prepared.parameters,
                                    onnx_parity_max_abs_diff=prepared.parity, files=files)
                # The commit id hashes config.json itself, so config.json cannot carry it.
                config_bytes = stored.model_dump_json(
                    indent=2, exclude={"commit": True, "files": {CONFIG, README}}).encode()
                c_sha, c_size, new = self.store.put_bytes(config_bytes)
                if new:
                    written.append(c_sha)
                files[CONFIG] = FileEntry(sha256=c_sha, size=c_size)
                stored.commit = commit_id(repo, number,
                                          {k: v.sha256 for k, v in files.items()})
                r_sha, r_size, new = self.store.put_bytes(render(stored).encode())
                if new:
                    written.append(r_sha)
                files[README] = FileEntry(sha256=r_sha, size=r_size)
                stored.files = files
                if row is None:
                    row = EncoderRow(name=repo, owner=owner, private=bool(private),
                                     created_at=created, description="",
                                     architecture="", modality="", method_id="",
                                     spatial_dims=0, in_channels=0, feature_dim=0,
                                     latest_revision=0, updated_at=created)
                    session.add(row)
                elif private is not None:
                    row.private = private
                row.architecture = card.architecture.name
                row.task = card.task.kind if card.task else None
                row.modality = card.modality
                row.method_id = card.pretext.method_id
                row.family = stored.pretext.family
                row.parent = card.parent
                row.spatial_dims = card.spatial_dims
                row.in_channels = card.in_channels
                row.feature_dim = prepared.feature_dim
                row.latest_revision = number
                row.description = card.description[:2000]
                row.updated_at = created
                session.flush()
                rev = RevisionRow(encoder_id=row.id, number=number, commit=stored.commit,
                                  card=json.loads(stored.model_dump_json()), created_at=created)
                session.add(rev)
                session.flush()
                for filename, entry in files.items():
                    session.add(FileRow(revision_id=rev.id, filename=filename,
                                        sha256=entry.sha256, size=entry.size))
                if within is not None:
                    session.flush()
                    within(session, stored)
            return stored
        except BaseException:
            for sha in written:
                # Only blobs this call created are candidates; keep one if a committed
                # revision of another upload (identical bytes, concurrently) now uses it.
                self.delete_if_unreferenced(sha)
            raise

    def referenced(self, sha: str) -> bool:
        """Whether any committed encoder file or dataset uses this blob."""
        from .catalog import DatasetRow

        try:
            with self.sessions() as session:
                files = session.scalar(select(func.count()).select_from(FileRow)
                                       .where(FileRow.sha256 == sha))
                datasets = session.scalar(select(func.count()).select_from(DatasetRow)
                                          .where(DatasetRow.sha256 == sha))
                return bool(files or datasets)
        except Exception:  # database unusable: nothing committed can reference our new blob
            return False

    def delete_if_unreferenced(self, sha: str) -> None:
        """Clean up a blob that a failed write created, unless something committed uses it."""
        if not self.referenced(sha):
            self.store.delete(sha)

    def list(self, *, reader: Reader = ANONYMOUS, modality: str | None = None,
             method: str | None = None, family: str | None = None, dims: int | None = None,
             q: str | None = None, owner: str | None = None, limit: int = 100,
             offset: int = 0, vocabulary: Vocabulary | None = None,
             task: str | None = None, parent: str | None = None
             ) -> tuple[list[EncoderRow], int]:
        """Visible repositories, filtered, in one query (plus its count).

        `modality` matches every spelling the rules vocabulary knows for it (cards keep the
        uploader's). `q` is a case-insensitive substring of the name, description,
        modality, or the latest card's pretraining dataset (or fine-tuning dataset) name;
        a `q` that the vocabulary reads as a modality or an anatomy ("cxr", "chest") also
        finds the modalities it names. A query of several words that matches nothing as a
        phrase matches where each of its words does ("chest ct", "pneumonia x-ray").
        `task` is "encoder" (no head) or a task model's kind; `parent` lists the
        repositories whose latest card names that parent (a lineage's children).
        """
        vocab = vocabulary or load_vocabulary()
        query = select(EncoderRow).where(
            visible(reader, EncoderRow.owner, EncoderRow.private))
        if owner:
            query = query.where(EncoderRow.owner == owner)
        if modality:
            query = query.where(func.lower(EncoderRow.modality).in_(
                sorted(spellings(vocab, modality))))
        if method:
            query = query.where(EncoderRow.method_id == method)
        if family:
            query = query.where(EncoderRow.family == family)
        if dims:
            query = query.where(EncoderRow.spatial_dims == dims)
        if task:
            query = query.where(EncoderRow.task.is_(None) if task == "encoder"
                                else EncoderRow.task == task)
        if parent:
            query = query.where(EncoderRow.parent == parent)
        if q:
            # The latest revision only: (encoder_id, number) is unique, so no row doubles.
            query = query.outerjoin(RevisionRow, and_(
                RevisionRow.encoder_id == EncoderRow.id,
                RevisionRow.number == EncoderRow.latest_revision))
            words = query_words(q)
            match = _text_match(q, vocab)
            if words:  # the phrase, or else every word on its own
                match = or_(match, and_(*(_text_match(w, vocab)
                                          for w in words)))
            query = query.where(match)
        with self.sessions() as session:
            count = session.scalar(select(func.count()).select_from(query.subquery()))
            rows = session.scalars(query.order_by(EncoderRow.name).limit(limit)
                                   .offset(offset)).all()
        return list(rows), int(count or 0)

    def get(self, name: str, reader: Reader = ANONYMOUS) -> EncoderRow | None:
        """The repository `owner/name`, if this reader may see it."""
        with self.sessions() as session:
            return session.scalars(
                select(EncoderRow).where(EncoderRow.name == name)
                .where(visible(reader, EncoderRow.owner, EncoderRow.private))
                .options(selectinload(EncoderRow.revisions).selectinload(RevisionRow.files))
            ).first()

    def revision(self, name: str, revision: str | int | None,
                 reader: Reader = ANONYMOUS) -> RevisionRow | None:
        """Resolve a revision given as None/'main' (latest), a number, or a commit id, in a
        repository this reader may see."""
        with self.sessions() as session:
            query = (select(RevisionRow).join(EncoderRow).where(EncoderRow.name == name)
                     .where(visible(reader, EncoderRow.owner, EncoderRow.private))
                     .options(selectinload(RevisionRow.files),
                              selectinload(RevisionRow.encoder)))
            rev = str(revision) if revision is not None else "main"
            if rev == "main":
                query = query.order_by(RevisionRow.number.desc())
            elif rev.isascii() and rev.isdigit():
                if int(rev) > 2**31 - 1:  # no such revision; the column is 32-bit
                    return None
                query = query.where(RevisionRow.number == int(rev))
            elif COMMIT.match(rev):
                query = query.where(RevisionRow.commit == rev)
            else:
                return None
            return session.scalars(query.limit(1)).first()

    def names(self, reader: Reader = ANONYMOUS) -> list[str]:
        """Repository ids this reader may see (for 'did you mean' hints: never others')."""
        with self.sessions() as session:
            return list(session.scalars(select(EncoderRow.name).where(
                visible(reader, EncoderRow.owner, EncoderRow.private))).all())

    def set_private(self, name: str, private: bool) -> None:
        with self.sessions.begin() as session:
            row = session.scalars(select(EncoderRow).where(EncoderRow.name == name)).one()
            row.private = private

    def generation(self) -> tuple[int, int, int]:
        """Changes whenever a revision is added or a repository's visibility changes, by
        any process: (revision count, newest revision id, a digest of the private
        repositories). Whoever caches what readers may see (the API's index of public
        encoders for recommendations) must refresh on both."""
        with self.sessions() as session:
            count, top = session.execute(
                select(func.count(RevisionRow.id), func.max(RevisionRow.id))).one()
            hidden = session.scalars(select(EncoderRow.id).where(EncoderRow.private)
                                     .order_by(EncoderRow.id)).all()
        return int(count or 0), int(top or 0), hash(tuple(hidden))
