"""IEMOCAP (USC SAIL), read from the user's copy of ``IEMOCAP_full_release``.

Assumed layout (the release as distributed; ``manual_dir`` may be the release folder or its parent)::

    Session{1..5}/sentences/wav/<dialog>/<utterance>.wav      e.g. Ses01F_impro01/Ses01F_impro01_F000.wav
    Session{1..5}/dialog/EmoEvaluation/<dialog>.txt           one line per utterance:
        [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]

Only the top-level EmoEvaluation/*.txt (the consensus labels) are read, not its Categorical/ or Attribute/
sub-folders. Labels (``emotions.MAPPINGS["iemocap"]``): neu, hap+exc -> happy, sad, ang, sur, fea, dis,
fru; ``xxx`` (no majority) and ``oth`` are skipped with their reason. Speaker: session + the gender letter
of the utterance's last name field (``Ses01F_impro01_M003`` -> ``Ses01M``): each session has one actress
and one actor. Splits: ``session1`` .. ``session5`` (leave-one-session-out is the usual protocol).
"""

from __future__ import annotations

import re

from etils import epath

from esn_jax.data.base import EmotionBuilder, Item, Skip, find_root, relative

_LINE = re.compile(r"^\[[\d.]+ - [\d.]+\]\t(\S+)\t(\S+)\t\[")


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
        splits, problems = {}, []
        for n in range(1, 6):
            session = root / f"Session{n}"
            if not session.is_dir():
                continue
            split = f"session{n}"
            labels = {}
            for txt in sorted((session / "dialog" / "EmoEvaluation").glob("*.txt")):
                for line in txt.read_bytes().decode("utf-8", errors="replace").splitlines():
                    if m := _LINE.match(line):
                        labels[m.group(1)] = m.group(2)
            wavs = {p.stem: p for p in (session / "sentences" / "wav").glob("*/*.wav") if not p.name.startswith(".")}
            items = []
            for name in sorted(set(labels) | set(wavs)):
                if name not in labels:
                    problems.append(Skip(split, relative(wavs[name], root), "no_label",
                                         "no line for this utterance in dialog/EmoEvaluation/*.txt"))
                    continue
                speaker = name[:5] + name.rsplit("_", 1)[-1][0]
                items.append(Item(name, wavs.get(name), labels[name], speaker))
            splits[split] = items
        return splits, problems
