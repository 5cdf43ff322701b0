"""Tiny dummy trees laid out like each real release, written by the tests (a few KB each).

Each writer returns what the builder must produce: ``{id: (split, released label, speaker)}`` for the
usable files and ``{reason: count}`` for the files it must skip. Good files are short tones; some are
stereo or 44.1/48 kHz (to be fixed); bad ones are corrupt, empty, NaN-filled, missing or mislabelled.
"""

from __future__ import annotations

import csv
from pathlib import Path

import av
import numpy as np
import soundfile

SECONDS = 0.25


def tone(rate: int = 16000, channels: int = 1, freq: float = 440.0, seconds: float = SECONDS) -> np.ndarray:
    """[N, channels] float32 sine (each channel a different amplitude, so a downmix is their mean)."""
    t = np.arange(int(rate * seconds)) / rate
    return np.stack([(0.3 + 0.1 * c) * np.sin(2 * np.pi * freq * t) for c in range(channels)], 1).astype(np.float32)


def wav(path: Path, rate: int = 16000, channels: int = 1, kind: str = "good") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "good":
        soundfile.write(path, tone(rate, channels), rate, subtype="PCM_16")
    elif kind == "nan":
        soundfile.write(path, np.full((800, 1), np.nan, np.float32), rate, subtype="FLOAT")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "corrupt":
        path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    elif kind == "silent":
        soundfile.write(path, np.zeros((800, 1), np.float32), rate, subtype="PCM_16")
    else:
        raise ValueError(kind)


def mp4(path: Path, rate: int = 44100, channels: int = 2) -> None:
    """An AAC audio track in an mp4 container (as MELD's clips carry), SECONDS long: stereo by default,
    6 channels as 5.1 (as some of MELD's 48 kHz clips carry)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    layout = {1: "mono", 2: "stereo", 6: "5.1"}[channels]
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone(rate, channels).T), format="fltp", layout=layout)
        frame.rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


def crema_d(root: Path):
    d = root / "AudioWAV"
    good = {"1001_DFA_ANG_XX": {}, "1001_IEO_HAP_HI": {"rate": 44100, "channels": 2},
            "1002_DFA_SAD_XX": {}, "1002_TIE_NEU_XX": {"rate": 48000},
            "1003_DFA_FEA_XX": {}, "1003_DFA_DIS_XX": {"channels": 2}}
    for name, kw in good.items():
        wav(d / f"{name}.wav", **kw)
    wav(d / "1002_DFA_HAP_XX.wav", kind="nan")
    wav(d / "1003_MTI_SAD_XX.wav", kind="empty")
    wav(d / "1001_ITS_ANG_LO.wav", kind="corrupt")
    wav(d / "1003_ITS_BOR_XX.wav")
    wav(d / "notes.wav")
    expected = {n: (None, n.split("_")[2], n[:4]) for n in good}
    return expected, {"nan": 1, "empty": 1, "unreadable": 1, "unknown_label": 1, "bad_name": 1}


def ravdess(root: Path):
    expected = {}
    for actor, codes in (("01", ("05", "03")), ("02", ("04", "01")), ("03", ("08", "06"))):
        for i, emo in enumerate(codes):
            name = f"03-01-{emo}-01-01-0{i + 1}-{actor}"
            wav(root / f"Actor_{actor}" / f"{name}.wav", rate=48000)
            expected[name] = (None, emo, actor)
    wav(root / "Actor_01" / "03-02-03-01-01-01-01.wav", rate=48000)  # song: not in the "speech" config
    wav(root / "Actor_02" / "03-01-03-01-01-01-03.wav", rate=48000)  # actor 03's file in Actor_02
    wav(root / "Actor_03" / "03-01-02-01-01-01-03.wav", kind="silent")
    return expected, {"not_in_config": 1, "inconsistent_name": 1, "silent": 1}


def esd(root: Path):
    expected = {}
    for speaker, pairs in (("0001", ("Angry", "Happy")), ("0011", ("Neutral", "Sad")), ("0012", ("Surprise", "Sad"))):
        (root / speaker).mkdir(parents=True)
        (root / speaker / f"{speaker}.txt").write_text(f"{speaker}_000001\tThe train arrives.\tNeutral\n")
        for i, emotion in enumerate(pairs):
            # one copy keeps the release's train/ sub-folder
            rel = f"{speaker}/{emotion}/{'train/' if i else ''}{speaker}_{i:06d}.wav"
            wav(root / rel, rate=16000)
            expected[rel] = (None, emotion, speaker)
    wav(root / "0011" / "Bored" / "0011_000009.wav")
    wav(root / "0012" / "Angry" / "0012_000009.wav", kind="corrupt")
    return expected, {"unknown_label": 1, "unreadable": 1}


def iemocap(root: Path):
    def session(n, dialog, turns):
        s = root / f"Session{n}"
        lines = []
        for turn, label, kind in turns:
            if label is not None:
                lines.append(f"[1.0000 - 2.0000]\t{dialog}_{turn}\t{label}\t[2.5000, 2.5000, 2.5000]")
            if kind is not None:
                wav(s / "sentences" / "wav" / dialog / f"{dialog}_{turn}.wav", **kind)
        txt = s / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
        txt.parent.mkdir(parents=True)
        txt.write_text("% header line of the real files\n\n" + "\n\n".join(lines) + "\n")
        (s / "dialog" / "EmoEvaluation" / "Categorical").mkdir()

    session(1, "Ses01F_impro01", [("F000", "neu", {}), ("M000", "exc", {"rate": 48000}), ("F001", "xxx", {}),
                                  ("M001", None, {}), ("F002", "sad", None)])
    session(2, "Ses02M_script01_1", [("F000", "ang", {"channels": 2}), ("M000", "hap", {"kind": "nan"}),
                                     ("M001", "fru", {})])
    for n in (3, 4, 5):  # the builder requires all five sessions: one utterance each
        session(n, f"Ses0{n}F_impro01", [("F000", "neu", {})])
    expected = {**{f"Ses0{n}F_impro01_F000": (f"session{n}", "neu", f"Ses0{n}F") for n in (3, 4, 5)},
                "Ses01F_impro01_F000": ("session1", "neu", "Ses01F"),
                "Ses01F_impro01_M000": ("session1", "exc", "Ses01M"),
                "Ses02M_script01_1_F000": ("session2", "ang", "Ses02F"),
                "Ses02M_script01_1_M001": ("session2", "fru", "Ses02M")}
    return expected, {"excluded_label": 1, "no_label": 1, "missing_file": 1, "nan": 1}


def meld(root: Path):
    header = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
              "Episode", "StartTime", "EndTime"]
    tables = {"train": [("Joey", "joy", 0, 0), ("Rachel", "neutral", 0, 1), ("Ross", "anger", 1, 0)],
              "dev": [("Monica", "anger", 0, 0), ("Chandler", "sarcasm", 0, 1)],
              "test": [("Phoebe", "sadness", 0, 0), ("Joey", "fear", 0, 1)]}
    folders = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
    mp4(root / "train_splits" / "dia0_utt0.mp4")
    for prefix, rows in tables.items():
        with open(root / f"{prefix}_sent_emo.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            for i, (speaker, emotion, d, u) in enumerate(rows):
                w.writerow([i + 1, "Hey\u2019 there", speaker, emotion, "neutral", d, u, 1, 1, "0:00:01,0",
                            "0:00:02,0"])
    videos = {"train": [(0, 0), (0, 1)], "dev": [(0, 0), (0, 1)], "test": [(0, 0)]}  # train dia1_utt0: missing
    for prefix, pairs in videos.items():
        for d, u in pairs:
            target = root / folders[prefix] / f"dia{d}_utt{u}.mp4"
            if not target.exists():
                target.parent.mkdir(exist_ok=True)
                target.write_bytes((root / "train_splits" / "dia0_utt0.mp4").read_bytes())
    (root / folders["test"] / "dia0_utt1.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 broken")
    split = {"train": "train", "dev": "validation", "test": "test"}
    expected = {f"{p}/dia{d}_utt{u}": (split[p], e, s) for p, rows in tables.items() for s, e, d, u in rows
                if e != "sarcasm" and (p, d, u) not in (("train", 1, 0), ("test", 0, 1))}
    return expected, {"missing_file": 1, "unknown_label": 1, "unreadable": 1}


def msp_podcast(root: Path):
    rows = [("MSP-PODCAST_0001_0001.wav", "N", "1", "Train", {}), ("MSP-PODCAST_0001_0002.wav", "H", "1", "Train",
            {"channels": 2}), ("MSP-PODCAST_0002_0001.wav", "X", "2", "Train", {}),
            ("MSP-PODCAST_0003_0001.wav", "A", "3", "Development", {"rate": 44100}),
            ("MSP-PODCAST_0004_0001.wav", "S", "Unknown", "Test1", {}),
            ("MSP-PODCAST_0005_0001.wav", "C", "5", "Test2", {}),
            ("MSP-PODCAST_0005_0002.wav", "D", "5", "Test2", None)]
    (root / "Labels").mkdir(parents=True)
    with open(root / "Labels" / "labels_consensus.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"])
        for name, emo, spk, split, kind in rows:
            w.writerow([name, emo, 4.0, 4.0, 4.0, spk, "Female", split])
            if kind is not None:
                wav(root / "Audios" / name, **kind)
    split = {"Train": "train", "Development": "validation", "Test1": "test1", "Test2": "test2"}
    expected = {n: (split[s], e, "unknown" if spk == "Unknown" else spk) for n, e, spk, s, k in rows
                if e != "X" and k is not None}
    return expected, {"excluded_label": 1, "missing_file": 1}
