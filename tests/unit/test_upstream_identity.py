"""The device key: made once, private, never replaced; pinned keys in their text forms; the CLI."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli import main
from agent.sync import identity
from agent.sync.errors import UpstreamError
from agent.sync.identity import PinnedKey


@pytest.fixture
def umask() -> Iterator[object]:
    """Set a umask for the test and put the old one back."""
    old = os.umask(0o077)
    try:
        yield lambda mask: os.umask(mask)
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "mode"), [(0o077, 0o600), (0o007, 0o640)])
def test_the_key_is_made_once_private_and_loaded_after(tmp_path: Path, umask, mask: int, mode: int) -> None:  # type: ignore[no-untyped-def]
    umask(mask)
    first, made = identity.load_or_create(tmp_path)
    assert made and _mode(tmp_path / "device.key") == mode
    assert os.listdir(tmp_path) == ["device.key"]  # no temporary file left behind
    pem = (tmp_path / "device.key").read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert isinstance(serialization.load_pem_private_key(pem, password=None), Ed25519PrivateKey)
    again, made_again = identity.load_or_create(tmp_path)
    assert not made_again and again.public.raw == first.public.raw
    assert (tmp_path / "device.key").read_bytes() == pem


def test_an_existing_key_is_never_replaced(tmp_path: Path) -> None:
    """Two processes that both found no key: the second's link fails and it keeps the first's."""
    first, _ = identity.create(tmp_path)
    second, made = identity.create(tmp_path)
    assert not made and second.public.raw == first.public.raw
    assert os.listdir(tmp_path) == ["device.key"]


def test_signatures_come_from_the_key_in_the_file(tmp_path: Path) -> None:
    device, _ = identity.load_or_create(tmp_path)
    loaded = identity.load(tmp_path)
    assert loaded is not None
    loaded.public.verify(b"message", device.sign(b"message"), "test")
    with pytest.raises(UpstreamError) as info:
        loaded.public.verify(b"massage", device.sign(b"message"), "test")
    assert info.value.code == "UPSTREAM_SIGNATURE_INVALID"


def test_a_key_others_can_read_is_closed_to_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    identity.load_or_create(tmp_path)
    os.chmod(tmp_path / "device.key", 0o644)
    assert identity.load(tmp_path) is not None
    assert _mode(tmp_path / "device.key") == 0o640
    assert "others must not read the device key" in caplog.text


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"not a key", "UPSTREAM_DEVICE_KEY_INVALID"),
        (ec.generate_private_key(ec.SECP256R1()).private_bytes(serialization.Encoding.PEM,
                                                                 serialization.PrivateFormat.PKCS8,
                                                                 serialization.NoEncryption()),
         "UPSTREAM_DEVICE_KEY_INVALID"),
    ],
)  # fmt: skip
def test_a_damaged_key_is_refused_not_replaced(tmp_path: Path, content: bytes, code: str) -> None:
    (tmp_path / "device.key").write_bytes(content)
    with pytest.raises(UpstreamError) as info:
        identity.load_or_create(tmp_path)
    assert info.value.code == code and "backup" in info.value.hint
    assert (tmp_path / "device.key").read_bytes() == content


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_key_says_which_account(tmp_path: Path) -> None:
    identity.load_or_create(tmp_path)
    os.chmod(tmp_path / "device.key", 0)
    with pytest.raises(UpstreamError) as info:
        identity.load(tmp_path)
    assert info.value.code == "UPSTREAM_DEVICE_KEY_UNREADABLE"


def test_a_missing_data_directory_is_a_coded_error(tmp_path: Path) -> None:
    with pytest.raises(UpstreamError) as info:
        identity.load_or_create(tmp_path / "absent")
    assert info.value.code == "UPSTREAM_DEVICE_KEY_UNWRITABLE"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not base64!",
        "AAAA",  # 3 bytes
        "A" * 44,  # 33 bytes
        ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    ],
)  # fmt: skip
def test_a_pinned_key_must_be_an_ed25519_public_key(text: str) -> None:
    with pytest.raises(UpstreamError) as info:
        PinnedKey.from_text(text)
    assert info.value.code == "UPSTREAM_PUBLIC_KEY_INVALID" and "Ed25519" in info.value.hint


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nid = "oht-042"\ndata_dir = "{tmp_path}"\n[bus]\nport = "/dev/null"\n')
    return path


def test_upstream_pubkey_prints_the_key_to_pin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    assert main(["upstream", "pubkey", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    device = identity.load(tmp_path)
    assert device is not None and PinnedKey.from_text(out).raw == device.public.raw
    assert out.startswith("-----BEGIN PUBLIC KEY-----") and "oht-042 (made now)" in err
    assert device.public.fingerprint() in err
    assert main(["upstream", "pubkey", "--format", "base64", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == device.public.base64() and "(existing)" in err


def test_upstream_pubkey_reports_a_damaged_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "device.key").write_bytes(b"garbage")
    assert main(["upstream", "pubkey", "--config", str(_config(tmp_path))]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "UPSTREAM_DEVICE_KEY_INVALID" in err and "hint:" in err
