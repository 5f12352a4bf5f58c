"""The four ways an identity signs in, as ``ppproxy init`` writes and explains them: the
``[identities.default]`` keys of each, the variables it reads, and the portal steps that set it
up (the same steps as README's "Setting up the service principal in Azure")."""

from __future__ import annotations

from dataclasses import dataclass

_REGISTER = (
    "Azure portal -> Microsoft Entra ID -> App registrations -> New registration (single "
    "tenant). Its Overview shows the Application (client) ID and the Directory (tenant) ID."
)
_POWER_PLATFORM = (
    "Give the service principal its Power Platform rights: `ppproxy register-app` (an admin "
    "signs in with a device code; the same call as New-PowerAppManagementApp). The admin center "
    "cannot do this. For a Dataverse environment also add it as an application user (admin "
    "center -> the environment -> Settings -> Users + permissions -> Application users) with a "
    "security role."
)


@dataclass(frozen=True, slots=True)
class Flow:
    title: str
    keys: str  # the credential lines of [identities.default]
    variables: tuple[tuple[str, str], ...]  # (variable, what to put in it)
    steps: tuple[str, ...]  # portal steps, in order
    needs_app: bool = True  # tenant_id and client_id (not for a managed identity)


FLOWS: dict[str, Flow] = {
    "secret": Flow(
        "client secret (a service principal)",
        'client_secret = "${PP_CLIENT_SECRET}"       # from the environment, not the file\n'
        '# client_secret_file = "/run/secrets/pp-client-secret"  # or: a file, first line',
        (("PP_CLIENT_SECRET", "<the client secret's Value>"),),
        (
            _REGISTER,
            "Certificates & secrets -> Client secrets -> New client secret: copy its Value (not "
            "the Secret ID) now; it is shown once.",
            _POWER_PLATFORM,
        ),
    ),
    "certificate": Flow(
        "certificate (a service principal; the stronger choice)",
        'certificate_path = "client.pem"             # key and certificate (PEM), or a PFX\n'
        '# certificate_password = "${PP_CERT_PASSWORD}"  # only for an encrypted key or PFX\n'
        '# certificate_password_file = "/run/secrets/pp-cert-password"  # or: a file\n'
        "# send_certificate_chain = false            # true: Subject Name/Issuer (x5c)",
        (),
        (
            _REGISTER,
            "Make a key and a certificate next to this file (README, Certificate): openssl req "
            "-x509 -newkey rsa:2048 -nodes -keyout client.key -out client.crt -days 365 -subj "
            '"/CN=ppproxy" && cat client.key client.crt > client.pem',
            "Certificates & secrets -> Certificates -> Upload certificate: client.crt (the "
            "public part only). `ppproxy check` prints its thumbprints to compare.",
            _POWER_PLATFORM,
        ),
    ),
    "password": Flow(
        "username and password (a user; deprecated by Microsoft, no MFA)",
        'username = "${PP_USERNAME}"                 # e.g. svc-pp@contoso.onmicrosoft.com\n'
        'password = "${PP_PASSWORD}"                 # or password_file = "/run/secrets/pp-pw"',
        (("PP_USERNAME", "<the user's sign-in name>"), ("PP_PASSWORD", "<the user's password>")),
        (
            _REGISTER,
            "Authentication -> Advanced settings -> Allow public client flows = Yes (it is a "
            "public client: no secret).",
            "API permissions -> Add a permission -> APIs my organization uses -> Power Apps "
            "Service (475226c6-020e-4fb2-8a90-7a972cbfc1d4) -> Delegated permissions -> User -> "
            "Add; then Grant admin consent for the tenant.",
            "The user needs a Power Platform admin role for the admin APIs and must not need "
            "multi-factor authentication (AADSTS50076): prefer a certificate.",
        ),
    ),
    "managed-identity": Flow(
        "managed identity (Azure App Service, Functions, VMs, Container Apps)",
        'managed_identity = "system"                 # or { client_id = "..." } (user-assigned)',
        (),
        (
            "Turn the identity on: the Azure resource -> Identity -> System assigned -> On (or "
            "attach a user-assigned identity).",
            "Its enterprise application (Microsoft Entra ID -> Enterprise applications) gets "
            "its rights by being registered: `ppproxy register-app --client-id <its "
            "application ID>`, run by an admin from any machine.",
        ),
        needs_app=False,
    ),
}
