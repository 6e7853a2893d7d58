"""The AES-256-GCM primitive layer against the NIST CAVS vectors shipped in ``cryptography-vectors``.

(The installed ``cryptography-vectors`` has no Wycheproof files; it ships NIST's ``gcmEncryptExtIV256``
and ``gcmDecrypt256``, whose decrypt file includes forged-tag cases marked ``FAIL``.) Only the
parameters maaskit uses are run: 256-bit keys, 96-bit nonces, 128-bit tags.
"""

from __future__ import annotations

from pathlib import Path

import cryptography_vectors
import pytest

from maaskit.errors import InternalError
from maaskit.services.secrets import aes_gcm_decrypt, aes_gcm_encrypt

GCM_DIR = Path(cryptography_vectors.__file__).parent / "ciphers" / "AES" / "GCM"


def load(name: str) -> list[dict[str, str]]:
    """Parse a CAVS ``.rsp`` file; keep the 96-bit-IV, 128-bit-tag vectors."""
    vectors: list[dict[str, str]] = []
    section: dict[str, str] = {}
    current: dict[str, str] | None = None
    for raw in (GCM_DIR / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            key, _, value = line.strip("[]").partition("=")
            section[key.strip()] = value.strip()
            continue
        if line == "FAIL":
            assert current is not None
            current["FAIL"] = "1"
            continue
        key, _, value = (part.strip() for part in line.partition("="))
        if key == "Count":
            current = {"section": f"{section.get('IVlen')}/{section.get('Taglen')}"}
            vectors.append(current)
            current["ivlen"], current["taglen"] = section.get("IVlen", ""), section.get("Taglen", "")
        assert current is not None
        current[key] = value
    return [v for v in vectors if v["ivlen"] == "96" and v["taglen"] == "128"]


ENCRYPT = load("gcmEncryptExtIV256.rsp")
DECRYPT = load("gcmDecrypt256.rsp")


def test_vector_files_are_there() -> None:
    assert len(ENCRYPT) >= 100
    assert len(DECRYPT) >= 100
    assert any("FAIL" in v for v in DECRYPT)
    assert any("FAIL" not in v for v in DECRYPT)


@pytest.mark.parametrize("vector", ENCRYPT, ids=lambda v: f"enc-{v.get('Count')}")
def test_encrypt_vectors(vector: dict[str, str]) -> None:
    key, iv = bytes.fromhex(vector["Key"]), bytes.fromhex(vector["IV"])
    pt, aad = bytes.fromhex(vector["PT"]), bytes.fromhex(vector["AAD"])
    expected = bytes.fromhex(vector["CT"]) + bytes.fromhex(vector["Tag"])
    assert aes_gcm_encrypt(key, iv, pt, aad) == expected
    assert aes_gcm_decrypt(key, iv, expected, aad) == pt


@pytest.mark.parametrize(
    "vector", DECRYPT, ids=lambda v: f"dec-{v.get('Count')}-{'fail' if 'FAIL' in v else 'ok'}"
)
def test_decrypt_vectors(vector: dict[str, str]) -> None:
    key, iv = bytes.fromhex(vector["Key"]), bytes.fromhex(vector["IV"])
    aad = bytes.fromhex(vector["AAD"])
    sealed = bytes.fromhex(vector["CT"]) + bytes.fromhex(vector["Tag"])
    if "FAIL" in vector:
        with pytest.raises(InternalError) as info:
            aes_gcm_decrypt(key, iv, sealed, aad)
        assert info.value.code == "secret.integrity"
    else:
        assert aes_gcm_decrypt(key, iv, sealed, aad) == bytes.fromhex(vector["PT"])
