"""IEMOCAP (USC SAIL), read from the user's copy of ``IEMOCAP_full_release``.

Layout accepted (the release as distributed; ``manual_dir`` may be the release folder or its parent)::

    Session{1..5}/sentences/wav/<dialog>/<utterance>.wav      e.g. Ses01F_impro01/Ses01F_impro01_F000.wav
    Session{1..5}/dialog/EmoEvaluation/<dialog>.txt           one line per utterance:
        [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]

All five sessions are required: a missing Session folder, or one without wavs or EmoEvaluation txt files,
is an error (ManualDirError naming what was found and what is missing), never a silently smaller corpus.
Only the top-level EmoEvaluation/*.txt (the consensus labels) are read, not its Categorical/, Attribute/
or Self-evaluation/ sub-folders (the individual annotators). Hidden files are ignored everywhere: macOS
copies carry a ``._*`` AppleDouble file (bytes 00 05 16 07, not audio, not text) beside every wav and txt,
e.g. ``EmoEvaluation/._Ses01F_impro01.txt``; they are neither parsed nor counted.

Labels (``emotions.MAPPINGS["iemocap"]``): neu, hap+exc -> happy, sad, ang, sur, fea, dis, fru; ``xxx``
(no majority) and ``oth`` are skipped as ``excluded_label``. Speaker: session + the gender letter of the
utterance's last name field, not of the dialog's (``Ses01F_impro01_M003`` -> ``Ses01M``: both actors
speak in every dialog; each session has one actress and one actor). Skipped
as well: a wav with no label line (``no_label``), a labelled utterance without its wav (``missing_file``).
Splits: ``session1`` .. ``session5`` (leave-one-session-out is the usual protocol).
"""

from __future__ import annotations

import re

from etils import epath

from esn_jax.data.base import EmotionBuilder, Item, ManualDirError, Skip, find_root, relative

_LINE = re.compile(r"^\[[\d.]+ - [\d.]+\]\t(\S+)\t(\S+)\t\[")
SESSIONS = tuple(f"Session{n}" for n in range(1, 6))


def _visible(paths):
    return sorted(p for p in paths if not p.name.startswith("."))


class Iemocap(EmotionBuilder):
    """IEMOCAP: 5 sessions of dyadic acted speech; labels from the EmoEvaluation consensus files."""

    CORPUS = "iemocap"
    HOMEPAGE = "https://sail.usc.edu/iemocap/"
    CITATION = "Busso et al., IEMOCAP: Interactive emotional dyadic motion capture database, LRE 2008."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Request IEMOCAP from https://sail.usc.edu/iemocap/, unpack IEMOCAP_full_release.tar.gz and pass the
    IEMOCAP_full_release folder (holding Session1..Session5) as manual_dir."""

    def _root(self, manual_dir: epath.Path) -> epath.Path:
        return find_root(manual_dir, "Session[1-5]", ["IEMOCAP_full_release"],
                         "Session{1..5}/sentences/wav/<dialog>/*.wav and Session{1..5}/dialog/EmoEvaluation/*.txt")

    def _index(self, root):
        found = [s for s in SESSIONS if (root / s).is_dir()]
        if missing := [s for s in SESSIONS if s not in found]:
            raise ManualDirError(f"IEMOCAP needs all five sessions in {root}: found {found or 'none'}, missing "
                                 f"{missing}")
        splits, problems = {}, []
        for n, name in enumerate(SESSIONS, 1):
            session, split = root / name, f"session{n}"
            txts = _visible((session / "dialog" / "EmoEvaluation").glob("*.txt"))
            wavs = {p.stem: p for p in _visible((session / "sentences" / "wav").glob("*/*.wav"))}
            if not txts or not wavs:
                raise ManualDirError(f"{session} is incomplete: expected {name}/sentences/wav/<dialog>/*.wav "
                                     f"(found {len(wavs)}) and {name}/dialog/EmoEvaluation/*.txt (found {len(txts)})")
            labels = {}
            for txt in txts:
                for line in txt.read_bytes().decode("utf-8", errors="replace").splitlines():
                    if m := _LINE.match(line):
                        labels[m.group(1)] = m.group(2)
            items = []
            for utterance in sorted(set(labels) | set(wavs)):
                if utterance not in labels:
                    problems.append(Skip(split, relative(wavs[utterance], root), "no_label",
                                         "no line for this utterance in dialog/EmoEvaluation/*.txt"))
                    continue
                speaker = utterance[:5] + utterance.rsplit("_", 1)[-1][0]
                items.append(Item(utterance, wavs.get(utterance), labels[utterance], speaker))
            splits[split] = items
        return splits, problems
