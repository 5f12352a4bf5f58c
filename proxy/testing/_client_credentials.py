"""The client credentials grant (RFC 6749 §4.4), and the client authentication every
confidential client's grant shares: a secret (in the form or HTTP Basic, RFC 6749 §2.3.1),
a client assertion (RFC 7523 §2.2) signed with a registered certificate, or a federated
token."""

from __future__ import annotations

from cryptography import x509

from proxy.testing._assertions import (
    JWT_BEARER,
    check_certificate_assertion,
    check_federated_assertion,
)
from proxy.testing._claims import app_identity
from proxy.testing._directory import Directory
from proxy.testing._entra import DEFAULT_SUFFIX, EntraError, check_scope, check_secret
from proxy.testing._grant import Call, Granted, Outcome

GRANT = "client_credentials"


def authenticate(call: Call, directory: Directory) -> EntraError | None:
    """The client's own credential, checked the way Entra checks it: a client assertion
    against the client's federated credentials or certificates, else the secret."""
    client_id = call.client_id
    if call.form.get("client_assertion_type") != JWT_BEARER:
        return check_secret(
            tenant=call.tenant,
            client_id=client_id,
            secret=call.secret,
            expected_secret=directory.clients.get(client_id),
        )
    assertion = call.form.get("client_assertion", "")
    if client_id in directory.federations:
        return check_federated_assertion(assertion, federations=directory.federations[client_id])
    if client_id in directory.certificates or client_id in directory.trusted_subjects:
        endpoint = call.endpoint
        return check_certificate_assertion(
            assertion,
            client_id=client_id,
            # Entra accepts its v1 token endpoint as the audience too.
            token_endpoints=(endpoint, endpoint.replace("/oauth2/v2.0/", "/oauth2/")),
            certificates=[
                x509.load_pem_x509_certificate(c) for c in directory.certificates.get(client_id, ())
            ],
            trusted_subject=directory.trusted_subjects.get(client_id),
        )
    # An assertion from a client with no certificate or federation: unknown to Entra.
    return check_secret(tenant=call.tenant, client_id=client_id, secret=None, expected_secret=None)


def check(call: Call, directory: Directory) -> Outcome:
    """An app token for one ``{resource}/.default`` scope, to an authenticated client."""
    problem = authenticate(call, directory) or check_scope(call.scope)
    if problem is not None:
        return problem
    return Granted(
        # Exactly the suffix goes: ".../.default" keeps its own trailing slash.
        audience=call.scope.removesuffix(DEFAULT_SUFFIX),
        identity=app_identity(directory.tenant_id, call.client_id),
    )
