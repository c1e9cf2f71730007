"""Microsoft's own Python clients, unmodified, against `b2b-convert emulator --tls`.

Each check prints `PASS name` or `FAIL name: why`; the exit status is 1 when any check failed.
The emulator's printed environment (B2B_GRAPH_URL, B2B_LOGIN_URL, AZURE_TENANT_ID,
AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, SSL_CERT_FILE) comes in through the environment, as
conformance/run.sh passes it; the clients trust the emulator's CA through SSL_CERT_FILE (httpx,
OpenSSL) and REQUESTS_CA_BUNDLE (requests: azure-core, MSAL), nothing else.
"""

import asyncio
import base64
import json
import os
import ssl
import sys
import traceback
import urllib.request
from urllib.parse import urlparse

import msal
from azure.identity import CertificateCredential, ClientSecretCredential, DeviceCodeCredential
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_authentication_azure.azure_identity_authentication_provider import (
    AzureIdentityAuthenticationProvider,
)
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.generated.models.email_address import EmailAddress
from msgraph.generated.models.invitation import Invitation
from msgraph.generated.models.invited_user_message_info import InvitedUserMessageInfo
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.recipient import Recipient
from msgraph.generated.models.user import User
from msgraph.generated.users.users_request_builder import UsersRequestBuilder
from msgraph_core import GraphClientFactory
from msgraph_core.requests.batch_request_content import BatchRequestContent
from msgraph_core.requests.batch_request_item import BatchRequestItem

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
GRAPH_SCOPE_BY_APP_ID = "00000003-0000-0000-c000-000000000000/.default"
# Microsoft Graph Command Line Tools: the public client of the device-code sign-in.
PUBLIC_CLIENT_ID = "14d82eec-204b-4c2f-b7e8-296a70dab67e"
# Two users of the shipped sample tenant that a conversion accepts (sample-expected.csv).
FIRST_USER = "3535df92-088c-5e62-a2d6-4e3cfa0512e6"
SECOND_USER = "50d40596-fd29-50f4-930b-15ecf3b4c22b"
# A member the checks only read and PATCH, never invite.
PATCHED_USER = "66eac80c-d792-5917-907e-e4ba076a1762"

GRAPH = os.environ["B2B_GRAPH_URL"]
LOGIN = os.environ["B2B_LOGIN_URL"]
TENANT = os.environ["AZURE_TENANT_ID"]
CLIENT_ID = os.environ["AZURE_CLIENT_ID"]
SECRET = os.environ["AZURE_CLIENT_SECRET"]
CA_FILE = os.environ["SSL_CERT_FILE"]
CERT_PATH = os.environ["CONFORMANCE_CERT_PATH"]

results = []


def check(name):
    """Runs the decorated function (sync or async) as one named check."""

    def run(fn):
        try:
            out = fn()
            if asyncio.iscoroutine(out):
                asyncio.run(out)
            results.append(True)
            print(f"PASS {name}", flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the suite
            results.append(False)
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(file=sys.stderr)
        return fn

    return run


def expect(cond, why):
    if not cond:
        raise AssertionError(why)


def claims(jwt):
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def inspect(path):
    """An emulator inspection endpoint (`/_emulator/…`), over the same TLS."""
    ctx = ssl.create_default_context(cafile=CA_FILE)
    with urllib.request.urlopen(f"{GRAPH}/_emulator/{path}", context=ctx, timeout=30) as r:
        return json.loads(r.read())


def requests_with_status(key, status):
    return inspect("stats")["requests"].get(key, {}).get(str(status), 0)


def graph_client(credential):
    """msgraph-sdk's client as its documentation builds it, with the emulator as base URL."""
    host = urlparse(GRAPH).hostname
    auth = AzureIdentityAuthenticationProvider(
        credential, scopes=[GRAPH_SCOPE], allowed_hosts=[host]
    )
    http = GraphClientFactory.create_with_default_middleware()
    adapter = GraphRequestAdapter(auth, client=http)
    adapter.base_url = f"{GRAPH}/v1.0"
    return GraphServiceClient(request_adapter=adapter), adapter


def secret_credential():
    return ClientSecretCredential(
        TENANT, CLIENT_ID, SECRET, authority=LOGIN, disable_instance_discovery=True
    )


@check("azure-identity ClientSecretCredential")
def _():
    token = secret_credential().get_token(GRAPH_SCOPE)
    c = claims(token.token)
    expect(c["appid"] == CLIENT_ID and c["tid"] == TENANT, f"claims {c}")
    expect("User.Invite.All" in c["roles"], f"roles {c['roles']}")


@check("azure-identity CertificateCredential (SHA-1 x5t)")
def _():
    cred = CertificateCredential(
        TENANT, CLIENT_ID, certificate_path=CERT_PATH, authority=LOGIN,
        disable_instance_discovery=True,
    )
    c = claims(cred.get_token(GRAPH_SCOPE).token)
    expect(c["appid"] == CLIENT_ID, f"claims {c}")


@check("azure-identity DeviceCodeCredential (auto-approved), then silent renewal")
def _():
    prompts = []
    cred = DeviceCodeCredential(
        client_id=PUBLIC_CLIENT_ID, tenant_id=TENANT, authority=LOGIN,
        disable_instance_discovery=True, timeout=120,
        prompt_callback=lambda uri, code, expires: prompts.append((uri, code)),
    )
    # authenticate() builds its AuthenticationRecord from the answer's id_token and client_info.
    record = cred.authenticate(scopes=[GRAPH_SCOPE])
    expect(record.tenant_id == TENANT, f"record tenant {record.tenant_id}")
    expect(record.username.startswith("admin@"), f"record user {record.username}")
    expect(len(prompts) == 1, f"prompts {prompts}")
    c = claims(cred.get_token(GRAPH_SCOPE).token)
    expect(len(prompts) == 1, "the second token came without a second sign-in")
    expect(c["idtyp"] == "user" and "User.Invite.All" in c["scp"].split(), f"claims {c}")
    expect("roles" not in c, "a delegated token carries no application roles")


@check("MSAL ConfidentialClientApplication secret, 00000003-…/.default")
def _():
    app = msal.ConfidentialClientApplication(
        CLIENT_ID, client_credential=SECRET, authority=f"{LOGIN}/{TENANT}",
        instance_discovery=False,
    )
    r = app.acquire_token_for_client(scopes=[GRAPH_SCOPE_BY_APP_ID])
    expect("access_token" in r, f"answer {r}")


@check("MSAL ConfidentialClientApplication certificate")
def _():
    pem = open(CERT_PATH, "rb").read()
    cert = x509.load_pem_x509_certificate(pem)
    app = msal.ConfidentialClientApplication(
        CLIENT_ID,
        client_credential={
            "private_key": pem.decode(),
            "thumbprint": cert.fingerprint(hashes.SHA1()).hex(),  # noqa: S303 - MSAL's own x5t
        },
        authority=f"{LOGIN}/{TENANT}", instance_discovery=False,
    )
    r = app.acquire_token_for_client(scopes=[GRAPH_SCOPE])
    expect("access_token" in r, f"answer {r}")


@check("MSAL PublicClientApplication device flow, id_token and client_info")
def _():
    app = msal.PublicClientApplication(
        PUBLIC_CLIENT_ID, authority=f"{LOGIN}/{TENANT}", instance_discovery=False
    )
    flow = app.initiate_device_flow(scopes=["User.Read"])
    expect("user_code" in flow, f"flow {flow}")
    r = app.acquire_token_by_device_flow(flow)
    expect("access_token" in r, f"answer {r}")
    expect(r["id_token_claims"]["tid"] == TENANT, f"id token {r.get('id_token_claims')}")
    accounts = app.get_accounts()
    expect(len(accounts) == 1, f"accounts {accounts}")
    expect(accounts[0]["home_account_id"].endswith(f".{TENANT}"), f"account {accounts[0]}")
    # The refresh grant: MSAL renews from its cache with the refresh token.
    renewed = app.acquire_token_silent(["User.Read"], account=accounts[0], force_refresh=True)
    expect(renewed and "access_token" in renewed, f"renewed {renewed}")


@check("msgraph-sdk users paging (@odata.nextLink)")
async def _():
    client, _ = graph_client(secret_credential())
    query = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(top=7, select=["id"])
    page = await client.users.get(RequestConfiguration(query_parameters=query))
    ids, pages = [u.id for u in page.value], 1
    while page.odata_next_link:
        expect(page.odata_next_link.startswith(f"{GRAPH}/v1.0/users"), page.odata_next_link)
        page = await client.users.with_url(page.odata_next_link).get()
        ids += [u.id for u in page.value]
        pages += 1
        expect(pages < 100, "paging never ended")
    everyone = await client.users.get(
        RequestConfiguration(query_parameters=UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(top=999))
    )
    expect(pages > 1, "one page only")
    expect(sorted(ids) == sorted(u.id for u in everyone.value), "pages differ from one big page")


@check("msgraph-sdk users delta (@odata.deltaLink)")
async def _():
    client, _ = graph_client(secret_credential())
    page = await client.users.delta.get()
    seen, pages = len(page.value), 1
    while page.odata_next_link:
        page = await client.users.delta.with_url(page.odata_next_link).get()
        seen += len(page.value)
        pages += 1
        expect(pages < 100, "delta never ended")
    expect(page.odata_delta_link and page.odata_delta_link.startswith(GRAPH), f"{page.odata_delta_link}")
    expect(seen > 0, "no users")
    again = await client.users.delta.with_url(page.odata_delta_link).get()
    expect(again.value == [] or again.value is not None, "the delta link answers")


@check("msgraph-sdk user PATCH")
async def _():
    client, _ = graph_client(secret_credential())
    await client.users.by_user_id(PATCHED_USER).patch(User(job_title="Partner liaison"))
    held = inspect(f"users/{PATCHED_USER}")
    expect(held.get("jobTitle") == "Partner liaison", f"user {held}")


@check("msgraph-sdk invitation with the seeds' full sample body")
async def _():
    client, _ = graph_client(secret_credential())
    user = await client.users.by_user_id(FIRST_USER).get()
    answer = await client.invitations.post(
        Invitation(
            invited_user_email_address=user.mail,
            send_invitation_message=True,
            invited_user_message_info=InvitedUserMessageInfo(
                message_language="en-US",
                cc_recipients=[Recipient(email_address=EmailAddress(name=None, address=user.mail))],
                customized_message_body="Welcome to Contoso as a partner.",
            ),
            invite_redirect_url=f"https://myapps.microsoft.com?tenantId={TENANT}",
            invited_user=User(id=FIRST_USER),
        )
    )
    expect(answer.invited_user.id == FIRST_USER, f"invited {answer.invited_user.id}")
    expect(answer.status == "PendingAcceptance", f"status {answer.status}")
    held = inspect(f"users/{FIRST_USER}")
    expect(held["externalUserState"] == "PendingAcceptance", f"user {held}")


@check("msgraph-core $batch (BatchRequestContent)")
async def _():
    client, _ = graph_client(secret_credential())
    one = BatchRequestItem(client.users.by_user_id(FIRST_USER).to_get_request_information())
    missing = BatchRequestItem(
        client.users.by_user_id("00000000-0000-0000-0000-000000000000").to_get_request_information()
    )
    content = BatchRequestContent({one.id: one, missing.id: missing})
    answer = await client.batch.post(content)
    expect(answer.get_response_by_id(one.id).status == 200, "the user's sub-answer")
    expect(answer.get_response_by_id(missing.id).status == 404, "the unknown user's sub-answer")


@check("msgraph-sdk retry handler honours 429 Retry-After")
async def _():
    # The emulator runs with --throttle-every-nth-invitation 2: this invitation request (the
    # second) is answered 429 with Retry-After, the handler waits and sends it again.
    before = requests_with_status("POST /v1.0/invitations", 429)
    client, _ = graph_client(secret_credential())
    user = await client.users.by_user_id(SECOND_USER).get()
    answer = await client.invitations.post(
        Invitation(invited_user_email_address=user.mail, invite_redirect_url="https://myapps.microsoft.com",
                   invited_user=User(id=SECOND_USER), send_invitation_message=False)
    )
    expect(answer.invited_user.id == SECOND_USER, "invited after the retry")
    expect(requests_with_status("POST /v1.0/invitations", 429) == before + 1, "one 429 met")


@check("msgraph-sdk ODataError parsing")
async def _():
    client, _ = graph_client(secret_credential())
    try:
        await client.users.by_user_id("00000000-0000-0000-0000-000000000000").get()
    except ODataError as e:
        expect(e.response_status_code == 404, f"status {e.response_status_code}")
        expect(e.error.code == "Request_ResourceNotFound", f"code {e.error.code}")
        expect(bool(e.error.message), "a message")
        return
    raise AssertionError("no ODataError for an unknown user")


print(f"{results.count(True)} passed, {results.count(False)} failed", flush=True)
sys.exit(0 if all(results) else 1)
