"""API keys: issued once, stored as hashes, verified, revoked and expired, on both stores."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.credentials import hash_secret
from policies.auth.keys import ApiKey, KeyStore, Reason, key_matches, open_store, parse_key
from tests.support.key_stores import Stores


@pytest.fixture
async def store(stores: Stores) -> KeyStore:
    return await stores.started()


async def test_created_key_verifies(store: KeyStore) -> None:
    plaintext, key = await store.create("alice", "premium", None)
    assert plaintext.startswith(f"sk-gw_{key.id}_")
    assert (key.owner, key.tier, key.revoked, key.expires_at) == ("alice", "premium", False, None)
    verdict = await store.verify(plaintext)
    assert verdict.ok
    assert verdict.key == key
    assert verdict.reason is None
    assert await store.get(key.id) == key


async def test_plaintext_key_is_never_stored(store: KeyStore, stores: Stores) -> None:
    plaintext, key = await store.create("alice", "free", None)
    secret = plaintext.removeprefix(f"sk-gw_{key.id}_")
    everything = repr(await stores.query("SELECT * FROM api_keys"))
    assert key.id in everything
    assert secret not in everything
    assert plaintext not in everything
    assert hash_secret(plaintext) in everything


async def test_wrong_secret_with_right_id_is_a_mismatch(store: KeyStore) -> None:
    plaintext, key = await store.create("alice", "free", None)
    forged = plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")
    verdict = await store.verify(forged)
    assert (verdict.key, verdict.reason, verdict.key_id) == (None, Reason.MISMATCH, key.id)


async def test_malformed_keys_are_refused(store: KeyStore) -> None:
    good, key = await store.create("alice", "free", None)
    secret = good.removeprefix(f"sk-gw_{key.id}_")
    malformed = [
        "",
        "sk-gw_",
        f"Bearer {good}",
        f" {good}",
        f"{good}\n",
        f"{good}=",
        good + "x",
        good[:-1],
        good.replace("sk-gw_", "sk-xx_"),
        f"sk-gw_{key.id.upper()}_{secret}" if key.id != key.id.upper() else "sk-gw_ABCDEF",
        f"sk-gw_{key.id[:-1]}_{secret}x",
        f"sk-gw_{key.id}-{secret}",
        f"sk-gw_{key.id}_{secret[:-1]}é",
    ]
    for presented in malformed:
        assert parse_key(presented) is None, presented
        verdict = await store.verify(presented)
        assert (verdict.key, verdict.reason, verdict.key_id) == (None, Reason.MALFORMED, None)


async def test_unknown_id_is_refused(store: KeyStore) -> None:
    plaintext, key = await store.create("alice", "free", None)
    other_id = "0" * 12 if key.id != "0" * 12 else "1" * 12
    verdict = await store.verify(plaintext.replace(key.id, other_id))
    assert (verdict.key, verdict.reason, verdict.key_id) == (None, Reason.UNKNOWN, other_id)


async def test_revoked_key_is_refused_and_revoking_twice_is_fine(store: KeyStore) -> None:
    plaintext, key = await store.create("alice", "free", None)
    assert await store.revoke(key.id)
    assert (await store.verify(plaintext)).reason == Reason.REVOKED
    assert await store.revoke(key.id)
    assert (await store.verify(plaintext)).reason == Reason.REVOKED
    revoked = await store.get(key.id)
    assert revoked is not None
    assert revoked.revoked


async def test_revoking_an_unknown_key_says_so(store: KeyStore) -> None:
    assert not await store.revoke("0123456789ab")


async def test_expired_key_is_refused(store: KeyStore) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    plaintext, key = await store.create("alice", "free", past)
    assert key.expires_at == past
    assert (await store.verify(plaintext)).reason == Reason.EXPIRED


async def test_key_before_its_expiry_verifies(store: KeyStore) -> None:
    future = datetime.now(UTC) + timedelta(hours=1)
    plaintext, key = await store.create("alice", "free", future)
    verdict = await store.verify(plaintext)
    assert verdict.key == key
    assert verdict.key.expires_at == future


async def test_expiry_in_another_timezone_is_kept_as_utc(store: KeyStore) -> None:
    berlin = datetime(2099, 1, 1, 13, tzinfo=timezone(timedelta(hours=1)))
    _, key = await store.create("alice", "free", berlin)
    stored = await store.get(key.id)
    assert stored is not None
    assert stored.expires_at == datetime(2099, 1, 1, 12, tzinfo=UTC)
    assert stored.expires_at.tzinfo == UTC


async def test_list_returns_keys_oldest_first_with_their_fields(store: KeyStore) -> None:
    assert await store.list() == []
    made = [
        (await store.create(owner, tier, None))[1]
        for owner, tier in [("a", "free"), ("b", "premium"), ("c", "free")]
    ]
    await store.revoke(made[1].id)
    listed = await store.list()
    assert [key.id for key in listed] == [key.id for key in made]
    assert listed[0] == made[0]
    assert listed[1].revoked
    assert [(key.owner, key.tier) for key in listed] == [
        ("a", "free"),
        ("b", "premium"),
        ("c", "free"),
    ]
    assert all(key.created_at.tzinfo == UTC for key in listed)


async def test_revocation_on_one_replica_is_seen_by_another(stores: Stores) -> None:
    one, two = await stores.started(), await stores.started()
    plaintext, key = await one.create("alice", "free", None)
    assert (await two.verify(plaintext)).ok
    assert await two.revoke(key.id)
    assert (await one.verify(plaintext)).reason == Reason.REVOKED


def test_static_key_hash_is_prefixed_sha256() -> None:
    digest = hashlib.sha256(b"sk-static-key").hexdigest()
    assert hash_secret("sk-static-key") == f"sha256:{digest}"
    assert key_matches("sk-static-key", f"sha256:{digest}")
    assert not key_matches("sk-static-kez", f"sha256:{digest}")
    assert not key_matches("\udcff odd header", f"sha256:{digest}")


def test_usable_until_the_expiry_instant() -> None:
    expiry = datetime(2030, 1, 1, tzinfo=UTC)
    key = ApiKey("0123456789ab", "a", "free", expiry, expiry, False, "sha256:x")
    assert key.usable(expiry - timedelta(microseconds=1))
    assert not key.usable(expiry)
    assert not ApiKey("0123456789ab", "a", "free", expiry, None, True, "sha256:x").usable(expiry)


async def test_naive_expiry_is_rejected(tmp_path: Path) -> None:
    store = open_store(None, tmp_path / "gateway.db")
    await store.start()
    try:
        with pytest.raises(ValueError, match="timezone-aware"):
            await store.create("alice", "free", datetime(2030, 1, 1))
    finally:
        await store.close()


def test_only_postgres_urls_are_accepted(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="postgresql://"):
        open_store("mysql://db/keys", tmp_path / "gateway.db")


async def test_store_used_before_start_says_so(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"before start\(\)"):
        await open_store(None, tmp_path / "gateway.db").list()
