"""A second labelled corpus of another kind: recorded drum-kit samples (Hydrogen drum kits).

Why this exists: the noisy-label study on recorded speech (FSDD) shows what the method does on
one kind of sound. Drum samples are a different kind (percussive, broadband, short decays), are
real recordings, and ship with Debian (package ``hydrogen-drumkits``, installed under
``/usr/share/hydrogen/data/drumkits/<Kit>/``), so anyone can rebuild the corpus.

Each kit folder holds a ``drumkit.xml`` naming its instruments and, per instrument, the sample
files of its velocity layers. This module turns that into a *clean labelled source*:

* every instrument name is mapped to one class of :data:`DRUM_CLASSES` by
  :func:`classify_instrument` (instruments that do not map, or map to two classes, are listed in
  ``skipped.csv`` with the reason, never dropped silently);
* every layer file of a mapped instrument is one clip; the kit is the clip's group (as a speaker
  is in FSDD), so a whole kit can be held out as the test set;
* clips are decoded, mixed down to mono, cut to ``max_seconds`` (with a 10 ms fade-out where
  cut) and written as 16-bit WAV at their own sample rate (the workflow resamples).

Output (``<out>``)::

    audio/*.wav        one clip per layer file: <kit>-<class>-<nnn>.wav
    labels.csv         fname,label,group,instrument,source   (group = kit slug)
    skipped.csv        kit,instrument,file,reason
    corpus_info.json   settings, per-class / per-kit counts, durations, kit licences

The noisy-label dataset (verified / unverified parts, planted label noise, true labels kept,
held-out kits) is then built from it by :mod:`workflow_lib.noisy_dataset` with its
``labels_csv`` source: the same builder, with the same noise-model options, as for FSDD.

``drumkit.xml`` is untrusted input: a DOCTYPE or entity declaration is refused (no entity
expansion), the file size is capped, and a sample path that is absolute or leads outside its
kit folder (``..``, a symlink) is refused and listed.

Command line::

    python -m workflow_lib.drum_corpus --kits-dir /usr/share/hydrogen/data/drumkits \\
        --out /work/drums_corpus/source
    python -m workflow_lib.noisy_dataset --audio-dir /work/drums_corpus/source/audio \\
        --labels-csv /work/drums_corpus/source/labels.csv --out /work/drums_corpus/dataset \\
        --test-groups the_black_pearl_1_0 --noise-rate 0.3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.parsers import expat

import numpy as np
import pandas as pd
import soundfile as sf

from .audio import to_model_rate
from .io import atomic_path, write_csv, write_json
from .noisy_dataset import prepare_audio_dir, run_builder_cli

#: The class vocabulary (fixed, so that studies on different kit sets stay comparable).
#: side_stick = cross-stick / rim click; snare includes rimshots; ride includes its bell;
#: hihat_pedal = the hi-hat closed with the foot; tambourine includes a pedal tambourine.
DRUM_CLASSES = (
    "kick",
    "snare",
    "side_stick",
    "tom",
    "hihat_closed",
    "hihat_open",
    "hihat_pedal",
    "crash",
    "ride",
    "clap",
    "cowbell",
    "tambourine",
)

#: Words of an instrument name that make it a playing technique outside the vocabulary even
#: though a class word is present ("Snare Roll", "Hat Semi-Open").
_EXCLUDED_WORDS = frozenset({"semi", "roll"})
_HAT_WORDS = frozenset({"hihat", "hh", "hat"})
_CLASS_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (label, re.compile(pattern))
    for label, pattern in (
        ("kick", r"^(kick\d*|bassdrum\d*|bd)$"),
        ("snare", r"^snare\d*$"),
        ("side_stick", r"^(stick|sidestick|rimclick)$"),
        ("tom", r"^tom(hi|mid|low|lo)?\d*$"),
        ("crash", r"^crash\w*$"),
        ("ride", r"^ride\w*$"),
        ("clap", r"^(hand)?claps?\d*$"),
        ("cowbell", r"^cowbell\d*$"),
        ("tambourine", r"^tambourine\d*$"),
    )
)
_HAT_STATES = (
    ("hihat_closed", frozenset({"closed", "cl"})),
    ("hihat_open", frozenset({"open", "opened", "op"})),
    ("hihat_pedal", frozenset({"pedal", "pd"})),
)

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".aif", ".aiff"})
MAX_XML_BYTES = 4 * 1024 * 1024  # real drumkit.xml files are < 200 kB
MAX_NAME_CHARS = 200  # an instrument name is a few words; longer text is cut, not trusted
FADE_SECONDS = 0.01
#: Same-recording test: peak normalised cross-correlation of the first 4,096 samples (0.5 s)
#: at 8 kHz, which ignores gain and a shift. Measured on the Debian kits (2017.09.19): across
#: kits, the two re-used recordings score 0.98 and 1.00 and no other pair of one class above
#: 0.86; within a kit, successive velocity layers of one drum (different hits) reach 0.995,
#: and layers that are gain-scaled copies of one recording (identical after the workflow's
#: SoX normalisation) score 1.000.
SAME_RECORDING_ACROSS_KITS = 0.95
SAME_RECORDING_IN_KIT = 0.999
FINGERPRINT_RATE = 8000
FINGERPRINT_SAMPLES = 4096
#: Version of the corpus rules (class vocabulary, name rules, duplicate tests); raise it when
#: a change makes the same kits give other clips or labels.
CORPUS_RULES = 1
SKIPPED_COLUMNS = ["kit", "instrument", "file", "reason"]
LABEL_COLUMNS = ["fname", "label", "group", "instrument", "source"]


class DrumKitError(ValueError):
    """A drumkit.xml that cannot be trusted or read (the whole kit is skipped and listed)."""


@dataclass(frozen=True)
class Instrument:
    """One instrument of a kit: its name and the sample files of its layers, as written."""

    name: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class DrumKit:
    """A parsed drumkit.xml."""

    name: str
    license: str
    instruments: tuple[Instrument, ...]


# --------------------------------------------------------------------------- classes


def _name_words(name: str) -> list[str]:
    """Lower-case words of an instrument name, with the multi-word class names joined
    ("Hi-Hat" -> hihat, "Bass Drum" -> bassdrum, "Side Stick" -> sidestick)."""
    text = re.sub(r"[^a-z0-9]+", " ", name.lower())
    for pattern, joined in (
        (r"\bhi hat\b", "hihat"),
        (r"\bbass drum\b", "bassdrum"),
        (r"\bside stick\b", "sidestick"),
        (r"\brim click\b", "rimclick"),
        (r"\bhand clap\b", "handclap"),
    ):
        text = re.sub(pattern, joined, text)
    return text.split()


def instrument_classes(name: str) -> set[str]:
    """Every class of the vocabulary that ``name`` names (empty: none; two or more: ambiguous)."""
    words = _name_words(name)
    if _EXCLUDED_WORDS.intersection(words):
        return set()
    found = {label for label, rule in _CLASS_RULES for word in words if rule.match(word)}
    if _HAT_WORDS.intersection(words):
        found |= {label for label, states in _HAT_STATES if states.intersection(words)}
    return found


def classify_instrument(name: str) -> tuple[str | None, str]:
    """``(class, "")`` for a name that maps to exactly one class, else ``(None, reason)``."""
    found = instrument_classes(name)
    if len(found) == 1:
        return found.pop(), ""
    if not found:
        return None, "instrument name maps to no class of the vocabulary"
    return None, f"instrument name is ambiguous: {', '.join(sorted(found))}"


# --------------------------------------------------------------------------- drumkit.xml


def _refuse(what: str) -> Callable[..., None]:
    """An expat handler that refuses a declaration: no DTD means no entity expansion at all."""

    def handler(*_: object) -> None:
        raise DrumKitError(f"drumkit.xml contains a {what}; refused (untrusted input)")

    return handler


def _local(tag: object) -> str:
    """Tag name without its namespace (kits exist with and without Hydrogen's namespace)."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _child_text(element: ET.Element, name: str) -> str:
    """Stripped text of the first child called ``name`` ("" when absent)."""
    for child in element:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return ""


def parse_drumkit(xml_path: str | os.PathLike[str]) -> DrumKit:
    """Read a drumkit.xml safely: size capped, DOCTYPE / entity declarations refused.

    Layers are found both in the old format (``instrument/layer/filename``, or a bare
    ``instrument/filename``) and the newer one (``instrument/instrumentComponent/layer``).
    """
    path = Path(xml_path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DrumKitError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_XML_BYTES:
        raise DrumKitError(f"{path} is larger than {MAX_XML_BYTES} bytes; refused")
    # A first pass with expat itself, whose handlers refuse any DTD: without a DOCTYPE no
    # entity can be declared, so the ElementTree pass below expands none.
    checker = expat.ParserCreate()
    checker.StartDoctypeDeclHandler = _refuse("DOCTYPE declaration")
    checker.EntityDeclHandler = _refuse("entity declaration")
    checker.ExternalEntityRefHandler = _refuse("external entity reference")
    try:
        checker.Parse(data, True)
        root = ET.fromstring(data)
    except (expat.ExpatError, ET.ParseError) as exc:
        raise DrumKitError(f"{path} is not well-formed XML: {exc}") from exc
    if _local(root.tag) != "drumkit_info":
        raise DrumKitError(f"{path}: root element is {_local(root.tag)!r}, not 'drumkit_info'")
    instruments = tuple(
        Instrument(
            name=_child_text(element, "name")[:MAX_NAME_CHARS],
            files=tuple((f.text or "").strip() for f in element.iter() if _local(f.tag) == "filename"),
        )
        for element in root.iter()
        if _local(element.tag) == "instrument"
    )
    return DrumKit(_child_text(root, "name"), _child_text(root, "license")[:500], instruments)


def sample_path(kit_dir: Path, filename: str) -> Path:
    """The sample file ``filename`` of the kit in ``kit_dir``; a ValueError for a name that is
    empty or absolute, or whose resolved path (symlinks followed) leaves the kit folder."""
    if not filename or "\x00" in filename:
        raise ValueError("empty sample file name")
    if Path(filename).is_absolute() or re.match(r"^[A-Za-z]:[\\/]", filename):
        raise ValueError("absolute sample path refused")
    resolved = (kit_dir / filename).resolve()
    if not resolved.is_relative_to(kit_dir.resolve()):
        raise ValueError("sample path leaves the kit folder; refused")
    return resolved


def kit_slug(folder_name: str) -> str:
    """A group name safe in file names and CSVs: "The Black Pearl 1.0" -> the_black_pearl_1_0."""
    slug = re.sub(r"[^a-z0-9]+", "_", folder_name.lower()).strip("_")
    if not slug:
        raise ValueError(f"kit folder name {folder_name!r} has no letters or digits")
    return slug


# --------------------------------------------------------------------------- collecting


@dataclass
class _Collected:
    """Clips found so far (one row per kept layer file) and the skips with their reasons."""

    clips: list[dict[str, str]]
    skipped: list[dict[str, str]]
    seen: dict[str, int]  # sha256 of a kept file -> its row in clips

    def skip(self, kit: str, instrument: str, file: str, reason: str) -> None:
        self.skipped.append({"kit": kit, "instrument": instrument, "file": file, "reason": reason})


def list_kits(kits_dir: Path, kits: Sequence[str] | None = None) -> list[Path]:
    """Kit folders (those with a drumkit.xml) in name order; ``kits`` selects by folder name
    or slug, and a name that is not there is an error rather than a smaller corpus."""
    if not kits_dir.is_dir():
        raise ValueError(f"drum kits folder not found: {kits_dir}")
    found = sorted(p for p in kits_dir.iterdir() if p.is_dir() and (p / "drumkit.xml").is_file())
    if not found:
        raise ValueError(f"no kit folder with a drumkit.xml in {kits_dir}")
    if kits is None:
        return found
    by_name = {**{p.name: p for p in found}, **{kit_slug(p.name): p for p in found}}
    unknown = sorted(set(kits) - set(by_name))
    if unknown:
        raise ValueError(f"kit(s) {unknown} not found in {kits_dir}; kits are {[p.name for p in found]}")
    return sorted({by_name[k] for k in kits})


def _collect_instrument(kit_dir: Path, instrument: Instrument, found: _Collected) -> None:
    """Add the layer files of one instrument as clips, or list why each is not used."""
    label, reason = classify_instrument(instrument.name)
    kit = kit_dir.name
    if not instrument.files:
        found.skip(kit, instrument.name, "", "instrument has no sample file")
        return
    for filename in instrument.files:
        if label is None:
            found.skip(kit, instrument.name, filename, reason)
            continue
        try:
            path = sample_path(kit_dir, filename)
        except ValueError as exc:
            found.skip(kit, instrument.name, filename, str(exc))
            continue
        if path.suffix.lower() not in AUDIO_SUFFIXES:
            found.skip(kit, instrument.name, filename, f"not an audio file ({sorted(AUDIO_SUFFIXES)})")
            continue
        if not path.is_file():
            found.skip(kit, instrument.name, filename, "sample file not found")
            continue
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        if digest in found.seen:
            kept = found.clips[found.seen[digest]]
            found.skip(kit, instrument.name, filename, f"same audio as {kept['kit']}/{kept['file']}")
            if kept["label"] != label:
                kept["conflict"] = f"same audio also under {kit}/{instrument.name} ({label})"
            continue
        found.seen[digest] = len(found.clips)
        found.clips.append(
            {"kit": kit, "group": kit_slug(kit), "instrument": instrument.name, "label": label}
            | {"path": str(path), "file": filename, "conflict": ""}
        )


def collect_clips(
    kits_dir: str | os.PathLike[str], kits: Sequence[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """Every usable layer file of the kits with its class and kit, plus the skipped list and
    each kit's licence text. Byte-identical files are kept once (the first in kit and
    instrument order), so no clip can sit in both the training and the test set."""
    kit_dirs = list_kits(Path(kits_dir), kits)
    slugs = [kit_slug(p.name) for p in kit_dirs]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"two kit folders share a group name: {sorted(slugs)}")
    found = _Collected([], [], {})
    licences: dict[str, str] = {}
    for kit_dir in kit_dirs:
        try:
            kit = parse_drumkit(kit_dir / "drumkit.xml")
        except DrumKitError as exc:
            found.skip(kit_dir.name, "", "drumkit.xml", str(exc))
            continue
        licences[kit_slug(kit_dir.name)] = kit.license
        for instrument in kit.instruments:
            _collect_instrument(kit_dir, instrument, found)
    # The same recording under two classes has no true label: neither copy is kept.
    for clip in found.clips:
        if clip["conflict"]:
            found.skip(clip["kit"], clip["instrument"], clip["file"], clip["conflict"])
    kept = [clip for clip in found.clips if not clip["conflict"]]
    clips = pd.DataFrame(kept, columns=["kit", "group", "instrument", "label", "path", "file"])
    return clips, pd.DataFrame(found.skipped, columns=SKIPPED_COLUMNS), licences


# --------------------------------------------------------------------------- writing


def load_clip(path: Path, max_seconds: float) -> tuple[np.ndarray, int]:
    """Decode a sample file to mono float32, cut to ``max_seconds`` with a short linear
    fade-out where cut (a hard cut of a ringing cymbal would add a click, a sound of its own).
    A ValueError for an unreadable or silent file."""
    try:
        with sf.SoundFile(str(path)) as audio:  # reads only what is kept, whatever the file's size
            rate = int(audio.samplerate)
            keep = max(1, int(round(max_seconds * rate)))
            samples = audio.read(frames=keep + 1, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise ValueError(f"unreadable audio: {exc}") from exc
    mono = samples.mean(axis=1)
    if mono.size == 0 or not np.isfinite(mono).all() or float(np.abs(mono).max()) == 0.0:
        raise ValueError("empty, silent or non-finite audio")
    if mono.size > keep:
        mono = mono[:keep].copy()
        fade = min(keep, max(1, int(round(FADE_SECONDS * rate))))
        mono[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return np.clip(mono, -1.0, 1.0), int(rate)


def _write_clip(samples: np.ndarray, rate: int, target: Path) -> None:
    """A 16-bit PCM WAV, written atomically."""
    with atomic_path(target) as tmp:
        sf.write(str(tmp), samples, rate, subtype="PCM_16", format="WAV")


def fingerprint(samples: np.ndarray, rate: int) -> np.ndarray:
    """Spectrum of a clip's first 0.5 s at 8 kHz with unit energy, zero-padded so that
    :func:`peak_correlation` is a linear (not circular) cross-correlation."""
    start = to_model_rate(samples, rate, FINGERPRINT_RATE)[:FINGERPRINT_SAMPLES].astype(np.float64)
    padded = np.zeros(FINGERPRINT_SAMPLES, dtype=np.float64)
    padded[: start.size] = start
    norm = float(np.linalg.norm(padded))
    return np.fft.rfft(padded / norm if norm > 0 else padded, 2 * FINGERPRINT_SAMPLES)


def peak_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute normalised cross-correlation of two fingerprints over all lags."""
    return float(np.abs(np.fft.irfft(a * np.conj(b))).max())


def _same_recording(print_: np.ndarray, group: str, kept: list[tuple[str, str, np.ndarray]]) -> str:
    """``"<kit>/<file> (correlation c)"`` of a kept clip of the same class that is the same
    recording (gain or encoding aside), else ""."""
    for other_group, source, other in kept:
        limit = SAME_RECORDING_IN_KIT if other_group == group else SAME_RECORDING_ACROSS_KITS
        score = peak_correlation(print_, other)
        if score >= limit:
            return f"{source} (correlation {score:.3f})"
    return ""


def _skip_row(clip: Any, reason: str) -> dict[str, str]:
    """A skipped.csv row for a collected clip."""
    return {"kit": clip.kit, "instrument": clip.instrument, "file": clip.file, "reason": reason}


def select_recordings(clips: pd.DataFrame, max_seconds: float) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """The clips that decode and are not a recording already selected (the same recording in
    two kits would put a test clip's twin in training), first in kit order kept; the rest
    as skip rows."""
    keep, skipped = [], []
    kept: dict[str, list[tuple[str, str, np.ndarray]]] = {}
    for index, clip in enumerate(clips.itertuples(index=False)):
        try:
            samples, rate = load_clip(Path(clip.path), max_seconds)
        except ValueError as exc:
            skipped.append(_skip_row(clip, str(exc)))
            continue
        print_ = fingerprint(samples, rate)
        twin = _same_recording(print_, clip.group, kept.setdefault(clip.label, []))
        if twin:
            skipped.append(_skip_row(clip, f"same recording as {twin}"))
            continue
        kept[clip.label].append((clip.group, f"{clip.kit}/{clip.file}", print_))
        keep.append(index)
    return clips.iloc[keep].reset_index(drop=True), skipped


def drop_rare_classes(clips: pd.DataFrame, min_kits: int) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Clips of classes found in at least ``min_kits`` kits; the others as skip rows. With a
    kit held out per repetition, a class of two kits can be left with one kit's clips (or
    one clip) for training: not a class the study can learn."""
    kits_per_class = clips.groupby("label")["group"].nunique()
    rare = clips["label"].map(kits_per_class) < min_kits
    reason = f"class in fewer than {min_kits} kits"
    skipped = [_skip_row(clip, reason) for clip in clips[rare].itertuples(index=False)]
    return clips[~rare].reset_index(drop=True), skipped


def _write_audio(clips: pd.DataFrame, audio_dir: Path, max_seconds: float) -> pd.DataFrame:
    """Write every clip as ``<kit>-<class>-<nnn>.wav``; returns the labels table with each
    clip's rate and duration."""
    rows = []
    counters: dict[tuple[str, str], int] = {}
    for clip in clips.itertuples(index=False):
        samples, rate = load_clip(Path(clip.path), max_seconds)
        number = counters.get((clip.group, clip.label), 0)
        counters[(clip.group, clip.label)] = number + 1
        fname = f"{clip.group}-{clip.label}-{number:03d}.wav"
        _write_clip(samples, rate, audio_dir / fname)
        source = f"{clip.kit}/{clip.file}"
        rows.append((fname, clip.label, clip.group, clip.instrument, source, rate, samples.size / rate))
    return pd.DataFrame(rows, columns=[*LABEL_COLUMNS, "sample_rate", "seconds"])


def build_drum_source(
    kits_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    max_seconds: float = 1.5,
    kits: Sequence[str] | None = None,
    min_kits: int = 3,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Build the labelled drum corpus under ``out_dir``; returns the corpus_info it writes.

    Audio first, then ``labels.csv`` and ``skipped.csv``, ``corpus_info.json`` last (its
    presence marks a finished build). Clips of an earlier build are an error unless
    ``overwrite``.
    """
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or not max_seconds > 0:
        raise ValueError(f"max_seconds must be a positive number, got {max_seconds!r}")
    if isinstance(min_kits, bool) or not isinstance(min_kits, int) or min_kits < 1:
        raise ValueError(f"min_kits must be a positive integer, got {min_kits!r}")
    out = Path(out_dir)
    clips, skipped, licences = collect_clips(kits_dir, kits)
    clips, duplicates = select_recordings(clips, float(max_seconds))
    clips, rare = drop_rare_classes(clips, min_kits)
    skipped = pd.concat(
        [skipped, pd.DataFrame(duplicates + rare, columns=SKIPPED_COLUMNS)], ignore_index=True
    )
    if clips.empty:
        raise ValueError(f"no usable clip in {kits_dir}; skip reasons: {sorted(set(skipped['reason']))[:5]}")
    prepare_audio_dir(out / "audio", overwrite)
    table = _write_audio(clips, out / "audio", float(max_seconds))
    write_csv(table[LABEL_COLUMNS], out / "labels.csv")
    write_csv(skipped, out / "skipped.csv")
    info = corpus_info(table, skipped, licences, source_settings(kits_dir, kits, max_seconds, min_kits))
    write_json(info, out / "corpus_info.json")
    return info


def source_settings(
    kits_dir: str | os.PathLike[str], kits: Sequence[str] | None, max_seconds: float, min_kits: int
) -> dict[str, Any]:
    """What decides a corpus's content, as corpus_info.json records it: a caller that finds
    the same dict there may reuse the corpus. ``rules`` changes with the builder's rules
    (vocabulary, duplicates), so a corpus built by older rules is not reused."""
    return {
        "kits_dir": str(kits_dir),
        "kits": None if kits is None else sorted(kits),
        "max_seconds": float(max_seconds),
        "min_kits": int(min_kits),
        "rules": CORPUS_RULES,
    }


def corpus_info(
    table: pd.DataFrame,
    skipped: pd.DataFrame,
    licences: dict[str, str],
    source: dict[str, Any],
) -> dict[str, Any]:
    """Settings and counts: enough to judge at a glance which kits can be held out."""
    per_kit_class = pd.crosstab(table["group"], table["label"])
    return {
        "source": source,
        "classes": [c for c in DRUM_CLASSES if c in set(table["label"])],
        "n_clips": int(len(table)),
        "n_skipped": int(len(skipped)),
        "clips_per_class": {c: int(n) for c, n in table["label"].value_counts().sort_index().items()},
        "clips_per_kit": {g: int(n) for g, n in table["group"].value_counts().sort_index().items()},
        "classes_per_kit": {g: int((row > 0).sum()) for g, row in per_kit_class.iterrows()},
        "kit_class_counts": {
            g: {c: int(n) for c, n in row.items() if n} for g, row in per_kit_class.iterrows()
        },
        "seconds": {
            "total": round(float(table["seconds"].sum()), 1),
            "mean": round(float(table["seconds"].mean()), 3),
            "min": round(float(table["seconds"].min()), 3),
            "max": round(float(table["seconds"].max()), 3),
        },
        "sample_rates": {str(r): int(n) for r, n in table["sample_rate"].value_counts().sort_index().items()},
        "licences": {g: licences.get(g, "") for g in sorted(set(table["group"]))},
    }


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    """Argument parser; defaults mirror build_drum_source."""
    p = argparse.ArgumentParser(
        prog="python -m workflow_lib.drum_corpus",
        description="Build a labelled drum-sample corpus (one clip per layer file, kit = group) "
        "from Hydrogen drum kits; then build the noisy dataset with workflow_lib.noisy_dataset "
        "--labels-csv <out>/labels.csv.",
    )
    p.add_argument("--kits-dir", default="/usr/share/hydrogen/data/drumkits", help="folder of kit folders")
    p.add_argument("--out", required=True, help="output folder (audio/, labels.csv, skipped.csv ...)")
    p.add_argument("--max-seconds", type=float, default=1.5, help="clips are cut to this length")
    p.add_argument("--kits", default=None, help="comma-separated kit folder names or slugs (default: all)")
    p.add_argument("--min-kits", type=int, default=3, help="classes found in fewer kits are left out")
    p.add_argument("--overwrite", action="store_true", help="replace clips from an earlier build")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints corpus_info as JSON. Returns 0, or 1 on a rejected input."""
    args = _parser().parse_args(argv)
    kits = [k.strip() for k in args.kits.split(",") if k.strip()] if args.kits else None
    return run_builder_cli(
        lambda: build_drum_source(
            args.kits_dir, args.out, args.max_seconds, kits, args.min_kits, overwrite=args.overwrite
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
