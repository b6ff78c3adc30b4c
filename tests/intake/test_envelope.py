"""Feishu envelope: vectors from Feishu's docs, round trips, and hostile input."""

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outbox_relay.errors import (
    DecryptError,
    InvalidMessage,
    OutboxRelayError,
    SignatureError,
)
from outbox_relay.intake import envelope as feishu

from factories import FEISHU_BODY as BODY  # the vectors of Feishu's documentation
from factories import FEISHU_ENCRYPTED as ENCRYPTED
from factories import FEISHU_KEY as KEY
from factories import FEISHU_NONCE as NONCE
from factories import FEISHU_SIGNATURE as SIG
from factories import FEISHU_TIMESTAMP as TS
from factories import FEISHU_TOKEN as TOKEN
from factories import SAMPLES, sample, sample_bytes


def sealed(event, key=KEY, ts=TS, nonce=NONCE):
    """An encrypted, signed request as Feishu would send it: (body, headers kwargs)."""
    body = json.dumps(
        {"encrypt": feishu.encrypt(json.dumps(event, ensure_ascii=False), key)}
    ).encode()
    return body, signed(body, key, ts, nonce)


def signed(body, key=KEY, ts=TS, nonce=NONCE):
    """The headers (as open_envelope's kwargs) of body signed with key."""
    return {"timestamp": ts, "nonce": nonce, "signature": feishu.signature(ts, nonce, key, body)}


# --- vectors -----------------------------------------------------------------


def test_decrypt_vector():
    assert feishu.decrypt(ENCRYPTED, KEY) == "hello world"


def test_signature_vector():
    assert feishu.signature(TS, NONCE, KEY, BODY) == SIG
    feishu.verify_signature(TS, NONCE, SIG, KEY, BODY)


def test_encrypt_with_vector_iv_reproduces_vector():
    iv = base64.b64decode(ENCRYPTED)[:16]
    assert feishu.encrypt("hello world", KEY, iv=iv) == ENCRYPTED


# --- decrypt / encrypt -------------------------------------------------------


@pytest.mark.parametrize("text", ["明天的会议改到下午三点 🎉👍🏽", "", "x" * 16, "{}"])
def test_round_trip(text):
    assert feishu.decrypt(feishu.encrypt(text, "密钥 🔑"), "密钥 🔑") == text


def test_encrypt_uses_random_iv():
    assert feishu.encrypt("same", KEY) != feishu.encrypt("same", KEY)


def test_encrypt_rejects_bad_iv():
    with pytest.raises(ValueError):
        feishu.encrypt("x", KEY, iv=b"short")


def test_wrong_key_is_decrypt_error():
    # Padding checks catch ~255/256 wrong keys; try several texts so the
    # 1/256 "looks padded" case cannot make this test flaky in either branch.
    for i in range(20):
        token = feishu.encrypt(json.dumps({"n": i}), KEY)
        try:
            out = feishu.decrypt(token, "wrong key")
        except DecryptError as exc:
            assert "wrong" in str(exc) and KEY not in str(exc)
        else:
            assert out != json.dumps({"n": i})


@pytest.mark.parametrize(
    "garbage, words",
    [
        ("not base64 !!!", "base64"),
        ("QUJD", "length"),  # 3 bytes
        (
            base64.b64encode(b"\0" * 40).decode(),
            "length",
        ),  # IV + 24 bytes: not whole blocks
        (123, "string"),
    ],
)
def test_garbage_is_decrypt_error(garbage, words):
    with pytest.raises(DecryptError, match=words):
        feishu.decrypt(garbage, KEY)


def test_decrypt_error_is_invalid_message():
    assert issubclass(DecryptError, InvalidMessage)


# --- signature ---------------------------------------------------------------


def test_tampered_body_fails():
    with pytest.raises(SignatureError, match="does not match"):
        feishu.verify_signature(TS, NONCE, SIG, KEY, BODY + b" ")


@pytest.mark.parametrize("bad", ["0" * 64, SIG[:-1], SIG + "0", "zz", "签名", "\udcff"])
def test_wrong_signature_fails(bad):
    with pytest.raises(SignatureError):
        feishu.verify_signature(TS, NONCE, bad, KEY, BODY)


def test_wrong_key_timestamp_or_nonce_fails():
    for ts, nonce, key in [
        ("1608725990", NONCE, KEY),
        (TS, "abc124", KEY),
        (TS, NONCE, "other"),
    ]:
        with pytest.raises(SignatureError):
            feishu.verify_signature(ts, nonce, SIG, key, BODY)


def test_signature_is_case_and_space_tolerant():
    feishu.verify_signature(TS, NONCE, f" {SIG.upper()} ", KEY, BODY)


@pytest.mark.parametrize(
    "ts, nonce, sig, missing",
    [
        (None, NONCE, SIG, "X-Lark-Request-Timestamp"),
        (TS, "", SIG, "X-Lark-Request-Nonce"),
        (TS, NONCE, None, "X-Lark-Signature"),
    ],
)
def test_missing_header_named(ts, nonce, sig, missing):
    with pytest.raises(SignatureError, match=f"missing {missing} header"):
        feishu.verify_signature(ts, nonce, sig, KEY, BODY)


def test_messages_never_contain_the_key():
    secret = "s3cr3t-encrypt-key"
    for call in (
        lambda: feishu.verify_signature(TS, NONCE, "0" * 64, secret, BODY),
        lambda: feishu.decrypt(ENCRYPTED, secret),
        lambda: feishu.open_envelope(BODY, encrypt_key=secret),
        lambda: feishu.open_envelope(
            BODY, encrypt_key=secret, timestamp=TS, nonce=NONCE, signature=SIG
        ),
    ):
        with pytest.raises(OutboxRelayError) as info:
            call()
        assert secret not in str(info.value)


# --- verification token ------------------------------------------------------


@pytest.mark.parametrize("name", ["v2_text.json", "url_verification.json"])
def test_token_right(name):
    event = sample(name)
    assert feishu.event_token(event) == TOKEN
    feishu.verify_token(event, TOKEN)


def test_token_v1_shape():
    event = sample("v1_text.json")
    assert feishu.event_token(event) == "2g7als3DgPW6Xp1xEpmcvgVhQG621bFY"
    feishu.verify_token(event, "2g7als3DgPW6Xp1xEpmcvgVhQG621bFY")


def test_v2_header_token_wins_over_top_level():
    event = {"schema": "2.0", "token": TOKEN, "header": {"token": "forged"}}
    with pytest.raises(SignatureError):
        feishu.verify_token(event, TOKEN)


@pytest.mark.parametrize(
    "name", ["v1_text.json", "v2_text.json", "url_verification.json"]
)
def test_token_wrong(name):
    with pytest.raises(SignatureError, match="does not match") as info:
        feishu.verify_token(sample(name), "wrong-token")
    assert "wrong-token" not in str(info.value)


@pytest.mark.parametrize(
    "event",
    [{}, {"token": 5}, {"header": {"token": None}}, sample("flat_message.json")],
)
def test_token_absent(event):
    assert feishu.event_token(event) is None
    with pytest.raises(SignatureError, match="no verification token"):
        feishu.verify_token(event, TOKEN)


# --- open_envelope -----------------------------------------------------------


def test_open_plain_event():
    body = sample_bytes("v2_text.json")
    assert feishu.open_envelope(body, verification_token=TOKEN) == sample(
        "v2_text.json"
    )


def test_open_encrypted_signed_event():
    event = sample("v2_text.json")
    body, headers = sealed(event)
    assert (
        feishu.open_envelope(body, encrypt_key=KEY, verification_token=TOKEN, **headers)
        == event
    )


def test_open_doc_vector_reaches_json_parsing():
    # Signature is right, plaintext is "hello world": not JSON, so a DecryptError.
    with pytest.raises(DecryptError, match="not valid JSON"):
        feishu.open_envelope(
            BODY, encrypt_key=KEY, timestamp=TS, nonce=NONCE, signature=SIG
        )


def test_open_tampered_body():
    body, headers = sealed(sample("v2_text.json"))
    with pytest.raises(SignatureError):
        feishu.open_envelope(body.replace(b'"}', b'" }'), encrypt_key=KEY, **headers)


def test_open_signature_checked_before_parsing():
    with pytest.raises(SignatureError):
        feishu.open_envelope(
            b"not json", encrypt_key=KEY, timestamp=TS, nonce=NONCE, signature=SIG
        )


def test_open_signed_but_missing_timestamp():
    body, headers = sealed(sample("v2_text.json"))
    headers["timestamp"] = None
    with pytest.raises(SignatureError, match="X-Lark-Request-Timestamp"):
        feishu.open_envelope(body, encrypt_key=KEY, **headers)


def test_open_encrypted_unsigned_event_rejected():
    body, _ = sealed(sample("v2_text.json"))
    with pytest.raises(SignatureError, match="missing X-Lark-Signature"):
        feishu.open_envelope(body, encrypt_key=KEY, verification_token=TOKEN)


def test_open_encrypted_unsigned_url_verification_allowed():
    # The official SDK does not check signatures on url_verification.
    body, _ = sealed(sample("url_verification.json"))
    event = feishu.open_envelope(body, encrypt_key=KEY, verification_token=TOKEN)
    assert event["challenge"] == "ajls384kdjx98XX"
    with pytest.raises(SignatureError):
        feishu.open_envelope(body, encrypt_key=KEY, verification_token="other")


def test_open_plain_unsigned_allowed_with_key_but_token_applies():
    body = sample_bytes("openclaw_message_received.json")
    assert feishu.open_envelope(body, encrypt_key=KEY)["type"] == "message"
    with pytest.raises(SignatureError, match="no verification token"):
        feishu.open_envelope(body, encrypt_key=KEY, verification_token=TOKEN)


def test_open_wrong_key():
    body, _ = sealed(sample("v2_text.json"), key="feishu side key")
    headers = signed(body, key="our key")
    with pytest.raises(DecryptError):
        feishu.open_envelope(body, encrypt_key="our key", **headers)


def test_open_garbage_encrypt_field():
    body = b'{"encrypt":"@@@"}'
    headers = signed(body)
    with pytest.raises(DecryptError, match="base64"):
        feishu.open_envelope(body, encrypt_key=KEY, **headers)


def test_open_encrypted_without_key():
    with pytest.raises(
        InvalidMessage, match="encrypted event but no encrypt key is configured"
    ):
        feishu.open_envelope(BODY)


def test_open_wrong_token():
    with pytest.raises(SignatureError):
        feishu.open_envelope(
            sample_bytes("v2_text.json"), verification_token="nope"
        )


def test_open_decrypted_non_object():
    body = json.dumps({"encrypt": feishu.encrypt("[1, 2]", KEY)}).encode()
    headers = signed(body)
    with pytest.raises(DecryptError, match="must be a JSON object, got list"):
        feishu.open_envelope(body, encrypt_key=KEY, **headers)


@pytest.mark.parametrize(
    "body, words",
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"[]", "must be a JSON object, got list"),
        (b'"x"', "must be a JSON object, got str"),
        (b"null", "must be a JSON object, got NoneType"),
        (b'{"a":"\xff"}', "not valid UTF-8"),
        ('{"a":1}'.encode("utf-16"), "not valid UTF-8"),
        (b'{"a":NaN}', "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b'{"a":' + b"1" * 5000 + b"}", "not valid JSON"),
    ],
)
def test_open_bad_body(body, words):
    with pytest.raises(InvalidMessage, match=words):
        feishu.open_envelope(body)


# --- properties --------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text(min_size=1))
def test_property_round_trip(text, key):
    assert feishu.decrypt(feishu.encrypt(text, key), key) == text


_config = st.fixed_dictionaries(
    {},
    optional={
        "encrypt_key": st.sampled_from([KEY, "", None]),
        "verification_token": st.sampled_from([TOKEN, "", None]),
        "timestamp": st.sampled_from([TS, "", None]),
        "nonce": st.sampled_from([NONCE, "", None]),
        "signature": st.one_of(
            st.none(), st.sampled_from([SIG, ""]), st.text(max_size=70)
        ),
    },
)


def _event_bodies():
    """Bodies that get past the JSON parser often: objects, encrypt fields, real samples."""
    samples = [p.read_bytes() for p in sorted(SAMPLES.glob("*.json"))]
    jsonish = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=8,
    )
    return st.one_of(
        st.binary(),
        st.sampled_from(samples + [BODY]),
        st.dictionaries(
            st.sampled_from(["encrypt", "token", "type", "header", "schema"]), jsonish
        ).map(lambda d: json.dumps(d).encode()),
        st.one_of(
            st.text(), st.binary().map(lambda b: base64.b64encode(b).decode())
        ).map(lambda e: json.dumps({"encrypt": e}).encode()),
    )


@settings(max_examples=500, deadline=None)
@given(_event_bodies(), _config)
def test_property_open_envelope_total(body, config):
    try:
        result = feishu.open_envelope(body, **config)
    except (InvalidMessage, SignatureError):
        return
    assert isinstance(result, dict)
