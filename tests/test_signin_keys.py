"""The tenant's signing keys as the sign-in check fetches them: found through the OpenID
metadata, fetched once for many requests, fetched again for a new kid at most once a minute,
and a rotation picked up. Real HTTPS against the local identity provider, with a clock the
test moves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from proxy.config import OutboundConfig
from proxy.config.signin import EntraConfig
from proxy.errors import InvalidToken, SignInUnavailable
from proxy.signin import SignIn, SigningKeys
from proxy.testing import IdentityProvider, LocalCA

from .signin_helpers import GATEWAY_URI


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def session(ca: LocalCA) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=ca.client_context())
    async with aiohttp.ClientSession(connector=connector) as s:
        yield s


def signin_for(idp: IdentityProvider, clock: Clock) -> SignIn:
    entra = EntraConfig(idp.tenant_id, (GATEWAY_URI,), idp.authority_host)
    outbound = OutboundConfig()
    return SignIn(entra, outbound, keys=SigningKeys(entra, outbound, clock=clock))


async def test_a_new_kid_is_fetched_at_most_once_a_minute_and_a_rotation_picked_up(
    idp: IdentityProvider, session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    signin = signin_for(idp, clock)
    assert (await signin.authenticate(idp.user_token(audience=GATEWAY_URI), session)).oid
    assert idp.jwks_requests == 1

    idp.rotate_signing_key()
    rotated = idp.user_token(audience=GATEWAY_URI, upn="ann@contoso.test")
    clock.now += 59
    with pytest.raises(InvalidToken, match="unknown key"):
        await signin.authenticate(rotated, session)
    with pytest.raises(InvalidToken, match="unknown key"):
        await signin.authenticate(idp.user_token(audience=GATEWAY_URI, unknown_key=True), session)
    assert idp.jwks_requests == 1  # within the minute: Entra is not asked again

    clock.now += 1
    caller = await signin.authenticate(rotated, session)

    assert (caller.upn, idp.jwks_requests) == ("ann@contoso.test", 2)


async def test_many_requests_on_cold_keys_make_one_fetch(
    idp: IdentityProvider, session: aiohttp.ClientSession
) -> None:
    signin = signin_for(idp, Clock())
    tokens = [idp.user_token(audience=GATEWAY_URI, upn=f"u{i}@contoso.test") for i in range(20)]

    callers = await asyncio.gather(*(signin.authenticate(t, session) for t in tokens))

    assert [c.upn for c in callers] == [f"u{i}@contoso.test" for i in range(20)]
    assert idp.jwks_requests == 1


async def test_the_v2_issuer_is_the_one_the_metadata_names(
    idp: IdentityProvider, session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    signin = signin_for(idp, clock)
    entra = EntraConfig(idp.tenant_id, ("gateway-client-id",), idp.authority_host)
    v2 = SignIn(entra, OutboundConfig(), keys=SigningKeys(entra, OutboundConfig(), clock=clock))

    caller = await v2.authenticate(
        idp.user_token(audience="gateway-client-id", version=2, upn="v2@contoso.test"), session
    )

    assert caller.upn == "v2@contoso.test"
    assert v2.keys.issuer_v2 == idp.issuer_v2
    assert signin.keys.issuer_v2 is None  # nothing fetched before it was needed


async def test_keys_that_failed_are_tried_again_after_a_few_seconds(
    idp: IdentityProvider, session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    entra = EntraConfig(idp.tenant_id, (GATEWAY_URI,), "https://127.0.0.1:9")
    keys = SigningKeys(entra, OutboundConfig(), clock=clock)

    with pytest.raises(SignInUnavailable):
        await keys.ready(session)
    with pytest.raises(SignInUnavailable):
        await keys.ready(session)
    assert keys.fetches == 1
    clock.now += 5
    with pytest.raises(SignInUnavailable):
        await keys.ready(session)

    assert keys.fetches == 2
    assert keys.last_error is not None
    assert "ClientConnectorError" in keys.last_error


async def test_with_keys_in_hand_a_failed_fetch_is_not_retried_for_a_minute(
    idp: IdentityProvider, session: aiohttp.ClientSession
) -> None:
    """While the keys endpoint fails, forged tokens with new kids make Entra be asked at most
    once a minute (5 s is only for a proxy without any keys); known keys keep working."""
    clock = Clock()
    signin = signin_for(idp, clock)
    valid = idp.user_token(audience=GATEWAY_URI, upn="a@contoso.test")
    await signin.authenticate(valid, session)
    idp.keys_unavailable = True

    clock.now += 60
    for step in (0, 5, 30, 24.5):  # 59.5 s after the failed fetch
        clock.now += step
        forged = idp.user_token(audience=GATEWAY_URI, unknown_key=True)
        with pytest.raises(InvalidToken, match="unknown key"):
            await signin.authenticate(forged, session)
    assert idp.jwks_requests == 2  # the first fetch, and the one that failed
    assert signin.keys.last_error is not None

    idp.keys_unavailable = False
    idp.rotate_signing_key()
    clock.now += 0.5
    rotated = idp.user_token(audience=GATEWAY_URI, upn="b@contoso.test")
    assert (await signin.authenticate(rotated, session)).upn == "b@contoso.test"
    assert idp.jwks_requests == 3


async def test_a_checked_token_costs_a_lookup_until_it_expires(
    idp: IdentityProvider, session: aiohttp.ClientSession
) -> None:
    """Remembered by digest: a second check neither fetches nor verifies (the key is gone
    from the set here, and the token still passes)."""
    signin = signin_for(idp, Clock())
    token = idp.user_token(audience=GATEWAY_URI, upn="a@contoso.test")
    await signin.authenticate(token, session)
    signin.keys._keys.clear()  # any verification from now on would fail

    assert (await signin.authenticate(token, session)).upn == "a@contoso.test"
    assert idp.jwks_requests == 1


async def test_remembered_tokens_are_bounded_least_recently_used_first_out(
    idp: IdentityProvider, session: aiohttp.ClientSession
) -> None:
    """With room for two, the third valid token pushes the first out: once the keys are gone
    only the last two still pass."""
    signin = SignIn(
        EntraConfig(idp.tenant_id, (GATEWAY_URI,), idp.authority_host),
        OutboundConfig(),
        max_remembered=2,
    )
    first, second, third = (
        idp.user_token(audience=GATEWAY_URI, upn=f"{n}@contoso.test") for n in "abc"
    )
    for token in (first, second, third):
        await signin.authenticate(token, session)
    signin.keys._keys.clear()  # any verification from now on would fail

    assert (await signin.authenticate(third, session)).upn == "c@contoso.test"
    assert (await signin.authenticate(second, session)).upn == "b@contoso.test"
    with pytest.raises(InvalidToken, match="unknown key"):
        await signin.authenticate(first, session)  # forgotten: checked again, and fails
    assert signin.status()["remembered_tokens"] == 2
