"""core.sealing: AES-256-GCM under a key derived from the server's key, bound to associated data."""

from __future__ import annotations

import pytest

from core.sealing import KeyChanged, Sealer, SealError, ServerKey

KEY = b"server-key-0123456789abcdef"
WHERE = b'["CreateServiceAccount:usr_1","req-1","svc_1"]'


def test_a_sealed_value_opens_only_with_its_key_purpose_and_associated_data() -> None:
    sealer = Sealer(KEY, "replay")
    sealed = sealer.seal(b"the secret", WHERE)
    assert b"the secret".hex() not in sealed and "the secret" not in sealed
    assert Sealer(KEY, "replay").open(sealed, WHERE) == b"the secret"
    with pytest.raises(SealError):
        sealer.open(sealed, WHERE.replace(b"req-1", b"req-2"))
    with pytest.raises(KeyChanged):
        Sealer(KEY, "other-purpose").open(sealed, WHERE)
    with pytest.raises(KeyChanged):
        Sealer(b"another-server-key-0123456789", "replay").open(sealed, WHERE)


def test_each_seal_uses_a_fresh_nonce() -> None:
    sealer = Sealer(KEY, "replay")
    first, second = sealer.seal(b"x", WHERE), sealer.seal(b"x", WHERE)
    assert first != second
    assert sealer.open(first, WHERE) == sealer.open(second, WHERE) == b"x"


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda s: s[:-6] + ("A" if s[-6] != "A" else "B") + s[-5:], id="flipped"),
        pytest.param(lambda s: s[:-8], id="truncated"),
        pytest.param(lambda s: s.replace("v1.", "v9.", 1), id="version"),
        pytest.param(lambda s: s.rpartition(".")[0] + ".***", id="not-base64"),
        pytest.param(lambda s: "", id="empty"),
    ],
)
def test_a_damaged_value_fails_as_a_seal_error(damage: object) -> None:
    sealer = Sealer(KEY, "replay")
    sealed = sealer.seal(b"the secret", WHERE)
    with pytest.raises(SealError) as caught:
        sealer.open(damage(sealed), WHERE)  # type: ignore[operator]
    assert not isinstance(caught.value, KeyChanged)


def test_the_key_is_never_printed() -> None:
    key = ServerKey(KEY)
    assert KEY.decode() not in repr(key) + repr(key.sealer("replay"))
    with pytest.raises(ValueError, match="16 bytes"):
        Sealer(b"short", "replay")
